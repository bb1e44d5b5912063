"""The claim: one winner per job, and a tenant never runs more than its cap of jobs."""

from pathlib import Path

from sqlalchemy.orm import Session

from app.core.config import Settings
from app.core.ids import new_id
from app.core.models import LOCAL_TENANT, Dataset, Job, JobStatus, Worker
from app.jobs.service import queue_info
from worker.runner import claim


def _dataset(session: Session) -> Dataset:
    row = Dataset(
        id=new_id("ds"),
        tenant_id=LOCAL_TENANT,
        name="d",
        num_images=2,
        classes=["a", "b"],
        class_counts={"a": 1, "b": 1},
        splits={"train": 2},
        size_bytes=1,
        sha256="0" * 64,
        warnings=[],
        report={},
        storage_key="datasets/x",
    )
    session.add(row)
    session.flush()
    return row


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
    job = _job(db_session, _dataset(db_session))
    assert claim(db_session, settings, job.id) == 1
    assert claim(db_session, settings, job.id) is None  # already running: nobody else wins
    db_session.refresh(job)
    assert job.status == "running" and job.attempts == 1 and job.lease_expires_at is not None


def test_a_tenant_at_its_cap_waits_and_is_told_why(db_session: Session, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, max_running_jobs_per_tenant=1)
    dataset = _dataset(db_session)
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
