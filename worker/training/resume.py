"""Resumable training state: optimiser, schedule, scaler, RNGs and history after an epoch.

Stored as safetensors (tensors) + JSON metadata, never pickled. The model weights are not
repeated here: they are the epoch's checkpoint file, and the best epoch's checkpoint holds
the best weights.
"""

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from worker.training.checkpoint import atomic_write, read_metadata
from worker.training.spec import TrainSpec
from worker.training.trainer import Trainer


@dataclass
class ResumeState:
    """Everything fit() needs to continue after `epoch` exactly as if never stopped."""

    epoch: int
    history: list[dict[str, Any]]
    best_epoch: int
    model: dict[str, torch.Tensor]
    best_model: dict[str, torch.Tensor]
    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any]
    # The input normalisation the run trained with, from its epoch's checkpoint file.
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None


def as_trained(spec: TrainSpec, state: "ResumeState | None") -> TrainSpec:
    """`spec` with the normalisation of the epochs `state` continues, when it records one.

    A worker of another version may pick a different normalisation for the same job (since
    2026-12-04 GoogLeNet's and Inception v3's torchvision weights take mean and std 0.5):
    the epochs left must see inputs as the first ones did, and the model must keep them.
    """
    if state is None or state.mean is None or state.std is None:
        return spec
    return replace(spec, mean=tuple(state.mean), std=tuple(state.std))


def _rng_states(trainer: Trainer) -> dict[str, torch.Tensor]:
    states = {"rng.shuffle": trainer.shuffle_gen.get_state(), "rng.cpu": torch.get_rng_state()}
    if trainer.augment_gen is not None:
        states["rng.augment"] = trainer.augment_gen.get_state()
    if trainer.device.type == "cuda":
        states["rng.cuda"] = torch.cuda.get_rng_state(trainer.device)
    return states


@dataclass
class StateSnapshot:
    """A copy of the resumable state, safe to write while training goes on."""

    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str]


def snapshot(trainer: Trainer, epoch: int) -> StateSnapshot:
    """Copy the state after `epoch` (tensors cloned to the CPU: training may continue)."""
    optim = trainer.optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, state in optim["state"].items():
        for name, value in state.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{index}.{name}"] = (
                    value.detach().to("cpu", copy=True).contiguous()
                )
            else:
                scalars.setdefault(str(index), {})[name] = value
    tensors.update(
        {k: v.to("cpu", copy=True).contiguous() for k, v in _rng_states(trainer).items()}
    )
    meta = {
        "epoch": epoch,
        "history": trainer.history,
        "best_epoch": trainer.best_epoch,
        "micro_batch": trainer.micro_batch,
        "inference_batch": trainer.inference_cap,
        "param_groups": optim["param_groups"],
        "optimizer_scalars": scalars,
        "schedule": trainer.schedule.state_dict(),
        "scaler": trainer.scaler.state_dict() if trainer.scaler is not None else None,
    }
    return StateSnapshot(tensors, {"state": json.dumps(meta, default=float)})


def write_state(path: Path, snap: StateSnapshot) -> None:
    """Write a snapshot atomically (temp file, fsync, rename)."""
    atomic_write(path, lambda tmp: save_file(snap.tensors, str(tmp), metadata=snap.metadata))


def save_state(path: Path, trainer: Trainer, epoch: int) -> None:
    """Snapshot and write the state after `epoch`."""
    write_state(path, snapshot(trainer, epoch))


def load_state(path: Path, checkpoint: Callable[[int], Path]) -> ResumeState:
    """Read a state file and the checkpoint files (`checkpoint(epoch)`) it refers to."""
    with safe_open(str(path), framework="pt") as fh:
        meta = json.loads(fh.metadata()["state"])
    last = checkpoint(meta["epoch"])
    written = read_metadata(last)
    normalisation = {
        key: tuple(json.loads(written[key])) if key in written else None for key in ("mean", "std")
    }
    return ResumeState(
        epoch=meta["epoch"],
        history=meta["history"],
        best_epoch=meta["best_epoch"],
        model=load_file(str(last)),
        best_model=load_file(str(checkpoint(meta["best_epoch"]))),
        tensors=load_file(str(path)),
        meta=meta,
        **normalisation,
    )


def restore(trainer: Trainer, state: ResumeState) -> None:
    """Put `trainer` where it was after `state.epoch`."""
    trainer.model.load_state_dict(state.model)
    optim_state: dict[int, dict[str, Any]] = {}
    for key, value in state.tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            # As saved (on the CPU): load_state_dict moves each tensor where its parameter
            # is, except the step counts, which stay on the CPU as a fresh optimiser keeps
            # them; moved to a GPU, Adam read each one back every step (a host sync each).
            optim_state.setdefault(int(index), {})[name] = value
    for index, scalars in state.meta["optimizer_scalars"].items():
        optim_state.setdefault(int(index), {}).update(scalars)
    trainer.optimizer.load_state_dict(
        {"state": optim_state, "param_groups": state.meta["param_groups"]}
    )
    trainer.schedule.load_state_dict(state.meta["schedule"])
    if trainer.scaler is not None and state.meta["scaler"]:
        trainer.scaler.load_state_dict(state.meta["scaler"])
    trainer.shuffle_gen.set_state(state.tensors["rng.shuffle"])
    torch.set_rng_state(state.tensors["rng.cpu"])
    if trainer.augment_gen is not None and "rng.augment" in state.tensors:
        trainer.augment_gen.set_state(state.tensors["rng.augment"])
    if trainer.device.type == "cuda" and "rng.cuda" in state.tensors:
        torch.cuda.set_rng_state(state.tensors["rng.cuda"], trainer.device)
    trainer.history = list(state.history)
    trainer.best_epoch = state.best_epoch
    # Saved by workers since 2026-12-04; earlier states find the limit again if they need it.
    trainer.inference_cap = state.meta.get("inference_batch")
