"""The claim and the lease: one winner per job, a tenant's cap of jobs, a lost lease's stop."""

import logging
import re
import time
from pathlib import Path

import pytest
from sqlalchemy import delete, text, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from app.core.config import Settings
from app.core.db import get_sessionmaker
from app.core.ids import new_id
from app.core.models import LOCAL_TENANT, Dataset, Job, JobEvent, JobStatus, Worker
from app.jobs.service import cancel, queue_info
from tests.support.factories import make_dataset_row
from tests.support.processes import wait_for
from worker.lease import AttemptInterrupted, Lease
from worker.runner import claim


def _job(session: Session, dataset: Dataset, status: JobStatus = JobStatus.queued) -> Job:
    job = Job(
        id=new_id("job"),
        tenant_id=LOCAL_TENANT,
        status=status,
        dataset_id=dataset.id,
        spec={"epochs": 1},
        progress={},
        metrics={},
    )
    session.add(job)
    session.commit()
    return job


def test_claim_has_one_winner(db_session: Session, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, max_running_jobs_per_tenant=5)
    job = _job(db_session, make_dataset_row(db_session))
    assert claim(db_session, settings, job.id) == 1
    assert claim(db_session, settings, job.id) is None  # already running: nobody else wins
    db_session.refresh(job)
    assert job.status == "running" and job.attempts == 1 and job.lease_expires_at is not None


def test_a_tenant_at_its_cap_waits_and_is_told_why(db_session: Session, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, max_running_jobs_per_tenant=1)
    dataset = make_dataset_row(db_session)
    _job(db_session, dataset, JobStatus.running)
    waiting = _job(db_session, dataset)
    assert claim(db_session, settings, waiting.id) is None
    db_session.refresh(waiting)
    assert waiting.status == "queued" and waiting.attempts == 0
    # Other tests' workers may still count as alive: compare with what was there before.
    before = queue_info(db_session, settings, [waiting])[waiting.id]["workers_alive"]
    db_session.add(Worker(id="host:1", queues=f"{settings.gpu_queue},{settings.cpu_queue}"))
    db_session.add(Worker(id="host:2", queues=settings.cpu_queue))  # cannot train: not counted
    db_session.commit()
    info = queue_info(db_session, settings, [waiting])[waiting.id]
    assert info["workers_alive"] == before + 1
    assert info["reason"] == "this tenant already runs 1 jobs, its limit is 1"
    roomier = settings.model_copy(update={"max_running_jobs_per_tenant": 2})
    assert claim(db_session, roomier, waiting.id) == 1


class _SlowFirstRenewal(Lease):
    """A renewal that takes 0.4 s once, as on a starved machine or a slow database."""

    slow = True

    def renew(self) -> bool:
        if self.slow:
            self.slow = False
            time.sleep(0.4)
        return super().renew()


def test_a_late_renewal_is_logged_and_a_lost_lease_stops_the_attempt(
    pg_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Committed for real: the lease thread renews through its own connections."""
    settings = Settings(data_dir=tmp_path, database_url=pg_url)
    sessions = get_sessionmaker(pg_url)
    with sessions() as session:
        job = _job(session, make_dataset_row(session))
        assert claim(session, settings, job.id) == 1
    lease = _SlowFirstRenewal(sessions, job.id, 1, lease_s=0.6).start()
    try:
        with caplog.at_level(logging.WARNING, logger="worker.lease"):
            wait_for(lambda: "lease renewed" in caplog.text, 10, "the late-renewal warning")
            late = re.search(rf"{job.id} attempt 1: lease renewed ([\d.]+) s after", caplog.text)
            assert late and float(late[1]) >= 0.6, caplog.text  # a 0.2 s wait + the 0.4 s renewal
            with sessions() as session:  # the reaper gave the job to attempt 2
                session.execute(update(Job).where(Job.id == job.id).values(attempts=2))
                session.commit()
            wait_for(lease.lost.is_set, 10, "the lease to be lost")
        with pytest.raises(AttemptInterrupted, match="lease_lost"):
            lease.check()
    finally:
        lease.stop()
        with sessions() as session:
            session.execute(delete(JobEvent).where(JobEvent.job_id == job.id))
            session.execute(delete(Job).where(Job.id == job.id))
            session.execute(delete(Dataset).where(Dataset.id == job.dataset_id))
            session.commit()


def test_a_worker_frozen_inside_a_write_does_not_hold_up_a_cancel(
    pg_url: str, tmp_path: Path
) -> None:
    """SIGSTOP, a paused VM or a partition can freeze a worker between an UPDATE of its job
    row and the COMMIT: the database ends that transaction after a lease, so the user's
    cancel (and the reaper) get the row instead of waiting for the worker to wake."""
    settings = Settings(data_dir=tmp_path, database_url=pg_url)
    sessions = get_sessionmaker(pg_url)
    with sessions() as session:
        job = _job(session, make_dataset_row(session))
        assert claim(session, settings, job.id) == 1
    lease = Lease(sessions, job.id, 1, lease_s=0.5)  # its renewals are done by hand here
    try:
        with lease.transaction() as frozen:
            renewed = frozen.execute(
                update(Job).where(*lease.fence()).values(lease_expires_at=lease.expiry())
            )
            assert renewed.rowcount == 1  # the row is locked, and this "process" goes quiet
            with sessions() as user:
                user.execute(text("SET LOCAL lock_timeout = '10s'"))  # fail, don't hang
                started = time.monotonic()
                assert cancel(user, LOCAL_TENANT, job.id).cancel_requested
                assert time.monotonic() - started < 5
            with pytest.raises(DBAPIError, match="idle-in-transaction"):
                frozen.commit()  # woken up: its write is gone, and retrying() tries again
    finally:
        with sessions() as session:
            session.execute(delete(JobEvent).where(JobEvent.job_id == job.id))
            session.execute(delete(Job).where(Job.id == job.id))
            session.execute(delete(Dataset).where(Dataset.id == job.dataset_id))
            session.commit()
