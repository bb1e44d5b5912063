"""The safety net that makes the database the source of truth for jobs.

`reap` runs in every worker (every `reaper_interval_s`) and once when the API starts:
1. a `running` job whose lease expired lost its worker (killed, paused, partitioned): it goes
   back to `queued` to resume from its last checkpoint, or ends `failed`
   (`max_attempts_exceeded`) once crashes used up `max_attempts`, or `cancelled` if asked;
2. a `queued` job whose cancel was asked while it ran (an attempt released it, e.g. on
   SIGTERM, just as the user cancelled) ends `cancelled`: no worker claims it;
3. a `queued` job that the broker no longer holds (Redis flushed or restarted, a send that
   failed while the broker was down) is sent again. Duplicate messages are harmless: only
   one worker wins the conditional claim.
"""

import logging
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.core import queue
from app.core.config import Settings
from app.core.events import add_event
from app.core.models import Checkpoint, Job, JobStatus, utcnow

log = logging.getLogger(__name__)


@dataclass
class ReapReport:
    requeued: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    resent: list[str] = field(default_factory=list)


def drop_resume_keys(session: Session, job_id: str) -> list[str]:
    """Unlink the job's optimiser-state files from its checkpoints; their keys, to delete.

    For a job that will never resume (it succeeded or was cancelled). Files no row names are
    deleted by the caller after its commit, or by `sweep_files` if that delete fails.
    """
    keys = list(
        session.scalars(
            select(Checkpoint.resume_key).where(
                Checkpoint.job_id == job_id, Checkpoint.resume_key.is_not(None)
            )
        )
    )
    if keys:
        session.execute(
            update(Checkpoint).where(Checkpoint.job_id == job_id).values(resume_key=None)
        )
    return keys


def _expire_leases(session: Session, settings: Settings, report: ReapReport) -> None:
    now = utcnow()
    stmt = (
        select(Job)
        .where(Job.status == JobStatus.running, Job.lease_expires_at < now)
        .with_for_update(skip_locked=True)
    )
    for job in session.scalars(stmt):
        fence = (Job.id == job.id, Job.status == JobStatus.running, Job.attempts == job.attempts)
        lost = f"attempt {job.attempts} lost its worker ({job.worker_id}): lease expired"
        error = None
        if job.cancel_requested:
            values = {"status": JobStatus.cancelled, "finished_at": now}
            outcome = report.cancelled
        elif job.attempts - job.released >= settings.max_attempts:
            error = {
                "code": "max_attempts_exceeded",
                "message": f"{lost}; {settings.max_attempts} attempts crashed",
            }
            values = {"status": JobStatus.failed, "finished_at": now, "error": error}
            outcome = report.failed
        else:
            values = {"status": JobStatus.queued, "enqueued_at": None}
            outcome = report.requeued
        if not session.execute(
            update(Job).where(*fence).values(lease_expires_at=None, worker_id=None, **values)
        ).rowcount:
            continue  # its worker ended or renewed it meanwhile (on SQLite nothing is locked)
        if values["status"] == JobStatus.cancelled:
            drop_resume_keys(session, job.id)  # sweep_files deletes them
        if error is not None:
            add_event(session, job.id, "error", error["message"], error)
        add_event(
            session,
            job.id,
            "status",
            f"{lost}; now {values['status']}",
            {"status": str(values["status"]), "attempt": job.attempts},
        )
        outcome.append(job.id)
    session.commit()


def _cancel_released(session: Session, report: ReapReport) -> None:
    """End the queued jobs whose cancel was asked while they ran: claim() never takes them."""
    stmt = (
        select(Job.id)
        .where(Job.status == JobStatus.queued, Job.cancel_requested.is_(True))
        .with_for_update(skip_locked=True)
    )
    for job_id in list(session.scalars(stmt)):
        if not session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.queued)
            .values(status=JobStatus.cancelled, finished_at=utcnow())
        ).rowcount:
            continue  # ended meanwhile (SQLite's FOR UPDATE locks nothing): one terminal event
        drop_resume_keys(session, job_id)  # sweep_files deletes them
        add_event(session, job_id, "status", "job cancelled", {"status": "cancelled"})
        report.cancelled.append(job_id)
    session.commit()


def _resend_lost(session: Session, settings: Settings, report: ReapReport) -> None:
    cutoff = utcnow() - timedelta(seconds=settings.requeue_grace_s)
    stmt = select(Job.id).where(
        Job.status == JobStatus.queued,
        Job.cancel_requested.is_(False),
        (Job.enqueued_at.is_(None)) | (Job.enqueued_at < cutoff),
    )
    candidates = list(session.scalars(stmt))
    if not candidates:
        return
    session.rollback()  # nothing is held open while the broker is asked
    held = queue.pending_job_ids(settings)
    for job_id in candidates:
        if job_id in held:
            continue
        queue.enqueue(settings, job_id)
        # Committed one by one: the row stays locked only for its own update, never while
        # the next send waits on a slow broker (a cancel or a claim of it would wait too).
        session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.queued)
            .values(enqueued_at=utcnow())
        )
        session.commit()
        report.resent.append(job_id)


def reap(session: Session, settings: Settings) -> ReapReport:
    """Expire lost leases, end released cancels, re-send lost messages; safe anywhere, any time."""
    report = ReapReport()
    _expire_leases(session, settings, report)
    _cancel_released(session, report)
    try:
        _resend_lost(session, settings, report)
    except Exception:  # broker down: the next round tries again
        session.rollback()
        log.warning("broker unavailable; queued jobs will be re-sent later", exc_info=True)
    if any((report.requeued, report.failed, report.cancelled, report.resent)):
        log.info("reaper: %s", report)
    return report
