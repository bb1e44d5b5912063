"""Job use cases: create (validate, record, commit, enqueue), read, cancel, events, and the
sweep of stored job files no row names."""

import hashlib
import json
import logging
from collections.abc import Callable
from datetime import timedelta

from sqlalchemy import func, literal, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.api.pagination import paginate
from app.core import ids, queue
from app.core.config import Settings
from app.core.errors import Conflict, Invalid, NotFound, Unavailable
from app.core.events import add_event
from app.core.hostcache import STALE_SCRATCH_S
from app.core.ids import new_id
from app.core.models import (
    TERMINAL_STATUSES,
    Checkpoint,
    Dataset,
    Job,
    JobEvent,
    JobStatus,
    Worker,
    owned,
    utcnow,
)
from app.core.reaper import drop_resume_keys
from app.core.storage import Storage
from app.jobs import plots
from app.jobs.schemas import JobCreate
from app.jobs.validation import check_spec

log = logging.getLogger(__name__)

# The folders under `jobs/<id>/` whose files each belong to a checkpoint row
# (worker/reporting.py names them per epoch and attempt).
ROW_FOLDERS = ("checkpoints", "state")


def _request_hash(spec: JobCreate) -> str:
    return hashlib.sha256(
        json.dumps(spec.model_dump(mode="json"), sort_keys=True).encode()
    ).hexdigest()


def _by_idempotency_key(session: Session, tenant: str, key: str, digest: str) -> Job | None:
    job = session.scalar(select(Job).where(Job.tenant_id == tenant, Job.idempotency_key == key))
    if job is not None and job.request_hash != digest:
        raise Invalid(
            "this Idempotency-Key was used with a different request body",
            code="idempotency_key_reused",
        )
    return job


def create(
    session: Session,
    settings: Settings,
    tenant: str,
    spec: JobCreate,
    idempotency_key: str | None,
    admit: Callable[[], None] = lambda: None,
) -> tuple[Job, bool]:
    """Record a queued job, commit, then enqueue. Returns (job, created).

    `admit` runs once the request is known not to replay an Idempotency-Key, before the
    spec is checked; it raises to refuse the submission (the rate limit). A client retrying
    a submission it never got an answer to gets its job back, not a 429.
    """
    digest = _request_hash(spec)
    if idempotency_key and (job := _by_idempotency_key(session, tenant, idempotency_key, digest)):
        return job, False
    admit()
    check_spec(session, tenant, spec, download=settings.weights_download)
    job = Job(
        id=new_id(ids.JOB),
        tenant_id=tenant,
        status=JobStatus.queued,
        dataset_id=spec.dataset_id,
        spec=spec.model_dump(mode="json"),
        progress={"epoch": 0, "epochs": spec.epochs, "step": 0, "steps": 0, "fraction": 0.0},
        metrics={},
        idempotency_key=idempotency_key,
        request_hash=digest,
        enqueued_at=utcnow(),
    )
    session.add(job)
    add_event(session, job.id, "status", "job queued", {"status": "queued"})
    try:
        session.commit()
    except IntegrityError:
        # Another request with the same Idempotency-Key won the race, or the dataset was
        # deleted since it was checked (its foreign key): that is the 422 the check gives.
        session.rollback()
        existing = idempotency_key and _by_idempotency_key(session, tenant, idempotency_key, digest)
        if existing:
            return existing, False
        check_spec(session, tenant, spec, download=settings.weights_download)
        raise
    try:
        queue.enqueue(settings, job.id)
    except Exception:  # the job row is the truth; the reaper re-sends it
        log.warning("could not enqueue job %s; it stays queued", job.id, exc_info=True)
    return job, True


def get(session: Session, tenant: str, job_id: str) -> Job:
    """The tenant's job; another tenant's answers exactly as a missing one."""
    job = owned(session, Job, tenant, job_id)
    if job is None:
        raise NotFound(f"job {job_id} does not exist", code="job_not_found")
    return job


def queue_info(session: Session, settings: Settings, jobs: list[Job]) -> dict[str, dict]:
    """Why each queued job in `jobs` waits: its place in line, live workers, its tenant's cap.

    Three queries whatever the number of jobs (list pages show up to 200).
    """
    waiting = [j for j in jobs if j.status == JobStatus.queued]
    if not waiting:
        return {}
    alive_since = utcnow() - timedelta(seconds=3 * settings.reaper_interval_s)
    # Only workers that consume the training queue can take a queued job.
    trains = (literal(",") + Worker.queues + ",").contains(f",{settings.gpu_queue},")
    alive = session.scalar(
        select(func.count()).select_from(Worker).where(Worker.last_seen_at >= alive_since, trains)
    )
    line = session.scalars(
        select(Job.id).where(Job.status == JobStatus.queued, Job.id <= max(j.id for j in waiting))
    ).all()
    position = {job_id: i + 1 for i, job_id in enumerate(sorted(line))}
    tenants = {j.tenant_id for j in waiting}
    rows = session.execute(
        select(Job.tenant_id, func.count())
        .where(Job.status == JobStatus.running, Job.tenant_id.in_(tenants))
        .group_by(Job.tenant_id)
    ).all()
    running = {tenant: count for tenant, count in rows}
    cap = settings.max_running_jobs_per_tenant
    out = {}
    for job in waiting:
        ahead = position.get(job.id, 1) - 1
        busy = running.get(job.tenant_id, 0)
        if not alive:
            reason = "no worker is alive: start one with `finetune worker`"
        elif busy >= cap:
            reason = f"this tenant already runs {busy} jobs, its limit is {cap}"
        else:
            reason = f"waiting for a free worker ({ahead} job{'s' if ahead != 1 else ''} ahead)"
        out[job.id] = {"position": ahead + 1, "workers_alive": alive, "reason": reason}
    return out


def retry(session: Session, settings: Settings, tenant: str, job_id: str) -> Job:
    """Queue a failed job again; it resumes from its last checkpoint with a fresh attempt budget."""
    job = get(session, tenant, job_id)
    if job.dataset_id is not None:
        # Hold the dataset as a new job's foreign key does (a key-share lock): a delete racing
        # this retry waits for it and then finds the job queued (409). Without it, both
        # succeeded and the queued job later failed on a missing dataset.
        session.execute(
            select(Dataset.id).where(Dataset.id == job.dataset_id).with_for_update(key_share=True)
        )
    done = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.failed, Job.dataset_id.is_not(None))
        .values(
            status=JobStatus.queued,
            error=None,
            finished_at=None,
            files_swept_at=None,
            released=Job.attempts,
            cancel_requested=False,
            enqueued_at=utcnow(),
        )
    )
    if not done.rowcount:
        session.rollback()
        session.refresh(job)  # the status that refused it, not the one read before
        why = f"job {job_id} is {job.status}; only failed jobs can be retried"
        if job.status == JobStatus.failed:  # its dataset_id went with the dataset
            why = f"job {job_id} cannot be retried: its dataset was deleted"
        raise Conflict(why, code="job_not_retryable")
    add_event(
        session,
        job_id,
        "status",
        "retry requested; queued to resume from the last checkpoint",
        {"status": "queued"},
    )
    session.commit()
    try:
        queue.enqueue(settings, job_id)
    except Exception:
        log.exception("could not enqueue job %s; the reaper will", job_id)
    session.refresh(job)
    return job


def list_(
    session: Session, tenant: str, status: str | None, limit: int, after: str | None
) -> list[Job]:
    stmt = select(Job).where(Job.tenant_id == tenant)
    if status:
        stmt = stmt.where(Job.status == status)
    return list(session.scalars(paginate(stmt, Job.id, limit, after)))


def cancel(session: Session, tenant: str, job_id: str) -> Job:
    """Queued jobs end now; running ones get a flag their training loop polls.

    A job can move between the two meanwhile (a worker hands it back, the reaper requeues
    it): then the status it has now decides, so such a job is never answered 409.
    """
    job = get(session, tenant, job_id)
    for _ in range(5):
        if session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.queued)
            .values(status=JobStatus.cancelled, finished_at=utcnow(), cancel_requested=True)
        ).rowcount:
            # An earlier attempt's optimiser state is never resumed now (sweep_files frees it).
            drop_resume_keys(session, job_id)
            add_event(
                session, job_id, "status", "job cancelled while queued", {"status": "cancelled"}
            )
            break
        if session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.running)
            .values(cancel_requested=True)
        ).rowcount:
            break
        session.rollback()
        session.refresh(job)  # it may have ended, or moved, since it was read
        if job.status not in (JobStatus.queued, JobStatus.running):
            raise Conflict(f"job {job_id} is already {job.status}", code="job_not_cancellable")
    else:
        raise Unavailable("the job kept changing state; try again")  # not seen in practice
    session.commit()
    session.refresh(job)
    return job


def events(
    session: Session, tenant: str, job_id: str, after: int | None, limit: int
) -> list[JobEvent]:
    """Oldest first, strictly after event id `after`; one extra row tells `has_more`."""
    get(session, tenant, job_id)
    stmt = select(JobEvent).where(JobEvent.job_id == job_id)
    if after is not None:
        stmt = stmt.where(JobEvent.id > after)
    return list(session.scalars(stmt.order_by(JobEvent.id).limit(limit + 1)))


def checkpoints(session: Session, tenant: str, job_id: str) -> list[Checkpoint]:
    get(session, tenant, job_id)
    stmt = select(Checkpoint).where(Checkpoint.job_id == job_id).order_by(Checkpoint.epoch)
    return list(session.scalars(stmt))


def checkpoint(session: Session, tenant: str, job_id: str, checkpoint_id: str) -> Checkpoint:
    row = owned(session, Checkpoint, tenant, checkpoint_id)
    if row is None or row.job_id != job_id:
        raise NotFound(f"checkpoint {checkpoint_id} does not exist", code="checkpoint_not_found")
    return row


def plot(session: Session, tenant: str, job_id: str, name: str) -> bytes:
    """A PNG of the job: `curves` (per-epoch loss/accuracy) or `confusion` (final matrix)."""
    job = get(session, tenant, job_id)
    if name == "confusion":
        return plots.confusion(job_id, job.metrics.get("evaluation"))
    stmt = select(JobEvent.data).where(JobEvent.job_id == job_id, JobEvent.type == "epoch")
    epochs = {data["epoch"]: data for data in session.scalars(stmt.order_by(JobEvent.id))}
    return plots.curves(job_id, [epochs[e] for e in sorted(epochs)])


def sweep_files(
    session: Session, storage: Storage, older_than_s: float = STALE_SCRATCH_S, batch: int = 100
) -> list[str]:
    """Remove the stored checkpoint and optimiser-state files of ended jobs that no row names;
    return their keys.

    A worker stores an epoch's files, then commits their row: an attempt stopped in between
    (the database or the store out of reach, the process killed) leaves them, and so does a
    delete of superseded state that the store did not answer. Each job is checked once, after
    it has ended `older_than_s` ago and is written to no more (a retry makes it due again);
    a file changed within `older_than_s` is kept all the same."""
    cutoff = utcnow() - timedelta(seconds=older_than_s)
    due = (
        Job.status.in_(TERMINAL_STATUSES),
        Job.finished_at < cutoff,
        Job.files_swept_at.is_(None),
    )
    removed: list[str] = []
    while True:
        job_ids = list(session.scalars(select(Job.id).where(*due).order_by(Job.id).limit(batch)))
        session.commit()  # no transaction held across the store's calls
        for job_id in job_ids:
            removed += _sweep_job_files(session, storage, job_id, cutoff.timestamp())
            # Conditional: a retry that queued the job meanwhile makes it due again later.
            session.execute(
                update(Job).where(Job.id == job_id, *due).values(files_swept_at=utcnow())
            )
            session.commit()
        if len(job_ids) < batch:
            return removed


def _sweep_job_files(session: Session, storage: Storage, job_id: str, since: float) -> list[str]:
    rows = session.execute(
        select(Checkpoint.storage_key, Checkpoint.resume_key).where(Checkpoint.job_id == job_id)
    )
    named = {key for row in rows for key in row if key}
    session.commit()
    stored = [
        f"jobs/{job_id}/{folder}/{name}"
        for folder in ROW_FOLDERS
        for name in storage.children(f"jobs/{job_id}/{folder}")
    ]
    orphans = [key for key in stored if key not in named and not storage.changed_since(key, since)]
    for key in orphans:
        storage.delete(key)
    return orphans
