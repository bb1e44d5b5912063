"""Model exports: ONNX (torch.onnx, dynamo) and TorchScript, each checked at creation.

Exports are made by a `cpu`-queue worker task as soon as a model exists, or by the API on a
request that comes first; either way they are written in staging and published whole under
a key named by their content, and the first one recorded on the model is kept
(`ensure_export`). Before an export is kept, its
outputs on sample inputs are compared with the torch model's (onnxruntime for ONNX,
torch.jit.load for TorchScript); the largest difference is recorded on the model and an
export that disagrees beyond the tolerance is refused. Labels and preprocessing travel
inside the file (ONNX metadata, TorchScript extra file `labels.json`).
"""

import contextlib
import json
import logging
import threading
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import update
from sqlalchemy.orm import Session

from app.core.errors import AppError, Invalid
from app.core.hostcache import STALE_SCRATCH_S
from app.core.models import Model, utcnow
from app.core.storage import Storage, discard, sha256_file

log = logging.getLogger(__name__)
FORMATS = {"onnx": "onnx", "torchscript": "pt"}
TOLERANCE = 1e-3
_lock = threading.Lock()  # exports are CPU-heavy: one at a time per process
# torch 2.9+ deprecates TorchScript in favour of torch.export, and says so on every process's
# first trace, save and load. The format is served on purpose (libtorch loads it without
# Python; README, Exports): the notice is for this code's maintainers, not in operators' logs.
warnings.filterwarnings("ignore", r"`torch\.jit\.\w+` is deprecated", FutureWarning)


class ExportFailed(AppError):
    status = 500
    title = "Export failed"
    code = "export_failed"


def describe(model: Model, weights: Path) -> dict[str, Any]:
    """What a user needs besides the network: labels and preprocessing.

    The mean and std are the weights file's own (GoogLeNet and Inception v3 started from
    torchvision's weights train on [-1, 1] pixels, not ImageNet's normalisation)."""
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as fh:
        meta = fh.metadata() or {}
    return {
        "classes": model.classes,
        "image_size": model.image_size,
        "backbone": model.backbone,
        "preprocessing": "RGB, resize to image_size², scale to [0, 1], normalise with mean/std",
        "mean": json.loads(meta.get("mean", "[0.485, 0.456, 0.406]")),
        "std": json.loads(meta.get("std", "[0.229, 0.224, 0.225]")),
    }


def _torch_model(path: Path, model: Model):  # type: ignore[no-untyped-def]
    from safetensors.torch import load_file
    from torchvision import models

    net = models.get_model(model.backbone, weights=None, num_classes=len(model.classes))
    net.load_state_dict(load_file(str(path)), strict=True)
    return net.eval()


def _write_onnx(net: Any, sample: Any, out: Path, info: dict[str, Any]) -> Any:
    import onnxruntime
    import torch

    program = torch.onnx.export(
        net,
        (sample,),
        dynamo=True,
        input_names=["image"],
        output_names=["logits"],
        dynamic_shapes=({0: torch.export.Dim("batch")},),
        verbose=False,  # else its progress goes to stdout: ~20 WARNING lines in a worker's log
    )
    program.model.metadata_props.update({"labels.json": json.dumps(info)})
    program.save(str(out))
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"image": x.numpy()})[0]


def _write_torchscript(net: Any, sample: Any, out: Path, info: dict[str, Any]) -> Any:
    import torch

    traced = torch.jit.trace(net, sample)
    torch.jit.save(traced, str(out), _extra_files={"labels.json": json.dumps(info)})
    loaded = torch.jit.load(str(out))
    return lambda x: loaded(x).detach().numpy()


def ensure_export(session: Session, model: Model, storage: Storage, fmt: str) -> dict[str, Any]:
    """The checked export of `model` in `fmt`, made now if missing, recorded on the row.

    The first record stays. Two makers may build at once (the `cpu` worker and the API, in
    different processes), and a TorchScript file differs from save to save: each build is
    stored under its own content-named key, and a maker that finds a record committed
    meanwhile serves that one and deletes its own file. So a record's sha256 always matches
    the bytes under its key.
    """
    if fmt not in FORMATS:
        raise Invalid(
            f"unknown format {fmt!r}; one of safetensors, onnx, torchscript", code="format_unknown"
        )
    # End the read that loaded `model` (expire_on_commit=False keeps it loaded): a build
    # takes seconds, more behind another one, and must not keep a pooled connection idle
    # in a transaction meanwhile.
    session.commit()
    if (recorded := stored_record(model, storage, fmt)) is not None:
        return recorded  # made already: no waiting behind another model's build
    with _lock:
        session.refresh(model)  # a build this process finished while this request waited
        session.commit()
        if (recorded := stored_record(model, storage, fmt)) is not None:
            return recorded
        _drop_unrecorded(model, storage, fmt)
        record = _build(model, storage, fmt)
        try:
            recorded = _record(session, model, storage, fmt, record)
        except BaseException:
            # Not recorded (the database went away): nothing would ever name or free the
            # file. Had the commit landed with only its answer lost, the record names a
            # file no longer stored, which `stored_record` takes as missing: built again.
            discard(storage, record["storage_key"])
            with contextlib.suppress(Exception):  # the connection may be gone
                session.rollback()
            raise
    if recorded["storage_key"] != record["storage_key"]:
        discard(storage, record["storage_key"])
    return recorded


def _drop_unrecorded(model: Model, storage: Storage, fmt: str) -> None:
    """Delete stored `fmt` exports of `model` that no record names, untouched for an hour.

    A maker killed between storing its file and recording it leaves one; the next build
    of that format (the cpu worker's redelivered task, or a request) is the first to know.
    One another process is building right now is younger, and stays. Housekeeping: a
    store that does not answer leaves them for the next build, and this one goes on.
    """
    folder = f"models/{model.id}"
    named = {model.storage_key, *(r["storage_key"] for r in model.exports.values())}
    since = time.time() - STALE_SCRATCH_S
    try:
        for name in storage.children(folder):
            key = f"{folder}/{name}"
            if (
                name.startswith("model-")
                and name.endswith(f".{FORMATS[fmt]}")
                and key not in named
                and not storage.changed_since(key, since)
            ):
                discard(storage, key)
    except Exception:
        log.warning("could not look for unrecorded exports of %s", model.id, exc_info=True)


def _record(
    session: Session, model: Model, storage: Storage, fmt: str, record: dict[str, Any]
) -> dict[str, Any]:
    """Record `record` on the model unless another maker recorded one first; the one kept."""
    # Lock the row, then read it again: another process may have recorded this format
    # meanwhile, or the other one. A write takes the lock on SQLite too (pysqlite begins
    # a transaction only at a write; FOR UPDATE locks nothing there).
    session.execute(update(Model).where(Model.id == model.id).values(exports=Model.exports))
    session.refresh(model)
    if (recorded := stored_record(model, storage, fmt)) is not None:
        session.commit()
        return recorded
    model.exports = {**model.exports, fmt: record}
    session.commit()
    return record


def stored_record(model: Model, storage: Storage, fmt: str) -> dict[str, Any] | None:
    """The export recorded on the row, if its file is stored."""
    record = model.exports.get(fmt)
    if record is not None and storage.exists(record["storage_key"]):
        return record
    return None


def _build(model: Model, storage: Storage, fmt: str) -> dict[str, Any]:
    import torch

    weights = storage.local(model.storage_key)
    net = _torch_model(weights, model)
    out = storage.staging() / f"{model.id}-{uuid.uuid4().hex}.{FORMATS[fmt]}"
    size = model.image_size
    sample = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    writer = _write_onnx if fmt == "onnx" else _write_torchscript
    try:
        try:
            run = writer(net, sample, out, describe(model, weights))
            probe = torch.rand(3, 3, size, size, generator=torch.Generator().manual_seed(1))
            with torch.inference_mode():
                expected = net(probe).numpy()
            diff = float(np.abs(run(probe) - expected).max())
        except Exception as exc:
            raise ExportFailed(f"{fmt} export failed: {type(exc).__name__}: {exc}"[:500]) from exc
        if diff > TOLERANCE:
            raise ExportFailed(f"{fmt} export differs from the torch model by {diff:.2e}")
        sha256 = sha256_file(out)
        record = {
            "storage_key": f"models/{model.id}/model-{sha256[:16]}.{FORMATS[fmt]}",
            "sha256": sha256,
            "size_bytes": out.stat().st_size,
            "max_abs_diff": diff,
            "tolerance": TOLERANCE,
            "checked_at": utcnow().isoformat(),
        }
        storage.put_file(out, record["storage_key"])
    finally:
        out.unlink(missing_ok=True)
    return record
