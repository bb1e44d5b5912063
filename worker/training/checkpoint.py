"""Weights files: safetensors + string metadata, written atomically."""

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from worker.training.spec import TrainSpec


def weights_metadata(spec: TrainSpec, *, job_id: str, epoch: int) -> dict[str, str]:
    """The contract's metadata: everything a user needs to run the file with plain torchvision."""
    return {
        "backbone": spec.backbone,
        "classes": json.dumps(list(spec.classes)),
        "image_size": str(spec.image_size),
        "mean": json.dumps(list(spec.mean)),
        "std": json.dumps(list(spec.std)),
        "job_id": job_id,
        "epoch": str(epoch),
    }


def cpu_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU copies (channels_last tensors are not 'contiguous')."""
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state.items()}


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write through a temp file in the same folder, fsync, then rename over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_weights(
    path: Path, state: Mapping[str, torch.Tensor], metadata: dict[str, str], *, copied: bool = False
) -> str:
    """Save a state dict as a weights file of the contract; return its SHA-256.

    Written straight to the file, then hashed as it is read back from the page cache:
    safetensors' in-memory `save` copies every tensor twice more on the way to a bytes
    object. For ResNet18 that path took ~95 ms of CPU and this one ~50 ms (same bytes), time
    the checkpoint thread takes from the training threads every epoch on a small CPU.
    (`copied`: `state` is already a CPU snapshot.)
    """
    tensors = dict(state) if copied else cpu_state_dict(state)
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def read_metadata(path: Path) -> dict[str, str]:
    """The string metadata of a weights file, without loading its tensors."""
    with safe_open(str(path), framework="pt") as fh:
        return dict(fh.metadata() or {})
