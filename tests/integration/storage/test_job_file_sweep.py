"""Stored checkpoint files of ended jobs that no row names are swept, each job once."""

from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete, update
from sqlalchemy.orm import Session

from app.core.config import Settings
from app.core.db import session_scope
from app.core.ids import new_id
from app.core.models import Checkpoint, Job, JobStatus, utcnow
from app.core.storage import LocalStorage, Storage, get_storage
from app.jobs import service
from app.main import create_app
from tests.integration.storage.conftest import S3
from tests.support.factories import make_dataset_row, make_job_row
from tests.support.files import age
from tests.support.processes import wait_for

pytestmark = pytest.mark.integration

HOUR = 3600


def store(storage: Storage, tmp_path: Path, key: str, age_s: float = 0) -> str:
    """A small file stored at `key`, made to look `age_s` old where the store is local."""
    src = tmp_path / "src" / key.replace("/", "_")
    src.parent.mkdir(parents=True, exist_ok=True)
    src.write_text(key)
    storage.put_file(src, key)
    if age_s and isinstance(storage, LocalStorage):
        age(storage.path(key), age_s)
    return key


def ended(session: Session, ago_s: float = 2 * HOUR, **values: object) -> Job:
    """A job that ended `ago_s` ago, the only one the sweep finds due (the rest of this
    test run's jobs are marked swept inside the test's rolled-back transaction)."""
    session.execute(update(Job).values(files_swept_at=utcnow()))
    values.setdefault("finished_at", utcnow() - timedelta(seconds=ago_s))
    return make_job_row(session, **values)


def checkpoint(
    session: Session, job: Job, epoch: int, key: str, resume_key: str | None = None
) -> None:
    session.add(
        Checkpoint(
            id=new_id("ckpt"),
            tenant_id=job.tenant_id,
            job_id=job.id,
            epoch=epoch,
            metrics={},
            size_bytes=1,
            sha256="0" * 64,
            storage_key=key,
            resume_key=resume_key,
        )
    )
    session.commit()


def test_unnamed_files_of_an_ended_job_go_once(db_session: Session, tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "store")
    job = ended(db_session)
    old = 2 * HOUR
    prefix = f"jobs/{job.id}"
    kept = [
        store(storage, tmp_path, f"{prefix}/checkpoints/epoch-0001-a1.safetensors", old),
        store(storage, tmp_path, f"{prefix}/state/epoch-0001-a1.safetensors", old),
        store(storage, tmp_path, f"{prefix}/tensorboard/events.out", old),  # not a row's
        store(storage, tmp_path, f"{prefix}/checkpoints/epoch-0003-a3.safetensors"),  # fresh
    ]
    checkpoint(db_session, job, 1, kept[0], resume_key=kept[1])
    # An attempt stopped between storing and committing; a delete the store did not answer.
    orphans = [
        store(storage, tmp_path, f"{prefix}/checkpoints/epoch-0002-a1.safetensors", old),
        store(storage, tmp_path, f"{prefix}/state/epoch-0000-a1.safetensors", old),
    ]

    assert service.sweep_files(db_session, storage) == orphans
    assert not any(storage.exists(key) for key in orphans)
    assert all(storage.exists(key) for key in kept)
    db_session.refresh(job)
    assert job.files_swept_at is not None

    late = store(storage, tmp_path, f"{prefix}/checkpoints/epoch-0009-a9.safetensors", old)
    assert service.sweep_files(db_session, storage) == [], "each job is checked once"
    assert storage.exists(late)


def test_jobs_not_ended_an_hour_ago_are_left_alone(db_session: Session, tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "store")
    running = ended(db_session, status=JobStatus.running, finished_at=None)
    recent = make_job_row(db_session, status=JobStatus.failed)  # ended just now
    keys = [
        store(storage, tmp_path, f"jobs/{job.id}/checkpoints/epoch-0001-a1.safetensors", 2 * HOUR)
        for job in (running, recent)
    ]
    assert service.sweep_files(db_session, storage) == []
    assert all(storage.exists(key) for key in keys)
    for job in (running, recent):
        db_session.refresh(job)
        assert job.files_swept_at is None


def test_a_retried_job_is_due_again(db_session: Session, tmp_path: Path, pg_url: str) -> None:
    storage = LocalStorage(tmp_path / "store")
    dataset = make_dataset_row(db_session)  # a job whose dataset is gone cannot be retried
    job = ended(db_session, status=JobStatus.failed, dataset_id=dataset.id)
    service.sweep_files(db_session, storage)
    settings = Settings(data_dir=tmp_path, database_url=pg_url)  # sent to the embedded broker
    service.retry(db_session, settings, job.tenant_id, job.id)
    assert job.status == JobStatus.queued and job.files_swept_at is None


def test_the_sweep_reads_s3(
    db_session: Session, tmp_path: Path, s3: S3, request: pytest.FixtureRequest
) -> None:
    url = f"s3://{s3.bucket}/{request.node.name}"
    storage = get_storage(Settings(data_dir=tmp_path, storage_url=url, storage_options=s3.options))
    job = ended(db_session)
    named = store(storage, tmp_path, f"jobs/{job.id}/checkpoints/epoch-0001-a1.safetensors")
    checkpoint(db_session, job, 1, named)
    orphan = store(storage, tmp_path, f"jobs/{job.id}/checkpoints/epoch-0002-a1.safetensors")

    assert service.sweep_files(db_session, storage) == [], "written just now: maybe in flight"
    db_session.execute(update(Job).where(Job.id == job.id).values(files_swept_at=None))
    assert service.sweep_files(db_session, storage, older_than_s=-60) == [orphan]
    assert s3.keys(f"{request.node.name}/jobs/") == [f"{request.node.name}/{named}"]


def test_the_api_sweeps_job_files_when_it_starts(tmp_path: Path, pg_url: str) -> None:
    settings = Settings(data_dir=tmp_path, database_url=pg_url)
    storage = get_storage(settings)
    with session_scope(pg_url) as session:  # committed: the API's own sessions must see it
        job = make_job_row(session, finished_at=utcnow() - timedelta(hours=2))
        session.commit()
    key = f"jobs/{job.id}/checkpoints/epoch-0001-a1.safetensors"
    orphan = store(storage, tmp_path, key, 2 * HOUR)
    try:
        with TestClient(create_app(settings)):
            wait_for(lambda: not storage.exists(orphan), timeout=30, what="the start-up sweep")
    finally:  # other tests list this database's jobs
        with session_scope(pg_url) as session:
            session.execute(delete(Job).where(Job.id == job.id))
            session.commit()
