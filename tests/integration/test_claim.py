"""The claim and the lease: one winner per job, a tenant's cap of jobs, a lost lease's stop,
and a cancel that meets a release."""

import logging
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import event, select, text, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from app.core.config import Settings
from app.core.db import get_engine, get_sessionmaker
from app.core.ids import new_id
from app.core.migrate import upgrade
from app.core.models import (
    LOCAL_TENANT,
    Checkpoint,
    Job,
    JobEvent,
    JobStatus,
    Worker,
)
from app.core.reaper import reap
from app.core.storage import get_storage
from app.jobs.service import cancel, queue_info
from tests.support.factories import committed_job, make_bare_job, make_dataset_row
from tests.support.processes import wait_for
from worker import outcomes, runner
from worker.lease import AttemptInterrupted, Lease
from worker.runner import claim


def test_claim_has_one_winner(db_session: Session, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, max_running_jobs_per_tenant=5)
    job = make_bare_job(db_session, make_dataset_row(db_session))
    assert claim(db_session, settings, job.id) == 1
    assert claim(db_session, settings, job.id) is None  # already running: nobody else wins
    db_session.refresh(job)
    assert job.status == "running" and job.attempts == 1 and job.lease_expires_at is not None


def test_a_tenant_at_its_cap_waits_and_is_told_why(db_session: Session, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, max_running_jobs_per_tenant=1)
    dataset = make_dataset_row(db_session)
    make_bare_job(db_session, dataset, JobStatus.running)
    waiting = make_bare_job(db_session, dataset)
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
    with committed_job(pg_url) as (sessions, job):
        with sessions() as session:
            assert claim(session, settings, job.id) == 1
        lease = _SlowFirstRenewal(sessions, job.id, 1, lease_s=0.6).start()
        try:
            with caplog.at_level(logging.WARNING, logger="worker.lease"):
                wait_for(lambda: "lease renewed" in caplog.text, 10, "the late-renewal warning")
                renewed = rf"{job.id} attempt 1: lease renewed ([\d.]+) s after"
                late = re.search(renewed, caplog.text)
                assert late and float(late[1]) >= 0.6, caplog.text  # a 0.2 s wait + 0.4 s renewal
                with sessions() as session:  # the reaper gave the job to attempt 2
                    session.execute(update(Job).where(Job.id == job.id).values(attempts=2))
                    session.commit()
                wait_for(lease.lost.is_set, 10, "the lease to be lost")
            with pytest.raises(AttemptInterrupted, match="lease_lost"):
                lease.check()
        finally:
            lease.stop()


def test_a_worker_frozen_inside_a_write_does_not_hold_up_a_cancel(
    pg_url: str, tmp_path: Path
) -> None:
    """SIGSTOP, a paused VM or a partition can freeze a worker between an UPDATE of its job
    row and the COMMIT: the database ends that transaction after a lease, so the user's
    cancel (and the reaper) get the row instead of waiting for the worker to wake."""
    settings = Settings(data_dir=tmp_path, database_url=pg_url)
    with committed_job(pg_url) as (sessions, job):
        with sessions() as session:
            assert claim(session, settings, job.id) == 1
        lease = Lease(sessions, job.id, 1, lease_s=0.5)  # its renewals are done by hand here
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


def test_a_claim_beaten_between_its_read_and_its_write_takes_nothing(tmp_path: Path) -> None:
    """On SQLite (`make run`) the claim's SELECT locks nothing: a cancel committed right after
    it must make the claim's UPDATE match no row, and the claim return None."""
    url = f"sqlite:///{tmp_path / 'f.db'}"
    upgrade(url)
    settings = Settings(data_dir=tmp_path, database_url=url)
    sessions = get_sessionmaker(url)
    with sessions() as session:
        job = make_bare_job(session, make_dataset_row(session))
    beaten: list[str] = []

    def cancel_first(_conn, _cursor, statement, *_args) -> None:  # type: ignore[no-untyped-def]
        if "UPDATE tenant" in statement and not beaten:  # the claim read its job row
            with sessions() as user:
                beaten.append(cancel(user, LOCAL_TENANT, job.id).status)

    event.listen(get_engine(url), "before_cursor_execute", cancel_first)
    try:
        with sessions() as session:
            assert claim(session, settings, job.id) is None
    finally:
        event.remove(get_engine(url), "before_cursor_execute", cancel_first)
    assert beaten == ["cancelled"]
    with sessions() as session:
        statuses = session.scalars(
            select(JobEvent.data["status"].as_string()).where(JobEvent.job_id == job.id)
        )
        assert list(statuses) == ["cancelled"]  # no "running" after the terminal event


def test_two_claims_on_sqlite_cannot_both_take_a_tenants_last_slot(tmp_path: Path) -> None:
    """pysqlite begins a transaction only at a write, so the running-job count of each claim
    was read outside one: two claims both saw one job running under a cap of two, and both
    started theirs. The second now waits for the first and counts its job."""
    url = f"sqlite:///{tmp_path / 'f.db'}"
    upgrade(url)
    settings = Settings(data_dir=tmp_path, database_url=url, max_running_jobs_per_tenant=2)
    sessions = get_sessionmaker(url)
    with sessions() as session:
        dataset = make_dataset_row(session)
        make_bare_job(session, dataset, JobStatus.running)
        first, second = make_bare_job(session, dataset), make_bare_job(session, dataset)
    counted, resume = threading.Event(), threading.Event()

    def pause_first(_conn, _cursor, statement, *_args) -> None:  # type: ignore[no-untyped-def]
        if threading.current_thread().name == "first" and statement.startswith("UPDATE job"):
            counted.set()  # it counted one running job and is about to start its own
            resume.wait(10)

    outcome: dict[str, int | None] = {}

    def take(job_id: str) -> None:
        with sessions() as session:
            outcome[threading.current_thread().name] = claim(session, settings, job_id)

    event.listen(get_engine(url), "before_cursor_execute", pause_first)
    try:
        one = threading.Thread(target=take, args=(first.id,), name="first")
        one.start()
        assert counted.wait(10)
        two = threading.Thread(target=take, args=(second.id,), name="second")
        two.start()
        two.join(0.5)
        assert two.is_alive()  # waits for the first claim's transaction
        resume.set()
        one.join(10)
        two.join(10)
    finally:
        resume.set()
        event.remove(get_engine(url), "before_cursor_execute", pause_first)
    assert outcome == {"first": 1, "second": None}
    with sessions() as session:
        running = set(session.scalars(select(Job.id).where(Job.status == JobStatus.running)))
    assert first.id in running and second.id not in running


def _checkpoint(job_id: str, resume_key: str) -> Checkpoint:
    return Checkpoint(
        id=new_id("ckpt"),
        tenant_id=LOCAL_TENANT,
        job_id=job_id,
        epoch=1,
        metrics={},
        size_bytes=1,
        sha256="0" * 64,
        storage_key=f"jobs/{job_id}/checkpoints/epoch-0001-a1.safetensors",
        resume_key=resume_key,
    )


def test_a_release_after_a_cancel_ends_the_job_cancelled(pg_url: str, tmp_path: Path) -> None:
    """SIGTERM is checked before the cancel flag: an attempt released after the user's cancel
    ends the job as cancelled (no worker would ever claim it), with its optimiser state."""
    settings = Settings(data_dir=tmp_path, database_url=pg_url)
    storage = get_storage(settings)
    with committed_job(pg_url) as (sessions, job):
        with sessions() as session:
            assert claim(session, settings, job.id) == 1
            state = tmp_path / "state"
            state.write_bytes(b"optimiser state")
            key = f"jobs/{job.id}/state/epoch-0001-a1.safetensors"
            storage.put_file(state, key)
            session.add(_checkpoint(job.id, key))
            session.commit()
            assert cancel(session, LOCAL_TENANT, job.id).cancel_requested
        outcomes.release(settings, storage, Lease(sessions, job.id, 1, 60), "shutdown")
        with sessions() as session:
            ended = session.get(Job, job.id)
            assert ended is not None
            assert ended.status == "cancelled" and ended.finished_at is not None
            assert (
                session.scalar(select(Checkpoint.resume_key).where(Checkpoint.job_id == job.id))
                is None
            )
        assert not storage.exists(key)


def test_the_reaper_ends_a_queued_job_whose_cancel_was_asked(
    db_session: Session, tmp_path: Path
) -> None:
    """A cancel that commits between a release's two updates leaves the job queued and
    flagged: the reaper ends it instead of sending it to workers that never claim it."""
    settings = Settings(data_dir=tmp_path)
    job = make_bare_job(db_session, make_dataset_row(db_session))
    job.cancel_requested = True
    db_session.commit()
    report = reap(db_session, settings)
    assert job.id in report.cancelled and job.id not in report.resent
    db_session.refresh(job)
    assert job.status == "cancelled" and job.finished_at is not None


def test_a_cancel_of_a_queued_job_lets_its_optimiser_state_go(pg_url: str) -> None:
    """A job handed back after some epochs (a deploy, a crash) waits queued with its
    optimiser state named; cancelled there, it never resumes, so nothing may keep naming the
    state (the sweep of unnamed files frees it): it used to stay forever."""
    with committed_job(pg_url) as (sessions, job), sessions() as session:
        session.add(_checkpoint(job.id, f"jobs/{job.id}/state/epoch-0001-a1.safetensors"))
        session.commit()
        assert cancel(session, LOCAL_TENANT, job.id).status == JobStatus.cancelled
        stmt = select(Checkpoint.resume_key).where(Checkpoint.job_id == job.id)
        assert session.scalar(stmt) is None


def test_a_cancel_racing_a_requeue_cancels_the_job(pg_url: str) -> None:
    """The reaper requeues a running job whose lease lapsed while a cancel is under way: the
    cancel's 'running' update waits on the reaper's row lock and then matches nothing. It
    used to answer 409 'already queued', and the job resumed and ran to the end."""
    with committed_job(pg_url) as (sessions, job):
        with sessions() as session:
            session.execute(
                update(Job).where(Job.id == job.id).values(status=JobStatus.running, attempts=1)
            )
            session.commit()
        with ThreadPoolExecutor(1) as pool, sessions() as reaper:  # the lock goes first
            reaper.execute(select(Job.id).where(Job.id == job.id).with_for_update())

            def cancelled() -> str:
                with sessions() as session:
                    return str(cancel(session, LOCAL_TENANT, job.id).status)

            answer = pool.submit(cancelled)
            waiting = text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND wait_event_type = 'Lock' AND query LIKE 'UPDATE job SET cancel_requested%'"
            )

            def blocked() -> int:  # pg_stat_activity is read once per transaction: a new one
                with sessions() as probe:
                    return probe.scalar(waiting)

            wait_for(blocked, timeout=10, what="the cancel waiting on the reaper's lock")
            reaper.execute(update(Job).where(Job.id == job.id).values(status=JobStatus.queued))
            reaper.commit()
            assert answer.result(10) == "cancelled"


def test_an_attempt_whose_resume_state_is_gone_starts_afresh(pg_url: str, tmp_path: Path) -> None:
    """The last epoch's optimiser state is not in storage: the attempt trains from epoch 1,
    so the earlier epochs' rows and files go (its epoch 1 collided with theirs: the job
    failed on the database's unique key), and a warning says why."""
    settings = Settings(data_dir=tmp_path, database_url=pg_url)
    storage = get_storage(settings)
    with committed_job(pg_url) as (sessions, job):
        with sessions() as session:
            assert claim(session, settings, job.id) == 1
            weights = []
            for epoch in (1, 2):
                staged = tmp_path / f"{epoch}.safetensors"
                staged.write_bytes(b"weights")
                weights.append(f"jobs/{job.id}/checkpoints/epoch-000{epoch}-a1.safetensors")
                storage.put_file(staged, weights[-1])
                row = _checkpoint(job.id, f"jobs/{job.id}/state/epoch-000{epoch}-a1.safetensors")
                row.epoch, row.storage_key = epoch, weights[-1]
                row.resume_key = row.resume_key if epoch == 2 else None
                session.add(row)
            session.commit()
            assert runner._resume_state(session, storage, job.id) is None  # its file is gone
        runner._start_afresh(Lease(sessions, job.id, 1, 60), storage)
        with sessions() as session:
            assert session.scalar(select(Checkpoint.id).where(Checkpoint.job_id == job.id)) is None
            warned = session.scalars(
                select(JobEvent.data).where(JobEvent.job_id == job.id, JobEvent.type == "warning")
            ).all()
            assert [w["code"] for w in warned] == ["resume_state_missing"]
        assert not [key for key in weights if storage.exists(key)]
        runner._start_afresh(Lease(sessions, job.id, 1, 60), storage)  # nothing left: no-op
        with sessions() as session:
            stmt = select(JobEvent.id).where(JobEvent.job_id == job.id, JobEvent.type == "warning")
            assert len(session.scalars(stmt).all()) == 1
