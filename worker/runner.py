"""Run one attempt of a job: claim it, resume it, fit, and record exactly one outcome."""

import contextlib
import logging
import os
import signal
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import torch
from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from app.core import logs, queue
from app.core.config import Settings
from app.core.db import end_if_idle, get_sessionmaker
from app.core.events import add_event
from app.core.models import Checkpoint, Dataset, Job, JobStatus, Tenant, utcnow
from app.core.storage import Storage, discard, get_storage, unreachable
from worker.faults import Faults
from worker.jobspec import JobFailure, build_spec, fetch_weights, load_data
from worker.lease import AttemptInterrupted, Lease
from worker.outcomes import finish, record_success, release
from worker.reporting import CancelPoll, DatabaseReporter
from worker.retry import retrying
from worker.training.heap import steady_heap
from worker.training.loop import TrainingCancelled, fit
from worker.training.resume import ResumeState, as_trained, load_state
from worker.training.trainer import TrainingDiverged, free_device_memory

log = logging.getLogger(__name__)


def claim(session: Session, settings: Settings, job_id: str) -> int | None:
    """queued → running in one row-locked conditional UPDATE; the attempt number, or None.

    None also when the job's tenant already runs its maximum of jobs: the job stays queued
    and the reaper sends it again later.
    """
    end_if_idle(session, settings.lease_s)  # it locks the job and tenant rows
    row = session.execute(
        select(Job.attempts, Job.tenant_id)
        .where(Job.id == job_id, Job.status == JobStatus.queued, Job.cancel_requested.is_(False))
        .with_for_update(skip_locked=True)
    ).first()
    if row is None:
        session.rollback()
        return None
    attempts, tenant = row
    # Serialise claims per tenant before counting its running jobs: a write to its row,
    # which on Postgres row-locks it and on SQLite begins the transaction holding the one
    # writer's lock (pysqlite begins one only at a write: a FOR UPDATE read locked nothing
    # there, and two claims both counted one running job under a cap of two).
    session.execute(update(Tenant).where(Tenant.id == tenant).values(created_at=Tenant.created_at))
    running = session.scalar(
        select(func.count())
        .select_from(Job)
        .where(Job.tenant_id == tenant, Job.status == JobStatus.running)
    )
    if running >= settings.max_running_jobs_per_tenant:
        session.rollback()
        log.info("job %s waits: tenant %s runs %d jobs already", job_id, tenant, running)
        return None
    attempt = attempts + 1
    # Conditional on what was read: on SQLite the SELECT above locks nothing, so a cancel or
    # another worker's claim may have committed in between; then this one lost.
    if not session.execute(
        update(Job)
        .where(
            Job.id == job_id,
            Job.status == JobStatus.queued,
            Job.attempts == attempts,
            Job.cancel_requested.is_(False),
        )
        .values(
            status=JobStatus.running,
            attempts=attempt,
            started_at=utcnow(),
            lease_expires_at=utcnow() + timedelta(seconds=settings.lease_s),
            worker_id=f"{socket.gethostname()}:{os.getpid()}",
        )
    ).rowcount:
        session.rollback()
        return None
    add_event(
        session,
        job_id,
        "status",
        f"job running (attempt {attempt})",
        {"status": "running", "attempt": attempt},
    )
    session.commit()
    return attempt


def _warn_storage_out_of_reach(lease: Lease, exc: Exception) -> None:
    """Tell the job's watchers why its attempt stops (the lease lapses; see run_job)."""
    message = (
        f"attempt {lease.attempt} stopped: storage did not answer ({type(exc).__name__}); "
        "the next attempt resumes from the last checkpoint"
    )
    data = {"reason": "storage_unavailable", "attempt": lease.attempt}
    try:
        lease.add_event("warning", message, data)
    except Exception:  # only a courtesy: the reaper resumes the job either way
        log.warning("job %s: could not record the storage outage", lease.job_id, exc_info=True)


def _announce_decoding(lease: Lease, count: int, size: int) -> None:
    """Tell the job's watchers why it shows no progress yet: a first decode takes minutes."""
    message = (
        f"decoding {count} images at {size} px (fetched and decoded once per dataset and image "
        "size)"
    )
    data = {"status": "running", "decoding": {"images": count, "image_size": size}}
    lease.add_event("status", message, data)


def _resume_state(session: Session, storage: Storage, job_id: str) -> ResumeState | None:
    """The state after the job's last committed epoch, if an earlier attempt got that far."""
    last = session.scalar(
        select(Checkpoint)
        .where(Checkpoint.job_id == job_id, Checkpoint.resume_key.is_not(None))
        .order_by(Checkpoint.epoch.desc())
        .limit(1)
    )
    if last is None or last.resume_key is None or not storage.exists(last.resume_key):
        return None
    stmt = select(Checkpoint.epoch, Checkpoint.storage_key).where(Checkpoint.job_id == job_id)
    keys = {epoch: key for epoch, key in session.execute(stmt)}
    return load_state(storage.local(last.resume_key), lambda epoch: storage.local(keys[epoch]))


def _start_afresh(lease: Lease, storage: Storage) -> None:
    """Drop the checkpoints of earlier epochs when training must start at epoch 1 anyway.

    An attempt resumes from the last epoch's optimiser state; when that file is not in
    storage (a lifecycle rule deleted it, workers that do not share one store), it starts
    over, and its epoch 1 would collide with the row of the earlier epoch 1: the job failed
    with a database error. Their rows and files go, with a warning saying why.
    """
    stale: list[str] = []

    def write() -> None:
        with lease.transaction() as session:
            stmt = select(Checkpoint.storage_key, Checkpoint.resume_key).where(
                Checkpoint.job_id == lease.job_id
            )
            rows = session.execute(stmt).all()
            if not rows:
                return
            if not session.execute(
                update(Job).where(*lease.fence()).values(lease_expires_at=lease.expiry())
            ).rowcount:
                raise AttemptInterrupted("lease_lost")
            session.execute(delete(Checkpoint).where(Checkpoint.job_id == lease.job_id))
            message = (
                f"the optimiser state of the last of {len(rows)} saved epochs is not in storage: "
                "training starts again from epoch 1, and their checkpoints are dropped"
            )
            add_event(session, lease.job_id, "warning", message, {"code": "resume_state_missing"})
            session.commit()
            stale[:] = [key for row in rows for key in row if key]

    retrying(write)
    discard(storage, *stale)


@contextmanager
def _sigterm_releases(lease: Lease) -> Iterator[None]:
    """SIGTERM (deploy) stops the loop at its next step, after any checkpoint being written."""
    try:
        previous = signal.signal(signal.SIGTERM, lambda *_: lease.request_release("shutdown"))
    except ValueError:  # not the main thread (in-process tests): no signal handling
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _train(settings: Settings, storage: Storage, lease: Lease, faults: Faults) -> None:
    # Host-cache entries the job reads until it ends (a model it starts from) are held here.
    with contextlib.ExitStack() as holds:
        _train_holding(settings, storage, lease, faults, holds)


def _train_holding(
    settings: Settings, storage: Storage, lease: Lease, faults: Faults, holds: contextlib.ExitStack
) -> None:
    with lease.sessions() as session:
        job = session.get(Job, lease.job_id)
        assert job is not None
        dataset = session.get(Dataset, job.dataset_id) if job.dataset_id else None
        if dataset is None:
            raise JobFailure("dataset_not_found", "the job's dataset was deleted")
        spec = build_spec(session, settings, storage, job, dataset, holds)
        validation_split = job.spec["validation_split"]
    cancel = CancelPoll(lease, settings.cancel_poll_interval_s)

    def check() -> None:
        faults.after_decode()
        cancel.check()

    fetch_weights(settings, spec, cancel.check)
    data = load_data(
        settings,
        storage,
        dataset,
        spec,
        validation_split,
        check=check,
        decoding=lambda count: _announce_decoding(lease, count, spec.image_size),
    )
    micro: int | None = None
    while True:
        if micro is not None:
            free_device_memory()
        with lease.sessions() as session:
            resume = _resume_state(session, storage, lease.job_id)
        if resume is None:
            _start_afresh(lease, storage)
        spec = as_trained(spec, resume)
        if micro is None and resume is not None:
            micro = resume.meta.get("micro_batch")
        reporter = DatabaseReporter(
            lease.sessions,
            storage,
            lease,
            spec,
            settings.progress_interval_s,
            settings.cancel_poll_interval_s,
            faults,
        )
        try:
            result = fit(spec, data, reporter, resume=resume, micro_batch=micro)
        except torch.OutOfMemoryError:
            reporter.flush()  # what it committed is what the retry resumes from
            micro = (micro or spec.batch_size) // 2
            if micro < 1:
                raise JobFailure("out_of_memory", "out of memory even with a batch of 1") from None
            text = (
                f"out of memory: retrying from the last checkpoint with micro-batches of {micro} "
                f"and gradient accumulation (effective batch {spec.batch_size})"
            )
            reporter.event("warning", text, {"code": "out_of_memory", "micro_batch": micro})
            continue  # memory is freed at the loop's top: this handler's traceback holds it
        except TrainingDiverged as exc:
            reporter.flush()  # the finite epochs before it stay, with their checkpoints
            raise JobFailure("training_diverged", str(exc)) from None
        except BaseException:
            with contextlib.suppress(Exception):  # the first failure is the one to report
                reporter.flush()
            raise
        reporter.flush(keep_final=True)
        faults.before_success(lease.attempt)
        model_id = record_success(lease, storage, spec, result, reporter)
        if model_id is not None:
            try:
                queue.enqueue_exports(settings, model_id)
            except Exception:  # exports are also made on demand by the API
                log.warning("could not enqueue the exports of %s", model_id, exc_info=True)
        return


def run_job(settings: Settings, job_id: str) -> None:
    """Run one attempt of `job_id` if it can be claimed; leave the job in a truthful state."""
    sessions: sessionmaker[Session] = get_sessionmaker(settings.database_url)
    storage = get_storage(settings)
    with sessions() as session:
        attempt = claim(session, settings, job_id)
    if attempt is None:
        log.info("job %s is not queued (or cancelled); nothing to do", job_id)
        return
    lease = Lease(sessions, job_id, attempt, settings.lease_s).start()
    token = logs.job_id.set(job_id)
    try:
        with _sigterm_releases(lease), steady_heap():
            _train(settings, storage, lease, Faults())
    except TrainingCancelled:
        finish(lease, storage, JobStatus.cancelled, "job cancelled while running")
    except AttemptInterrupted as exc:
        if exc.reason == "lease_lost":
            log.warning("job %s attempt %d lost its lease; stopping", job_id, attempt)
        else:
            release(settings, storage, lease, exc.reason)
    except JobFailure as exc:
        finish(
            lease,
            storage,
            JobStatus.failed,
            "job failed",
            error={"code": exc.code, "message": exc.message},
        )
    except OperationalError:
        log.exception(
            "job %s: database unreachable; the lease will lapse and the job resume", job_id
        )
    except Exception as exc:
        if unreachable(exc):  # as with the database: the next attempt resumes, counted
            log.exception(
                "job %s: storage unreachable; the lease will lapse, the job resume", job_id
            )
            _warn_storage_out_of_reach(lease, exc)
            return
        log.exception("job %s failed", job_id)
        error = {"code": "training_error", "message": f"{type(exc).__name__}: {exc}"[:1000]}
        finish(lease, storage, JobStatus.failed, "job failed", error=error)
    finally:
        lease.stop()
        logs.job_id.reset(token)
        if torch.cuda.is_available():  # the child lives on: give cached GPU memory back
            torch.cuda.empty_cache()
