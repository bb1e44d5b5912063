"""FitCallbacks that write progress, events, checkpoints and cancellation to the database."""

import logging
import math
import time
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker
from torch import nn

from app.core.events import add_event
from app.core.ids import new_id
from app.core.models import Checkpoint, Job, JobStatus
from app.core.storage import LocalStorage, sha256_file
from worker.training.checkpoint import save_weights, weights_metadata
from worker.training.loop import FitCallbacks
from worker.training.spec import TrainSpec

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


class DatabaseReporter(FitCallbacks):
    """Reports one attempt of one job; every write is conditional on the job still running."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        storage: LocalStorage,
        job_id: str,
        spec: TrainSpec,
        progress_interval_s: float,
        cancel_interval_s: float,
    ) -> None:
        self.sessions, self.storage, self.job_id, self.spec = sessions, storage, job_id, spec
        self.progress_interval_s, self.cancel_interval_s = progress_interval_s, cancel_interval_s
        self._last_progress = self._last_cancel_check = 0.0
        self._epoch_started = time.monotonic()
        self.checkpoint_ids: dict[int, str] = {}

    def _update_running(self, session: Session, **values: Any) -> bool:
        done = session.execute(
            update(Job)
            .where(Job.id == self.job_id, Job.status == JobStatus.running)
            .values(**values)
        )
        return bool(done.rowcount)

    def on_start(self, info: dict[str, Any]) -> None:
        with self.sessions() as session:
            message = f"training on {info['device']} in {info['precision']}"
            add_event(session, self.job_id, "status", message, {"status": "running", **info})
            session.commit()

    def on_step(self, epoch: int, step: int, steps: int) -> None:
        now = time.monotonic()
        if step == 1:
            self._epoch_started = now
        if now - self._last_progress < self.progress_interval_s:
            return
        self._last_progress = now
        elapsed = now - self._epoch_started
        progress = {
            "epoch": epoch,
            "epochs": self.spec.epochs,
            "step": step,
            "steps": steps,
            "fraction": round(((epoch - 1) + step / steps) / self.spec.epochs, 4),
        }
        with self.sessions() as session:
            self._update_running(session, progress=progress)
            session.commit()
        if elapsed > 0:
            log.info(
                "job %s epoch %d step %d/%d %.0f img/s",
                self.job_id,
                epoch,
                step,
                steps,
                step * self.spec.batch_size / elapsed,
            )

    def should_stop(self) -> bool:
        now = time.monotonic()
        if now - self._last_cancel_check < self.cancel_interval_s:
            return False
        self._last_cancel_check = now
        with self.sessions() as session:
            flag = session.scalar(select(Job.cancel_requested).where(Job.id == self.job_id))
        return bool(flag)

    def on_epoch_end(self, epoch: int, metrics: dict[str, float], model: nn.Module) -> None:
        key = f"jobs/{self.job_id}/checkpoints/epoch-{epoch:04d}.safetensors"
        path = self.storage.path(key)
        save_weights(
            path, model.state_dict(), weights_metadata(self.spec, job_id=self.job_id, epoch=epoch)
        )
        metrics = clean(metrics)
        checkpoint = Checkpoint(
            id=new_id("ckpt"),
            job_id=self.job_id,
            epoch=epoch,
            metrics=metrics,
            size_bytes=path.stat().st_size,
            sha256=sha256_file(path),
            storage_key=key,
        )
        progress = {
            "epoch": epoch,
            "epochs": self.spec.epochs,
            "step": 0,
            "steps": 0,
            "fraction": round(epoch / self.spec.epochs, 4),
        }
        summary = {k: metrics.get(k) for k in SUMMARY_KEYS}
        with self.sessions() as session:
            if not self._update_running(session, progress=progress, metrics=summary):
                session.rollback()
                return
            session.add(checkpoint)
            accuracy = metrics.get("val_accuracy")
            text = f"epoch {epoch}/{self.spec.epochs}: train_loss {metrics['train_loss']:.4f}"
            if accuracy is not None:
                text += f", val_accuracy {accuracy:.4f}"
            add_event(session, self.job_id, "epoch", text, {"epoch": epoch, **metrics})
            add_event(
                session,
                self.job_id,
                "checkpoint",
                f"checkpoint of epoch {epoch} saved",
                {"epoch": epoch, "checkpoint_id": checkpoint.id, "sha256": checkpoint.sha256},
            )
            session.commit()
        self.checkpoint_ids[epoch] = checkpoint.id
