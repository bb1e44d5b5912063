"""fit(spec, data, callbacks): train_one_epoch + evaluate, best-epoch tracking, early stop."""

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from worker.training.backbones import Freezing, build_model
from worker.training.checkpoint import cpu_state_dict
from worker.training.data import DeviceBatches, ImageSet, TrainData
from worker.training.spec import TrainSpec


class TrainingCancelled(Exception):
    """Raised inside fit() when the callbacks ask it to stop."""


class FitCallbacks:
    """Hooks through which fit() reports; the defaults do nothing."""

    def on_start(self, info: dict[str, Any]) -> None:
        """Called once with the resolved device, precision and freezing."""

    def on_step(self, epoch: int, step: int, steps: int) -> None:
        """Called after every optimiser step; must stay cheap (no host syncs)."""

    def should_stop(self) -> bool:
        """Polled every step; return True to cancel (implementations rate-limit)."""
        return False

    def on_epoch_end(self, epoch: int, metrics: dict[str, float], model: nn.Module) -> None:
        """Called after each epoch's evaluation; persist the checkpoint here."""


@dataclass
class FitResult:
    best_epoch: int
    best_metrics: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)
    test_metrics: dict[str, float] | None = None
    stopped_early: bool = False


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_amp(mode: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype: bf16 where the hardware runs it natively, else fp16 on CUDA."""
    if mode == "off":
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu":
        native = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
        amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
        return torch.bfloat16 if native or amx else None
    return None


def build_optimizer(model: nn.Module, spec: TrainSpec) -> torch.optim.Optimizer:
    """SGD or AdamW over trainable parameters; no weight decay on biases and norms."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim > 1 else no_decay).append(param)
    groups = [
        {"params": decay, "weight_decay": spec.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if spec.optimizer == "sgd":
        return torch.optim.SGD(
            groups, lr=spec.learning_rate, momentum=spec.momentum, nesterov=spec.momentum > 0
        )
    return torch.optim.AdamW(groups, lr=spec.learning_rate)


def build_schedule(
    optimizer: torch.optim.Optimizer, spec: TrainSpec, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step multiplier: linear warmup, then constant, cosine to 0, or ×0.1 every third."""
    total = max(1, spec.epochs * steps_per_epoch)
    warmup = int(spec.warmup_epochs * steps_per_epoch)
    step_every = max(1, math.ceil(spec.epochs / 3)) * steps_per_epoch

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if spec.lr_schedule == "cosine":
            progress = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        if spec.lr_schedule == "step":
            return 0.1 ** (step // step_every)
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _logits(out: Any) -> torch.Tensor:
    return out.logits if hasattr(out, "logits") else out


def _loss(out: Any, target: torch.Tensor, criterion: nn.Module) -> torch.Tensor:
    loss = criterion(_logits(out), target)
    aux = getattr(out, "aux_logits", None)  # Inception/GoogLeNet auxiliary heads in train mode
    if isinstance(aux, torch.Tensor):
        loss = loss + 0.4 * criterion(aux, target)
    return loss


@dataclass
class Trainer:
    """The objects of one run, built once by fit()."""

    spec: TrainSpec
    model: nn.Module
    freezing: Freezing
    device: torch.device
    amp: torch.dtype | None
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler | None
    shuffle_gen: torch.Generator
    augment_gen: torch.Generator | None

    def autocast(self) -> torch.autocast:
        """Mixed precision around forward and loss only (never the optimiser step)."""
        dtype = self.amp or torch.float32
        return torch.autocast(self.device.type, dtype=dtype, enabled=self.amp is not None)

    def train_one_epoch(
        self, batches: DeviceBatches, epoch: int, callbacks: FitCallbacks
    ) -> dict[str, float]:
        spec = self.spec
        self.freezing.set_train_mode(self.model)
        steps = batches.steps(spec.batch_size, drop_last=True)
        loss_sum = torch.zeros((), device=self.device)
        seen = 0
        start = time.perf_counter()
        for step, (x, y) in enumerate(
            batches.iterate(
                spec.batch_size,
                shuffle=True,
                drop_last=True,
                generator=self.shuffle_gen,
                augment=self.augment_gen,
            ),
            start=1,
        ):
            with self.autocast():
                loss = _loss(self.model(x), y, self.criterion)
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                loss.backward()
                self.optimizer.step()
            self.schedule.step()
            loss_sum += loss.detach() * y.shape[0]
            seen += y.shape[0]
            callbacks.on_step(epoch, step, steps)
            if callbacks.should_stop():
                raise TrainingCancelled
        train_loss = loss_sum.item() / max(1, seen)  # the epoch's one host sync
        elapsed = time.perf_counter() - start
        return {
            "train_loss": train_loss,
            "images_per_second": seen / elapsed if elapsed > 0 else 0.0,
            "learning_rate": self.optimizer.param_groups[0]["lr"],
        }

    @torch.inference_mode()
    def evaluate(self, batches: DeviceBatches, prefix: str) -> dict[str, float]:
        self.model.eval()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        correct5 = torch.zeros((), device=self.device, dtype=torch.long)
        k = min(5, self.spec.num_classes)
        for x, y in batches.iterate(max(self.spec.batch_size, 64)):
            with self.autocast():
                logits = _logits(self.model(x))
            logits = logits.float()
            loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum")
            top = logits.topk(k, dim=1).indices
            correct += (top[:, 0] == y).sum()
            correct5 += (top == y[:, None]).any(dim=1).sum()
        n = max(1, len(batches))
        return {
            f"{prefix}_loss": loss_sum.item() / n,
            f"{prefix}_accuracy": correct.item() / n,
            f"{prefix}_top5_accuracy": correct5.item() / n,
        }


def build_trainer(spec: TrainSpec, steps_per_epoch: int) -> Trainer:
    """Model, optimiser, schedule and precision for `spec`, on its device."""
    torch.manual_seed(spec.seed)
    device = resolve_device(spec.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    model, freezing = build_model(spec)
    model = model.to(device, memory_format=torch.channels_last)
    amp = resolve_amp(spec.mixed_precision, device)
    optimizer = build_optimizer(model, spec)
    augment_gen = None
    if spec.augment:
        augment_gen = torch.Generator(device=device).manual_seed(spec.seed + 1)
    return Trainer(
        spec=spec,
        model=model,
        freezing=freezing,
        device=device,
        amp=amp,
        criterion=nn.CrossEntropyLoss(label_smoothing=spec.label_smoothing),
        optimizer=optimizer,
        schedule=build_schedule(optimizer, spec, steps_per_epoch),
        scaler=torch.amp.GradScaler(device.type) if amp == torch.float16 else None,
        shuffle_gen=torch.Generator().manual_seed(spec.seed),
        augment_gen=augment_gen,
    )


def _is_better(metrics: dict[str, float], best: dict[str, float] | None) -> bool:
    if best is None:
        return True
    if "val_accuracy" not in metrics:
        return True  # no validation set: the latest epoch is the best we know
    key = (metrics["val_accuracy"], -metrics["val_loss"])
    return key > (best["val_accuracy"], -best["val_loss"])


def fit(spec: TrainSpec, data: TrainData, callbacks: FitCallbacks | None = None) -> FitResult:
    """Train `spec` on `data`; return the best epoch (by val accuracy) and the history."""
    callbacks = callbacks or FitCallbacks()
    device = resolve_device(spec.device)
    train = DeviceBatches(data.train, device, spec.mean, spec.std)
    val = _batches(data.val, device, spec)
    trainer = build_trainer(spec, train.steps(spec.batch_size, drop_last=True))
    callbacks.on_start(
        {
            "device": str(trainer.device),
            "precision": str(trainer.amp).removeprefix("torch.") if trainer.amp else "float32",
            "trainable_parameters": sum(
                p.numel() for p in trainer.model.parameters() if p.requires_grad
            ),
            "trainable_blocks": trainer.freezing.trainable_blocks,
            "total_blocks": trainer.freezing.total_blocks,
        }
    )
    history: list[dict[str, float]] = []
    best: dict[str, float] | None = None
    best_state: dict[str, torch.Tensor] | None = None
    stopped_early = False
    for epoch in range(1, spec.epochs + 1):
        metrics = {"epoch": epoch, **trainer.train_one_epoch(train, epoch, callbacks)}
        if val is not None:
            metrics.update(trainer.evaluate(val, "val"))
        if _is_better(metrics, best):
            best, best_state = metrics, cpu_state_dict(trainer.model.state_dict())
        metrics["best_val_accuracy"] = best.get("val_accuracy") if best else None
        history.append(metrics)
        callbacks.on_epoch_end(epoch, metrics, trainer.model)
        patience = spec.early_stopping_patience
        if patience is not None and epoch - int(best["epoch"]) >= patience:
            stopped_early = epoch < spec.epochs
            break
    assert best is not None and best_state is not None
    test_metrics = None
    test = _batches(data.test, device, spec)
    if test is not None:
        trainer.model.load_state_dict(best_state)
        test_metrics = trainer.evaluate(test, "test")
    return FitResult(
        best_epoch=int(best["epoch"]),
        best_metrics=best,
        history=history,
        test_metrics=test_metrics,
        stopped_early=stopped_early,
    )


def _batches(data: ImageSet | None, device: torch.device, spec: TrainSpec) -> DeviceBatches | None:
    if data is None or len(data) == 0:
        return None
    return DeviceBatches(data, device, spec.mean, spec.std)
