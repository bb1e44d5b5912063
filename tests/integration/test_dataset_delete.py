"""A dataset deleted while a job is being created on it: never a job without its dataset."""

import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import delete, select, text
from sqlalchemy.orm import Session

from app.core.config import Settings
from app.core.db import get_sessionmaker
from app.core.errors import Conflict, Invalid, NotFound
from app.core.models import LOCAL_TENANT, Dataset, Job, JobStatus
from app.core.storage import get_storage
from app.datasets import service as datasets
from app.jobs import service as jobs
from app.jobs.schemas import JobCreate
from tests.support.factories import make_dataset_row, make_job_row
from tests.support.processes import wait_for


@pytest.fixture
def settings(tmp_path: Path, pg_url: str) -> Settings:
    return Settings(data_dir=tmp_path, database_url=pg_url)


def _dataset(settings: Settings) -> str:
    with get_sessionmaker(settings.database_url)() as session:
        dataset_id = make_dataset_row(session).id
        session.commit()
    return dataset_id


def _waiting_on_a_lock(session: Session) -> bool:
    waiting = session.scalar(
        text(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
    )
    session.rollback()  # a fresh snapshot of pg_stat_activity next time
    return bool(waiting)


def _race(url: str, hold: Callable[[Session], object], then: Callable[[Session], object]) -> dict:
    """`hold` in a transaction; `then` in another, which must wait for it; commit `hold`.
    What `then` returned or raised."""
    sessions = get_sessionmaker(url)
    outcome: dict = {}

    def run() -> None:
        with sessions() as session:
            try:
                outcome["value"] = then(session)
            except Exception as exc:
                outcome["error"] = exc

    with sessions() as holding:
        hold(holding)
        thread = threading.Thread(target=run)
        thread.start()
        with sessions() as observer:  # it waits for the held transaction's lock
            assert wait_for(lambda: _waiting_on_a_lock(observer), timeout=10)
        assert thread.is_alive()
        holding.commit()
        thread.join(10)
    return outcome


def test_a_delete_waits_for_a_job_being_created_and_then_refuses(settings: Settings) -> None:
    """The delete's check ran before the job committed: 204, and the new job's dataset_id
    was nulled by the foreign key (the worker then failed it, dataset_not_found)."""
    dataset_id, storage, jobs_made = _dataset(settings), get_storage(settings), []

    def create(session: Session) -> None:  # flushed, not committed
        jobs_made.append(make_job_row(session, dataset_id=dataset_id, status=JobStatus.queued))

    outcome = _race(
        settings.database_url,
        create,
        lambda session: datasets.delete(session, settings, storage, LOCAL_TENANT, dataset_id),
    )
    assert isinstance(outcome.get("error"), Conflict), outcome
    with get_sessionmaker(settings.database_url)() as session:
        job_id = jobs_made[0].id
        assert session.scalar(select(Job.dataset_id).where(Job.id == job_id)) == dataset_id


def _while_deleted(settings: Settings, then: Callable[[Session, str], object]) -> object:
    """What `then(session, dataset_id)` raised, run while another transaction deletes the
    dataset (and so waiting for it)."""
    dataset_id = _dataset(settings)
    outcome = _race(
        settings.database_url,
        lambda session: session.execute(delete(Dataset).where(Dataset.id == dataset_id)),
        lambda session: then(session, dataset_id),
    )
    return outcome.get("error", outcome)


def test_a_job_created_while_its_dataset_is_deleted_is_a_422(settings: Settings) -> None:
    """The other order: the job's insert waited for the delete, then failed its foreign key,
    which was a 500."""

    def create(session: Session, dataset_id: str) -> object:
        spec = JobCreate(dataset_id=dataset_id, weights=None, validation_split=0)
        return jobs.create(session, settings, LOCAL_TENANT, spec, None)

    error = _while_deleted(settings, create)
    assert isinstance(error, Invalid) and error.code == "dataset_not_found", error


def test_a_delete_that_lost_to_another_delete_is_a_404(settings: Settings) -> None:
    """Not the 409 'used by a queued or running job' of a dataset that is gone."""
    storage = get_storage(settings)
    error = _while_deleted(
        settings,
        lambda session, dataset_id: datasets.delete(
            session, settings, storage, LOCAL_TENANT, dataset_id
        ),
    )
    assert isinstance(error, NotFound) and error.code == "dataset_not_found", error


def test_a_delete_waits_for_a_retry_of_a_job_on_it_and_then_refuses(settings: Settings) -> None:
    """A retry only updates the job row, which took no lock the delete's check waits for:
    both succeeded, and the queued job failed later on its missing dataset."""
    dataset_id, storage = _dataset(settings), get_storage(settings)
    with get_sessionmaker(settings.database_url)() as session:
        job_id = make_job_row(session, dataset_id=dataset_id, status=JobStatus.failed).id
        session.commit()

    def retry_uncommitted(session: Session) -> None:
        commit, session.commit = session.commit, session.flush  # type: ignore[method-assign]
        try:
            jobs.retry(session, settings, LOCAL_TENANT, job_id)
        finally:
            session.commit = commit  # type: ignore[method-assign]

    outcome = _race(
        settings.database_url,
        retry_uncommitted,
        lambda session: datasets.delete(session, settings, storage, LOCAL_TENANT, dataset_id),
    )
    assert isinstance(outcome.get("error"), Conflict), outcome
    with get_sessionmaker(settings.database_url)() as session:
        job = session.get(Job, job_id)
        assert job is not None and (job.status, job.dataset_id) == (JobStatus.queued, dataset_id)
