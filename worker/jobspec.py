"""From a job row to what the training core takes: a TrainSpec and decoded TrainData."""

import contextlib
import json
from collections.abc import Callable
from typing import Any

import torch
from sqlalchemy.orm import Session

from app.core import registry
from app.core.config import Settings
from app.core.hostcache import decoded_entry
from app.core.models import Dataset, Job, Model
from app.core.storage import Storage, host_cache, sha256_file
from worker.lease import AttemptInterrupted
from worker.training.backbones import input_normalisation
from worker.training.data import (
    ImageSet,
    TrainData,
    cache_file,
    cached_images,
    open_cached,
    stratified_split,
)
from worker.training.loop import TrainingCancelled
from worker.training.spec import InitWeights, TrainSpec

SPLITS = {"train": 0, "val": 1, "test": 2}
SPEC_FIELDS = (
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
    "compile",
)


class JobFailure(Exception):
    """A failure with a stable code that the user can act on."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def _init_weights(
    session: Session,
    storage: Storage,
    spec: dict[str, Any],
    classes: list[str],
    holds: contextlib.ExitStack,
) -> InitWeights:
    weights = spec["weights"]
    if weights is None:
        return InitWeights()
    if isinstance(weights, dict):
        model = session.get(Model, weights["model_id"])
        if model is None:
            raise JobFailure("model_not_found", f"model {weights['model_id']} no longer exists")
        path = holds.enter_context(storage.hold(model.storage_key))  # fit() reads it later
        if sha256_file(path) != model.sha256:  # only files this service wrote, unaltered
            raise JobFailure("weights_corrupt", f"the weights file of model {model.id} was altered")
        return InitWeights(source="file", path=str(path), keep_head=model.classes == classes)
    resolved = registry.resolve_weights(spec["backbone"], weights)
    return InitWeights(source="torchvision", name=resolved.name)  # see fetch_weights


def fetch_weights(settings: Settings, spec: TrainSpec, check: Callable[[], None]) -> None:
    """Download the torchvision weights file the job starts from, if it is not cached yet
    (`FINETUNE_WEIGHTS_DOWNLOAD`); `check` may stop the download (cancel, shutdown)."""
    if spec.init.source != "torchvision" or spec.init.name is None:
        return
    resolved = registry.resolve_weights(spec.backbone, spec.init.name)
    if resolved.present:
        return
    if not settings.weights_download:
        raise JobFailure(
            "weights_unavailable", f"{resolved.name} needs {resolved.path} ({resolved.url})"
        )
    try:
        registry.download(resolved, check)
    except (TrainingCancelled, AttemptInterrupted):
        raise
    except Exception as exc:  # no route, an HTTP error, a file that fails its hash
        why = f"{resolved.name}: downloading {resolved.url} failed: {type(exc).__name__}: {exc}"
        raise JobFailure("weights_unavailable", why[:500]) from None


def build_spec(
    session: Session,
    settings: Settings,
    storage: Storage,
    job: Job,
    dataset: Dataset,
    holds: contextlib.ExitStack,
) -> TrainSpec:
    """The frozen TrainSpec of a job, its weights resolved to a file that exists.

    A weights file from the host cache is held in `holds` (the caller's: until training ends).
    """
    init = _init_weights(session, storage, job.spec, dataset.classes, holds)
    mean, std = input_normalisation(job.spec["backbone"], init)
    return TrainSpec(
        backbone=job.spec["backbone"],
        classes=tuple(dataset.classes),
        init=init,
        device=settings.device,
        mean=mean,
        std=std,
        **{name: job.spec[name] for name in SPEC_FIELDS if name in job.spec},
    )


def load_data(
    settings: Settings,
    storage: Storage,
    dataset: Dataset,
    spec: TrainSpec,
    validation_split: float,
    *,
    check: Callable[[], None] = lambda: None,
    decoding: Callable[[int], None] = lambda count: None,
) -> TrainData:
    """Decode the dataset once (cached per dataset and image size) and split it.

    The decoded images are an entry of the host's cache, held while they are opened or
    made. The dataset's files are fetched and held only to decode them: once decoded, a
    job reads just the manifest, so a remote dataset's copy can leave the cache (or never
    come back into it) while its decoded images stay.

    When the images must be decoded, `decoding(count)` is called first, then `check` after
    every file fetched from a remote store and every image decoded: it may raise to stop
    (cancel, shutdown), leaving no partial copy or cache file.
    """
    cache = host_cache(settings)
    base = cache.path(decoded_entry(dataset.id, spec.image_size))
    decoded = cache_file(base)
    with cache.use(decoded.name):
        with storage.hold(f"{dataset.storage_key}/manifest.json") as manifest:
            entries = json.loads(manifest.read_text())["entries"]
        images = open_cached(base, len(entries), spec.image_size)
        if images is None:
            decoding(len(entries))  # before a remote store's fetch, which takes minutes too
            with storage.hold(dataset.storage_key, check) as root:
                paths = [root / e["file"] for e in entries]
                images = cached_images(base, paths, spec.image_size, settings.decode_threads, check)
            cache.trim()  # what this job holds (its decoded images) stays
    index = {name: i for i, name in enumerate(dataset.classes)}
    full = ImageSet(images, torch.tensor([index[e["label"]] for e in entries], dtype=torch.long))
    split = torch.tensor([SPLITS[e["split"]] for e in entries])
    train, val, test = (full.subset(torch.nonzero(split == k).flatten()) for k in range(3))
    if len(val) == 0 and validation_split > 0:
        train_idx, val_idx = stratified_split(train.set_labels(), validation_split, spec.seed)
        train, val = train.subset(train_idx), train.subset(val_idx)
    return TrainData(train=train, val=val if len(val) else None, test=test if len(test) else None)
