"""FitCallbacks that write progress, events, checkpoints and resume state to the database.

Every write is fenced by the attempt's lease: if it matches no row, another attempt owns the
job, this one deletes what it wrote and stops (AttemptInterrupted).
"""

import logging
import math
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker
from tensorboardX import SummaryWriter  # imported before the pool forks: not during epoch 2

from app.core.events import add_event, job_tenant
from app.core.ids import new_id
from app.core.models import Checkpoint, Job
from app.core.reaper import drop_resume_keys
from app.core.storage import Storage, discard
from worker.faults import Faults
from worker.lease import AttemptInterrupted, Lease
from worker.retry import retrying
from worker.training.checkpoint import save_weights, weights_metadata
from worker.training.loop import FitCallbacks, TrainingCancelled
from worker.training.resume import StateSnapshot, snapshot, write_state
from worker.training.spec import TrainSpec
from worker.training.trainer import Trainer

log = logging.getLogger(__name__)
SUMMARY_KEYS = ("train_loss", "val_loss", "val_accuracy", "best_val_accuracy", "images_per_second")


def clean(metrics: dict[str, Any]) -> dict[str, Any]:
    """JSON-safe metrics: NaN/inf become null, numbers are rounded for humans."""
    out: dict[str, Any] = {}
    for key, value in metrics.items():
        if isinstance(value, float):
            value = None if not math.isfinite(value) else round(value, 6)
        out[key] = value
    return out


class CancelPoll:
    """Whether the user asked to cancel the attempt's job, read at most every `interval_s`.

    Called every training step (and every decoded image), so it must cost nothing between
    reads: a clock comparison.
    """

    def __init__(self, lease: Lease, interval_s: float) -> None:
        self.lease, self.interval_s = lease, interval_s
        self._last = 0.0

    def __call__(self) -> bool:
        now = time.monotonic()
        if now - self._last < self.interval_s:
            return False
        self._last = now
        with self.lease.sessions() as session:
            stmt = select(Job.cancel_requested).where(Job.id == self.lease.job_id)
            return bool(session.scalar(stmt))

    def check(self) -> None:
        """Raise what stops the attempt: AttemptInterrupted (lost lease, shutdown) first,
        then TrainingCancelled."""
        self.lease.check()
        if self():
            raise TrainingCancelled


class DatabaseReporter(FitCallbacks):
    """Reports one attempt of one job."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        storage: Storage,
        lease: Lease,
        spec: TrainSpec,
        progress_interval_s: float,
        cancel_interval_s: float,
        faults: Faults | None = None,
    ) -> None:
        self.sessions, self.storage, self.lease, self.spec = sessions, storage, lease, spec
        self.job_id = lease.job_id
        self.progress_interval_s = progress_interval_s
        self.cancel_requested = CancelPoll(lease, cancel_interval_s)
        self.faults = faults or Faults("")
        self._last_progress = 0.0
        self.steps = 0  # optimiser steps per epoch, known from the first step on
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint")
        self._pending: Future[None] | None = None
        self._board: Any = None
        self._board_key = f"jobs/{self.job_id}/tensorboard"
        # The last epoch's checkpoint row, its file written but the row not committed (below).
        self.final: dict[str, Any] | None = None

    def _fenced(self, session: Session, **values: Any) -> None:
        """Update the job row if this attempt still owns it, else stop the attempt."""
        if not session.execute(update(Job).where(*self.lease.fence()).values(**values)).rowcount:
            session.rollback()
            self.lease.lost.set()
            raise AttemptInterrupted("lease_lost")

    def write(self, change: Any) -> None:
        """Run `change(session)` + commit as one fenced, retried transaction."""

        def attempt() -> None:
            with self.lease.transaction() as session:
                change(session)
                session.commit()

        retrying(attempt)

    def event(self, kind: str, message: str, data: dict[str, Any]) -> None:
        """Add an event to the job, if this attempt still owns it (else stop the attempt)."""

        def change(session: Session) -> None:
            self._fenced(session, lease_expires_at=self.lease.expiry())
            add_event(session, self.job_id, kind, message, data)

        self.write(change)

    def on_start(self, info: dict[str, Any]) -> None:
        message = f"training on {info['device']} in {info['precision']}"
        self.event("status", message, {"status": "running", **info})

    def on_batch(self, size: int) -> None:
        self.faults.before_batch(size)

    def on_inference_pass(self, size: int) -> None:
        self.faults.before_batch(size)

    def on_warning(self, code: str, message: str, data: dict[str, Any]) -> None:
        self.event("warning", message, {"code": code, **data})

    def on_step(self, epoch: int, step: int, steps: int) -> None:
        self.faults.after_step()
        self.steps = steps
        now = time.monotonic()
        if now - self._last_progress < self.progress_interval_s:
            return
        self._last_progress = now
        fraction = round(((epoch - 1) + step / steps) / self.spec.epochs, 4)
        progress = {
            "epoch": epoch,
            "epochs": self.spec.epochs,
            "step": step,
            "steps": steps,
            "fraction": fraction,
        }
        self.write(lambda session: self._fenced(session, progress=progress))

    def epoch_progress(self, epoch: int) -> dict[str, Any]:
        """The job's progress once `epoch` has ended."""
        return {
            "epoch": epoch,
            "epochs": self.spec.epochs,
            "step": self.steps,
            "steps": self.steps,
            "fraction": round(epoch / self.spec.epochs, 4),
        }

    def should_stop(self) -> bool:
        self.lease.check()
        if self._pending is not None and self._pending.done():
            self._wait_pending()  # surfaces a background failure (e.g. a lost lease) now
        return self.cancel_requested()

    def on_epoch_end(
        self, epoch: int, metrics: dict[str, Any], trainer: Trainer, *, last: bool
    ) -> None:
        """Snapshot now; write and commit in the background while the next epoch trains.

        Only one epoch's persistence runs at a time, in order; its failure (a lost lease)
        surfaces at the next check. The runner calls `flush()` before the outcome.

        The last epoch saves no optimiser state: a job that finishes drops it at once, and for
        a large model it is the biggest file (AdamW keeps two moments per weight), written
        and synced while the user waits for the job to end. That epoch's checkpoint is
        committed with the job's success instead (`commit_final`), so until then the epoch
        before stays the one to resume from, and a crash in between trains the last again.
        """
        weights = trainer.weights_after(epoch)
        state = None if last else snapshot(trainer, epoch)
        self._wait_pending()
        self._pending = self._writer.submit(self._persist, epoch, clean(metrics), weights, state)

    def _wait_pending(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def flush(self, *, keep_final: bool = False) -> None:
        """Wait for the last epoch's files to be durable (and committed, but for the last).

        The last epoch's checkpoint is kept for `commit_final` only when `keep_final` (the
        job succeeds); otherwise its file is deleted: the job did not end with that epoch.
        """
        try:
            self._wait_pending()
        finally:
            self._writer.shutdown(wait=True)
            if self._board is not None:
                self._board.close()
            if not keep_final:
                self.discard_final()

    def commit_final(self, session: Session) -> None:
        """Add the last epoch's checkpoint row and events to the session of the job's success."""
        if self.final is not None:
            session.add(Checkpoint(**self.final))  # a fresh object per try: retries start clean
            self._epoch_events(session, self.final)

    def discard_final(self) -> None:
        """Delete the last epoch's checkpoint file, if one was written and no commit took it.

        Asked of the database, not assumed: a commit whose answer was lost may have landed
        before its retry found the job no longer running.
        """
        if self.final is None:
            return
        row, self.final = self.final, None
        with self.sessions() as session:
            committed = session.get(Checkpoint, row["id"]) is not None
        if not committed:
            discard(self.storage, row["storage_key"])

    def _persist(
        self,
        epoch: int,
        metrics: dict[str, Any],
        weights: dict[str, Any],
        state: StateSnapshot | None,
    ) -> None:
        # Named per attempt: a stale attempt can never overwrite what the live one wrote.
        tag = f"epoch-{epoch:04d}-a{self.lease.attempt}"
        key = f"jobs/{self.job_id}/checkpoints/{tag}.safetensors"
        # Written whole in staging, then published: storage never holds a partial file.
        path = self.storage.staging() / f"{self.job_id}-{tag}.safetensors"
        meta = weights_metadata(self.spec, job_id=self.job_id, epoch=epoch)
        sha256 = save_weights(path, weights, meta, copied=True)
        row = {
            "id": new_id("ckpt"),
            "job_id": self.job_id,
            "epoch": epoch,
            "metrics": metrics,
            "size_bytes": path.stat().st_size,
            "sha256": sha256,
            "storage_key": key,
            "resume_key": None,
            "tenant_id": job_tenant(self.job_id),
        }
        self.storage.put_file(path, key)
        if state is None:
            self.final = row
        else:
            row["resume_key"] = f"jobs/{self.job_id}/state/{tag}.safetensors"
            state_path = path.with_suffix(".state")
            write_state(state_path, state)
            self.storage.put_file(state_path, row["resume_key"])
            self._commit(row)
        self._tensorboard(epoch, metrics)

    def _commit(self, row: dict[str, Any]) -> None:
        """Commit an epoch's checkpoint as the one to resume from, with its events."""
        epoch, metrics = row["epoch"], row["metrics"]
        progress = self.epoch_progress(epoch)
        summary = {k: metrics.get(k) for k in SUMMARY_KEYS}
        stale: list[str] = []

        def change(session: Session) -> None:
            if session.get(Checkpoint, row["id"]) is not None:
                return  # an earlier try committed, and only its answer was lost
            self._fenced(
                session, progress=progress, metrics=summary, lease_expires_at=self.lease.expiry()
            )
            stale[:] = drop_resume_keys(session, self.job_id)
            session.add(Checkpoint(**row))  # a fresh object per try: retries start clean
            self._epoch_events(session, row)

        try:
            self.write(change)
        except AttemptInterrupted:
            discard(self.storage, row["storage_key"], row["resume_key"])
            raise
        discard(self.storage, *stale)  # only the latest epoch's optimiser state is needed

    def _epoch_events(self, session: Session, row: dict[str, Any]) -> None:
        epoch, metrics = row["epoch"], row["metrics"]
        text = f"epoch {epoch}/{self.spec.epochs}: train_loss {metrics['train_loss']:.4f}"
        if metrics.get("val_accuracy") is not None:
            text += f", val_accuracy {metrics['val_accuracy']:.4f}"
        add_event(session, self.job_id, "epoch", text, {"epoch": epoch, **metrics})
        add_event(
            session,
            self.job_id,
            "checkpoint",
            f"checkpoint of epoch {epoch} saved",
            {"epoch": epoch, "checkpoint_id": row["id"], "sha256": row["sha256"]},
        )

    def _tensorboard(self, epoch: int, metrics: dict[str, Any]) -> None:
        """Epoch scalars as TensorBoard event files among the job's artifacts."""
        if self._board is None:
            logdir = self.storage.workspace(self._board_key)
            self._board = SummaryWriter(
                logdir=str(logdir), filename_suffix=f".a{self.lease.attempt}"
            )
        for name, value in metrics.items():
            if isinstance(value, int | float) and name != "epoch":
                self._board.add_scalar(name.replace("_", "/", 1), value, epoch)
        self._board.flush()
        self.storage.publish(self._board_key)
