"""Run one job: claim it, build its TrainSpec and data, fit, and record the outcome."""

import json
import logging
import os
import socket
from pathlib import Path
from typing import Any

import torch
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from app.core import registry
from app.core.config import Settings
from app.core.db import get_sessionmaker
from app.core.events import add_event
from app.core.ids import new_id
from app.core.models import Checkpoint, Dataset, Job, JobStatus, Model, utcnow
from app.core.storage import LocalStorage, get_storage
from worker.reporting import DatabaseReporter, clean
from worker.training.data import ImageSet, TrainData, cached_images, stratified_split
from worker.training.loop import FitResult, TrainingCancelled, fit
from worker.training.spec import InitWeights, TrainSpec

log = logging.getLogger(__name__)


class JobFailure(Exception):
    """A failure with a stable code that the user can act on."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def claim(session: Session, job_id: str) -> bool:
    """queued → running in one conditional UPDATE: at most one worker wins."""
    won = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.queued, Job.cancel_requested.is_(False))
        .values(
            status=JobStatus.running,
            attempts=Job.attempts + 1,
            started_at=utcnow(),
            worker_id=f"{socket.gethostname()}:{os.getpid()}",
        )
    ).rowcount
    if won:
        add_event(session, job_id, "status", "job running", {"status": "running"})
    session.commit()
    return bool(won)


def _init_weights(
    session: Session, storage: LocalStorage, spec: dict[str, Any], classes: list[str]
) -> InitWeights:
    weights = spec["weights"]
    if weights is None:
        return InitWeights()
    if isinstance(weights, dict):
        model = session.get(Model, weights["model_id"])
        if model is None:
            raise JobFailure("model_not_found", f"model {weights['model_id']} no longer exists")
        return InitWeights(
            source="file",
            path=str(storage.path(model.storage_key)),
            keep_head=model.classes == classes,
        )
    resolved = registry.resolve_weights(spec["backbone"], weights)
    if not resolved.present:
        raise JobFailure(
            "weights_unavailable", f"{resolved.name} needs {resolved.path} ({resolved.url})"
        )
    return InitWeights(source="torchvision", name=resolved.name)


def build_spec(
    session: Session, settings: Settings, storage: LocalStorage, job: Job, dataset: Dataset
) -> TrainSpec:
    """The frozen TrainSpec of a job, its weights resolved to a file that exists."""
    s = job.spec
    fields = (
        "strategy",
        "trainable_layers",
        "epochs",
        "batch_size",
        "learning_rate",
        "optimizer",
        "momentum",
        "weight_decay",
        "lr_schedule",
        "warmup_epochs",
        "image_size",
        "augment",
        "label_smoothing",
        "early_stopping_patience",
        "mixed_precision",
        "seed",
    )
    return TrainSpec(
        backbone=s["backbone"],
        classes=tuple(dataset.classes),
        init=_init_weights(session, storage, s, dataset.classes),
        device=settings.device,
        **{name: s[name] for name in fields},
    )


def load_data(
    settings: Settings,
    storage: LocalStorage,
    dataset: Dataset,
    spec: TrainSpec,
    validation_split: float,
) -> TrainData:
    """Decode the dataset once (cached per dataset and size) and split it."""
    root = storage.path(dataset.storage_key)
    manifest = json.loads((root / "manifest.json").read_text())
    entries = manifest["entries"]
    index = {name: i for i, name in enumerate(dataset.classes)}
    cache = settings.work_dir / "cache" / dataset.id / f"{spec.image_size}.safetensors"
    images = cached_images(
        cache, [root / e["file"] for e in entries], spec.image_size, settings.decode_threads
    )
    labels = torch.tensor([index[e["label"]] for e in entries], dtype=torch.long)
    full = ImageSet(images, labels)
    split = torch.tensor([{"train": 0, "val": 1, "test": 2}[e["split"]] for e in entries])
    pick = lambda k: full.subset(torch.nonzero(split == k).flatten())  # noqa: E731
    train, val, test = pick(0), pick(1), pick(2)
    if len(val) == 0 and validation_split > 0:
        train_idx, val_idx = stratified_split(train.labels, validation_split, spec.seed)
        train, val = train.subset(train_idx), train.subset(val_idx)
    return TrainData(train=train, val=val if len(val) else None, test=test if len(test) else None)


def _finish(
    sessions: sessionmaker[Session], job_id: str, status: JobStatus, message: str, **values: Any
) -> None:
    with sessions() as session:
        done = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.running)
            .values(status=status, finished_at=utcnow(), **values)
        ).rowcount
        if done:
            data = {"status": str(status)}
            if values.get("error"):
                add_event(session, job_id, "error", values["error"]["message"], values["error"])
            add_event(session, job_id, "status", message, data)
        session.commit()


def _record_success(
    sessions: sessionmaker[Session],
    job: Job,
    spec: TrainSpec,
    result: FitResult,
    reporter: DatabaseReporter,
) -> None:
    with sessions() as session:
        best = session.get(Checkpoint, reporter.checkpoint_ids[result.best_epoch])
        assert best is not None
        metrics = clean(
            {
                **result.best_metrics,
                **(result.test_metrics or {}),
                "best_epoch": result.best_epoch,
                "stopped_early": result.stopped_early,
            }
        )
        model = Model(
            id=new_id("mdl"),
            job_id=job.id,
            checkpoint_id=best.id,
            backbone=spec.backbone,
            classes=list(spec.classes),
            image_size=spec.image_size,
            metrics=metrics,
            size_bytes=best.size_bytes,
            sha256=best.sha256,
            storage_key=best.storage_key,
        )
        session.add(model)
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
        done = session.execute(
            update(Job)
            .where(Job.id == job.id, Job.status == JobStatus.running)
            .values(
                status=JobStatus.succeeded,
                finished_at=utcnow(),
                model_id=model.id,
                metrics=summary,
                progress={
                    "epoch": last["epoch"],
                    "epochs": spec.epochs,
                    "step": 0,
                    "steps": 0,
                    "fraction": 1.0,
                },
            )
        ).rowcount
        if not done:
            session.rollback()
            return
        add_event(
            session,
            job.id,
            "status",
            f"job succeeded; model {model.id} from epoch {result.best_epoch}",
            {"status": "succeeded", "model_id": model.id, "best_epoch": result.best_epoch},
        )
        session.commit()


def run_job(settings: Settings, job_id: str) -> None:
    """Train `job_id` if this worker can claim it; always leave the job in a truthful state."""
    sessions = get_sessionmaker(settings.database_url)
    storage = get_storage(settings.storage_url)
    with sessions() as session:
        if not claim(session, job_id):
            log.info("job %s is not queued (or cancelled); nothing to do", job_id)
            return
        job = session.get(Job, job_id)
        assert job is not None
        try:
            dataset = session.get(Dataset, job.dataset_id) if job.dataset_id else None
            if dataset is None:
                raise JobFailure("dataset_not_found", "the job's dataset was deleted")
            spec = build_spec(session, settings, storage, job, dataset)
        except JobFailure as exc:
            _finish(
                sessions,
                job_id,
                JobStatus.failed,
                "job failed",
                error={"code": exc.code, "message": exc.message},
            )
            return
    reporter = DatabaseReporter(
        sessions,
        storage,
        job_id,
        spec,
        settings.progress_interval_s,
        settings.cancel_poll_interval_s,
    )
    try:
        data = load_data(settings, storage, dataset, spec, job.spec["validation_split"])
        result = fit(spec, data, reporter)
    except TrainingCancelled:
        _finish(sessions, job_id, JobStatus.cancelled, "job cancelled while running")
        return
    except Exception as exc:
        log.exception("job %s failed", job_id)
        error = {"code": "training_error", "message": f"{type(exc).__name__}: {exc}"[:1000]}
        _finish(sessions, job_id, JobStatus.failed, "job failed", error=error)
        return
    _record_success(sessions, job, spec, result, reporter)


def cache_dir(settings: Settings) -> Path:
    return settings.work_dir / "cache"
