"""Rows and files as the worker would have written them, for API tests without training."""

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import delete
from sqlalchemy.orm import Session, sessionmaker
from torchvision import models

from app.core.db import get_sessionmaker
from app.core.ids import new_id
from app.core.models import (
    LOCAL_TENANT,
    Checkpoint,
    Dataset,
    Job,
    JobEvent,
    JobStatus,
    Model,
    utcnow,
)
from app.core.storage import Storage, sha256_file
from app.jobs.schemas import JobCreate
from worker.training.checkpoint import save_weights, weights_metadata
from worker.training.spec import TrainSpec


def make_dataset_row(session: Session, tenant: str = LOCAL_TENANT) -> Dataset:
    """A dataset row of two classes, flushed; its files are not needed by the caller."""
    row = Dataset(
        id=new_id("ds"),
        tenant_id=tenant,
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


def make_job_row(session: Session, tenant: str = LOCAL_TENANT, **values: object) -> Job:
    """A job row that succeeded just now, flushed; `values` replace any of its columns.

    Its spec is as the API records one, so the row reads back through the API."""
    dataset_id = values.get("dataset_id") or new_id("ds")
    job = Job(
        id=new_id("job"),
        tenant_id=tenant,
        status=JobStatus.succeeded,
        spec=JobCreate(dataset_id=dataset_id).model_dump(mode="json"),
        progress={},
        metrics={},
        attempts=1,
        started_at=utcnow(),
        finished_at=utcnow(),
    )
    for name, value in values.items():
        setattr(job, name, value)
    session.add(job)
    session.flush()
    return job


def make_model(
    session: Session,
    storage: Storage,
    dataset: dict,
    backbone: str = "resnet18",
    image_size: int = 16,
    tenant: str = LOCAL_TENANT,
) -> Model:
    """A succeeded job with one checkpoint and its model (random weights, real file)."""
    spec = TrainSpec(backbone=backbone, classes=tuple(dataset["classes"]), image_size=image_size)
    job = make_job_row(session, tenant, dataset_id=dataset["id"])
    job.spec = {**job.spec, "backbone": backbone}
    key = f"jobs/{job.id}/checkpoints/epoch-0001.safetensors"
    net = models.get_model(backbone, weights=None, num_classes=spec.num_classes)
    staged = storage.staging() / f"{job.id}.safetensors"
    save_weights(staged, net.state_dict(), weights_metadata(spec, job_id=job.id, epoch=1))
    storage.put_file(staged, key)
    path = storage.local(key)
    ckpt = Checkpoint(
        id=new_id("ckpt"),
        tenant_id=tenant,
        job_id=job.id,
        epoch=1,
        metrics={"val_accuracy": 0.5},
        size_bytes=path.stat().st_size,
        sha256=sha256_file(path),
        storage_key=key,
    )
    model = Model(
        id=new_id("mdl"),
        tenant_id=tenant,
        job_id=job.id,
        checkpoint_id=ckpt.id,
        backbone=backbone,
        classes=list(spec.classes),
        image_size=image_size,
        metrics={"val_accuracy": 0.5},
        size_bytes=ckpt.size_bytes,
        sha256=ckpt.sha256,
        storage_key=key,
    )
    job.model_id = model.id
    session.add(ckpt)
    session.flush()
    session.add(model)
    session.commit()
    return model


def make_bare_job(session: Session, dataset: Dataset, status: JobStatus = JobStatus.queued) -> Job:
    """A bare job row of `dataset` (as claim and the reaper see one), committed."""
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


@contextmanager
def committed_job(url: str) -> Iterator[tuple[sessionmaker[Session], Job]]:
    """A queued job committed for real (other sessions see it), removed afterwards with its
    events and checkpoint rows. For code that opens its own sessions (workers, leases)."""
    sessions = get_sessionmaker(url)
    with sessions() as session:
        job = make_bare_job(session, make_dataset_row(session))
    try:
        yield sessions, job
    finally:
        with sessions() as session:
            for table in (JobEvent, Model, Checkpoint):
                session.execute(delete(table).where(table.job_id == job.id))
            session.execute(delete(Job).where(Job.id == job.id))
            session.execute(delete(Dataset).where(Dataset.id == job.dataset_id))
            session.commit()
