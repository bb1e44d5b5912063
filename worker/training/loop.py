"""fit(spec, data, callbacks): epochs of train_one_epoch + evaluate, best epoch, early stop."""

from dataclasses import dataclass, field
from typing import Any

import torch

from worker.training.batches import Batches, DeviceBatches
from worker.training.data import ImageSet, TrainData
from worker.training.evaluation import report
from worker.training.features import use_cached_features
from worker.training.resume import ResumeState, restore
from worker.training.spec import TrainSpec
from worker.training.trainer import Trainer, build_trainer, resolve_device


class TrainingCancelled(Exception):
    """Raised inside fit() when the callbacks ask it to stop."""


class FitCallbacks:
    """Hooks through which fit() reports; the defaults do nothing.

    A hook may raise to abort the run (the exception leaves fit() unchanged).
    """

    def on_start(self, info: dict[str, Any]) -> None:
        """Called once with the resolved device, precision and freezing."""

    def on_batch(self, size: int) -> None:
        """Called before each training forward pass with its (micro-)batch size."""

    def on_inference_pass(self, size: int) -> None:
        """Called before each inference pass (evaluation, feature extraction) with its size."""

    def on_warning(self, code: str, message: str, data: dict[str, Any]) -> None:
        """Something the user should know happened, and the run went on (a smaller pass)."""

    def on_step(self, epoch: int, step: int, steps: int) -> None:
        """Called after every optimiser step; must stay cheap (no host syncs)."""

    def should_stop(self) -> bool:
        """Polled every step; return True to cancel (implementations rate-limit)."""
        return False

    def check_stop(self) -> None:
        if self.should_stop():
            raise TrainingCancelled

    def on_epoch_end(
        self, epoch: int, metrics: dict[str, Any], trainer: Trainer, *, last: bool
    ) -> None:
        """Called after each epoch's evaluation; persist the checkpoint (and state) here.

        `last`: no epoch follows (the final one, or the one early stopping ends on), so
        nothing will resume training from this epoch's optimiser state.
        """


@dataclass
class FitResult:
    best_epoch: int
    best_metrics: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    test_metrics: dict[str, float] | None = None
    stopped_early: bool = False
    evaluation: dict[str, Any] | None = None  # full report of the best weights (test, else val)


def _is_better(metrics: dict[str, Any], best: dict[str, Any] | None) -> bool:
    if best is None:
        return True
    if "val_accuracy" not in metrics:
        return True  # no validation set: the latest epoch is the best we know
    key = (metrics["val_accuracy"], -metrics["val_loss"])
    return key > (best["val_accuracy"], -best["val_loss"])


def _batches(data: ImageSet | None, device: torch.device, spec: TrainSpec) -> DeviceBatches | None:
    if data is None or len(data) == 0:
        return None
    return DeviceBatches(data, device, spec.mean, spec.std)


def _should_stop_early(spec: TrainSpec, trainer: Trainer, epoch: int) -> bool:
    patience = spec.early_stopping_patience
    return (
        patience is not None and trainer.best_epoch > 0 and epoch - trainer.best_epoch >= patience
    )


def fit(
    spec: TrainSpec,
    data: TrainData,
    callbacks: FitCallbacks | None = None,
    resume: ResumeState | None = None,
    micro_batch: int | None = None,
) -> FitResult:
    """Train `spec` on `data` (after `resume.epoch` when given); return the best epoch."""
    callbacks = callbacks or FitCallbacks()
    device = resolve_device(spec.device)
    train = DeviceBatches(data.train, device, spec.mean, spec.std)
    val = _batches(data.val, device, spec)
    trainer = build_trainer(spec, train.steps(spec.batch_size, drop_last=True), micro_batch)
    best_state: dict[str, torch.Tensor] | None = None
    start = 1
    if resume is not None:
        restore(trainer, resume)
        best_state, start = resume.best_model, resume.epoch + 1
    train_on: Batches = train
    val_on: Batches | None = val
    if cached := use_cached_features(trainer, train, val, callbacks):
        train_on, val_on = cached
    callbacks.on_start(
        {
            "device": str(trainer.device),
            "cpu_threads": torch.get_num_threads(),
            "precision": str(trainer.amp).removeprefix("torch.") if trainer.amp else "float32",
            "trainable_parameters": sum(
                p.numel() for p in trainer.model.parameters() if p.requires_grad
            ),
            "trainable_blocks": trainer.freezing.trainable_blocks,
            "total_blocks": trainer.freezing.total_blocks,
            "micro_batch": trainer.micro_batch,
            "resumed_after_epoch": start - 1,
            "cached_features": cached is not None,
            "compiled": spec.compile,
        }
    )
    stopped_early = False
    for epoch in range(start, spec.epochs + 1):
        if _should_stop_early(spec, trainer, epoch - 1):  # resumed after the stopping epoch
            stopped_early = True
            break
        metrics: dict[str, Any] = {
            "epoch": epoch,
            **trainer.train_one_epoch(train_on, epoch, callbacks),
        }
        if val_on is not None:
            metrics.update(trainer.evaluate(val_on, "val", callbacks))
        trainer.check_finite(epoch, metrics)
        best = trainer.history[trainer.best_epoch - 1] if trainer.best_epoch else None
        if _is_better(metrics, best):
            trainer.best_epoch, best_state = epoch, trainer.weights_after(epoch)
            best = metrics
        metrics["best_val_accuracy"] = best.get("val_accuracy") if best else None
        trainer.history.append(metrics)
        stop = _should_stop_early(spec, trainer, epoch)
        callbacks.on_epoch_end(epoch, metrics, trainer, last=stop or epoch == spec.epochs)
        if stop:
            stopped_early = epoch < spec.epochs
            break
    assert best_state is not None and trainer.best_epoch
    test_metrics, evaluation = None, None
    test = _batches(data.test, device, spec)
    trainer.model.load_state_dict(best_state)
    trainer.forward = trainer.net
    if test is not None:
        test_metrics = trainer.evaluate(test, "test", callbacks)
        evaluation = report(
            trainer.last_confusion, spec.classes, "test", test_metrics["test_top5_accuracy"]
        )
    elif val is not None:
        scored = trainer.evaluate(val, "val", callbacks)
        evaluation = report(
            trainer.last_confusion, spec.classes, "val", scored["val_top5_accuracy"]
        )
    return FitResult(
        best_epoch=trainer.best_epoch,
        best_metrics=trainer.history[trainer.best_epoch - 1],
        history=trainer.history,
        test_metrics=test_metrics,
        stopped_early=stopped_early,
        evaluation=evaluation,
    )
