"""How an attempt ends: finished (cancelled, failed), released to resume, or succeeded.

Each outcome is one fenced transaction, retried across dropped connections: a stale
attempt's outcome changes nothing (worker/lease.py).
"""

import logging
from typing import Any

from sqlalchemy import select, update

from app.core import ids, queue
from app.core.config import Settings
from app.core.events import add_event
from app.core.ids import new_id
from app.core.models import Checkpoint, Job, JobStatus, Model, utcnow
from app.core.reaper import drop_resume_keys
from app.core.storage import Storage, discard
from worker.lease import Lease
from worker.reporting import DatabaseReporter, clean
from worker.retry import retrying
from worker.training.loop import FitResult, TrainingCancelled
from worker.training.spec import TrainSpec

log = logging.getLogger(__name__)


def finish(lease: Lease, storage: Storage, status: JobStatus, message: str, **values: Any) -> None:
    stale: list[str] = []

    def write() -> None:
        with lease.transaction() as session:
            if session.execute(
                update(Job)
                .where(*lease.fence())
                .values(status=status, finished_at=utcnow(), lease_expires_at=None, **values)
            ).rowcount:
                if values.get("error"):
                    add_event(
                        session, lease.job_id, "error", values["error"]["message"], values["error"]
                    )
                if status == JobStatus.cancelled:  # never resumes (a failed job may be retried)
                    stale[:] = drop_resume_keys(session, lease.job_id)
                add_event(session, lease.job_id, "status", message, {"status": str(status)})
            session.commit()

    retrying(write)
    discard(storage, *stale)


def release(settings: Settings, storage: Storage, lease: Lease, reason: str) -> None:
    """Hand the job back (deploy, lost parent): another worker resumes it from its checkpoint.

    Unless the user asked to cancel it meanwhile (SIGTERM is checked before the cancel flag):
    then it ends cancelled here. A cancel that commits between the two updates leaves it
    queued and flagged, which no worker claims and the reaper ends.
    """
    stale: list[str] = []

    def write() -> JobStatus | None:
        with lease.transaction() as session:
            if session.execute(
                update(Job)
                .where(*lease.fence(), Job.cancel_requested.is_(True))
                .values(status=JobStatus.cancelled, finished_at=utcnow(), lease_expires_at=None)
            ).rowcount:
                stale[:] = drop_resume_keys(session, lease.job_id)
                status: JobStatus | None = JobStatus.cancelled
                message = "job cancelled while running"
                add_event(session, lease.job_id, "status", message, {"status": "cancelled"})
            elif session.execute(
                update(Job)
                .where(*lease.fence())
                .values(
                    status=JobStatus.queued,
                    released=Job.released + 1,
                    lease_expires_at=None,
                    worker_id=None,
                    enqueued_at=utcnow(),
                )
            ).rowcount:
                status = JobStatus.queued
                message = f"attempt {lease.attempt} released ({reason}); queued to resume"
                add_event(
                    session, lease.job_id, "status", message, {"status": "queued", "reason": reason}
                )
            else:
                status = None
            session.commit()
            return status

    status = retrying(write)
    if status == JobStatus.cancelled:
        discard(storage, *stale)
    elif status == JobStatus.queued:
        try:
            queue.enqueue(settings, lease.job_id)
        except Exception:  # the reaper re-sends it
            log.warning("could not re-enqueue released job %s", lease.job_id, exc_info=True)


def record_success(
    lease: Lease, storage: Storage, spec: TrainSpec, result: FitResult, reporter: DatabaseReporter
) -> str | None:
    """Succeed the job and create its model; the model id, or None if the fence refused.

    The last epoch's checkpoint is committed in the same transaction (`commit_final`).
    Raises TrainingCancelled when a cancel was asked after the loop's last check.
    """
    stale: list[str] = []

    def write() -> str | None:
        with lease.transaction() as session:
            done = session.scalar(
                select(Job.model_id).where(
                    Job.id == lease.job_id,
                    Job.status == JobStatus.succeeded,
                    Job.attempts == lease.attempt,
                )
            )
            if done is not None:
                return done  # an earlier try committed, and only its answer was lost
            reporter.commit_final(session)
            best = session.scalar(
                select(Checkpoint).where(
                    Checkpoint.job_id == lease.job_id, Checkpoint.epoch == result.best_epoch
                )
            )
            assert best is not None
            metrics = clean(
                {
                    **result.best_metrics,
                    **(result.test_metrics or {}),
                    "best_epoch": result.best_epoch,
                    "stopped_early": result.stopped_early,
                }
            )
            if result.evaluation is not None:
                metrics["evaluation"] = result.evaluation
            model = Model(
                id=new_id(ids.MODEL),
                tenant_id=best.tenant_id,
                job_id=lease.job_id,
                checkpoint_id=best.id,
                backbone=spec.backbone,
                classes=list(spec.classes),
                image_size=spec.image_size,
                metrics=metrics,
                size_bytes=best.size_bytes,
                sha256=best.sha256,
                storage_key=best.storage_key,
            )
            last = clean(result.history[-1])
            summary = {
                **{
                    k: last.get(k)
                    for k in ("train_loss", "val_loss", "val_accuracy", "images_per_second")
                },
                "best_val_accuracy": metrics.get("val_accuracy"),
                "best_epoch": result.best_epoch,
                **clean(result.test_metrics or {}),
            }
            if result.evaluation is not None:
                summary["evaluation"] = result.evaluation
            progress = {**reporter.epoch_progress(last["epoch"]), "fraction": 1.0}
            if not session.execute(
                update(Job)
                .where(*lease.fence(), Job.cancel_requested.is_(False))
                .values(
                    status=JobStatus.succeeded,
                    finished_at=utcnow(),
                    model_id=model.id,
                    metrics=summary,
                    progress=progress,
                    lease_expires_at=None,
                )
            ).rowcount:
                session.rollback()
                if session.scalar(select(Job.cancel_requested).where(*lease.fence())):
                    raise TrainingCancelled  # asked after the last check: the user's word wins
                return None
            session.add(model)
            stale[:] = drop_resume_keys(session, lease.job_id)
            add_event(
                session,
                lease.job_id,
                "status",
                f"job succeeded; model {model.id} from epoch {result.best_epoch}",
                {"status": "succeeded", "model_id": model.id, "best_epoch": result.best_epoch},
            )
            session.commit()
            return model.id

    try:
        model_id = retrying(write)
    except TrainingCancelled:
        reporter.discard_final()
        raise
    if model_id is None:
        reporter.discard_final()
    discard(storage, *stale)  # a finished job never resumes: drop its optimiser state
    return model_id
