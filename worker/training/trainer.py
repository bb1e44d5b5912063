"""Trainer: model, optimiser, schedule, precision and RNGs of one run, and its epoch steps."""

import gc
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from torch import nn

from worker.training.backbones import Freezing, build_model
from worker.training.batches import Batches
from worker.training.checkpoint import cpu_state_dict
from worker.training.convs import cpu_convolutions
from worker.training.evaluation import confusion_update, macro_f1
from worker.training.precision import resolve_amp
from worker.training.spec import TrainSpec

if TYPE_CHECKING:
    from worker.training.loop import FitCallbacks

log = logging.getLogger(__name__)
T = TypeVar("T")


def free_device_memory() -> None:
    """Give the GPU memory of a pass that ran out of it back, so the next try sees it free
    (DeviceBatches keeps a dataset on the device only when it fits). Call it outside the
    `except` clause: the handled exception's traceback holds the failed pass's tensors."""
    if torch.cuda.is_available():
        gc.collect()  # the failed pass's tensors, if caught in a cycle
        torch.cuda.empty_cache()


class TrainingDiverged(Exception):
    """A loss or a weight turned NaN or infinite: the run is lost and cannot go on.

    Raised by fit() after an epoch's evaluation and before its checkpoint, so every saved
    checkpoint holds finite weights that give finite losses.
    """

    def __init__(self, spec: TrainSpec, epoch: int, what: str, mixed: bool) -> None:
        remedies = [f"lower learning_rate (it is {spec.learning_rate:g})"]
        if spec.warmup_epochs == 0:
            remedies.append("add warmup_epochs")
        if mixed:
            remedies.append("set mixed_precision to off")
        *others, last = remedies
        hint = f"{', '.join(others)} or {last}" if others else last
        super().__init__(f"{what} in epoch {epoch}; {hint}")
        self.epoch, self.what = epoch, what


_gpu_slot = 0  # which of several GPUs `auto` means in this process (use_gpu_slot)


def use_gpu_slot(slot: int) -> None:
    """Make `auto` mean GPU `slot` mod the GPU count in this process.

    A worker's pool child k takes slot k (worker.lifecycle), so `finetune worker
    --concurrency N` on a host of N GPUs trains one job per GPU, not N on the first.
    """
    global _gpu_slot
    _gpu_slot = slot


def resolve_device(name: str) -> torch.device:
    """`auto`: this process's GPU (use_gpu_slot) when CUDA is present, else the CPU.

    A GPU with an index is also made current, before anything is placed on it: cuDNN
    handles, memory statistics and kernels that take the current device then use it.
    """
    if name != "auto":
        device = torch.device(name)
    elif not torch.cuda.is_available():
        return torch.device("cpu")
    else:
        device = torch.device("cuda", _gpu_slot % torch.cuda.device_count())
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)
    return device


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


# The auxiliary heads' outputs in train mode, weighted as their papers train them:
# Inception v3's one at 0.4, GoogLeNet's two at 0.3 each.
AUX_WEIGHTS = {"aux_logits": 0.4, "aux_logits1": 0.3, "aux_logits2": 0.3}


def _loss(out: Any, target: torch.Tensor, criterion: nn.Module) -> torch.Tensor:
    loss = criterion(_logits(out), target)
    for name, weight in AUX_WEIGHTS.items():
        aux = getattr(out, name, None)
        if isinstance(aux, torch.Tensor):
            loss = loss + weight * criterion(aux, target)
    return loss


@dataclass
class Trainer:
    """The objects of one run, built once by `build_trainer`, plus its epoch history."""

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
    micro_batch: int
    net: Callable[[torch.Tensor], Any]  # the model's forward, compiled when asked
    forward: Callable[[torch.Tensor], Any]  # what batches go through: `net`, or the head alone
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    last_confusion: torch.Tensor | None = None
    # The largest inference pass known to fit, once one ran out of memory (None: no limit).
    inference_cap: int | None = None
    _weights: tuple[int, dict[str, torch.Tensor]] | None = field(default=None, repr=False)

    def weights_after(self, epoch: int) -> dict[str, torch.Tensor]:
        """A CPU copy of the weights after `epoch`, made once however many ask; read-only.

        fit keeps it as the best state and the job's reporter writes it as the epoch's
        checkpoint: one copy instead of two. In a job's first epoch each copy faults fresh
        memory in (ResNet18: ~7k pages, 20-100 ms of the training thread in a worker).
        Forgotten when the next epoch starts: it is not kept beside the best state.
        """
        if self._weights is None or self._weights[0] != epoch:
            self._weights = (epoch, cpu_state_dict(self.model.state_dict()))
        return self._weights[1]

    def autocast(self) -> torch.autocast:
        """Mixed precision around forward and loss only (never the optimiser step)."""
        dtype = self.amp or torch.float32
        return torch.autocast(self.device.type, dtype=dtype, enabled=self.amp is not None)

    def _step(self, x: torch.Tensor, y: torch.Tensor, callbacks: "FitCallbacks") -> torch.Tensor:
        """One optimiser step over a batch, in micro-batches when memory demands it."""
        self.optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), device=self.device)
        # Near-equal parts, not parts of micro_batch and a remainder: 65 in parts of 32 left
        # one image alone, which BatchNorm refuses on a 1×1 map (and averages noisily else).
        parts = -(-x.shape[0] // self.micro_batch)
        for xs, ys in zip(x.tensor_split(parts), y.tensor_split(parts), strict=True):
            callbacks.on_batch(xs.shape[0])
            with self.autocast():
                loss = _loss(self.forward(xs), ys, self.criterion) * (ys.shape[0] / y.shape[0])
            (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
            total += loss.detach()
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.schedule.step()
        return total

    def train_one_epoch(
        self, batches: Batches, epoch: int, callbacks: "FitCallbacks"
    ) -> dict[str, float]:
        spec = self.spec
        self._weights = None  # the last epoch's copy is the best state or being written now
        self.freezing.set_train_mode(self.model)
        steps = batches.steps(spec.batch_size, drop_last=True)
        loss_sum = torch.zeros((), device=self.device)
        seen = 0
        start = time.perf_counter()
        batches_iter = batches.iterate(
            spec.batch_size,
            shuffle=True,
            drop_last=True,
            generator=self.shuffle_gen,
            augment=self.augment_gen,
        )
        for step, (x, y) in enumerate(batches_iter, start=1):
            loss_sum += self._step(x, y, callbacks) * y.shape[0]
            seen += y.shape[0]
            callbacks.on_step(epoch, step, steps)
            callbacks.check_stop()
        train_loss = loss_sum.item() / max(1, seen)  # the epoch's one host sync
        elapsed = time.perf_counter() - start
        return {
            "train_loss": train_loss,
            "images_per_second": seen / elapsed if elapsed > 0 else 0.0,
            "learning_rate": self.optimizer.param_groups[0]["lr"],
        }

    def check_finite(self, epoch: int, metrics: dict[str, Any]) -> None:
        """Raise TrainingDiverged if a loss or any float tensor of the model is not finite.

        One host sync per epoch: every tensor's check is reduced on the device first.
        """
        for key, label in (("train_loss", "training loss"), ("val_loss", "validation loss")):
            if key in metrics and not math.isfinite(metrics[key]):
                what = f"the {label} became {metrics[key]}"
                raise TrainingDiverged(self.spec, epoch, what, self.amp is not None)
        state = {k: t for k, t in self.model.state_dict().items() if t.is_floating_point()}
        if bool(torch.stack([t.isfinite().all() for t in state.values()]).all()):
            return
        name = next(k for k, t in state.items() if not t.isfinite().all())
        what = f"the model's {name} became non-finite"
        raise TrainingDiverged(self.spec, epoch, what, self.amp is not None)

    def inference_batch(self, preferred: int) -> int:
        """Images per inference pass: `preferred`, or the micro-batch once an out-of-memory
        error in training shrank it (inference needs less memory than a training step of
        that size), at most the largest pass known to fit (`inferring`)."""
        size = self.micro_batch if self.micro_batch < self.spec.batch_size else preferred
        return min(size, self.inference_cap or size)

    def inferring(
        self, preferred: int, images: int, run: Callable[[int], T], callbacks: "FitCallbacks"
    ) -> T:
        """`run(images per pass)` over a set of `images`, run again with smaller passes after
        each out-of-memory error.

        Inference keeps no state from one pass to the next, so a run that ran out of memory
        is simply run again, in place: training's micro-batch is not shrunk for it, and a
        job of `batch_size` 1 whose evaluation did not fit in passes of 64 still succeeds
        (the runner's retry from the last checkpoint once halved the micro-batch to 0 and
        failed it). Sizes halve from `preferred`, skipping those no smaller than the pass
        that failed (a set smaller than the size asked for ran one pass of the whole set:
        halving 256 for 32 images ran those 32 again three times). Only a pass of one image
        that does not fit reaches the caller.
        """
        while True:
            size = self.inference_batch(preferred)
            try:
                return run(size)
            except torch.OutOfMemoryError:
                ran = min(size, images)  # the largest pass run
                if ran <= 1:
                    raise
                cap = size // 2
                while cap >= ran:
                    cap //= 2
                self.inference_cap = cap
            free_device_memory()  # out of the handler: see its docstring
            text = (
                f"out of memory in an inference pass of {ran} images: "
                f"running it again in passes of {cap}"
            )
            log.warning(text)
            callbacks.on_warning("out_of_memory", text, {"inference_batch": cap})

    def evaluate(
        self, batches: Batches, prefix: str, callbacks: "FitCallbacks"
    ) -> dict[str, float]:
        """Loss, top-1/top-5 accuracy and macro F1; `self.last_confusion` keeps the matrix.

        `callbacks.on_inference_pass` runs before every pass and `callbacks.check_stop` after it (a
        cancel may raise there).
        """
        return self.inferring(
            max(self.spec.batch_size, 64),
            len(batches),
            lambda size: self._evaluate(batches, prefix, size, callbacks),
            callbacks,
        )

    @torch.inference_mode()
    def _evaluate(
        self, batches: Batches, prefix: str, size: int, callbacks: "FitCallbacks"
    ) -> dict[str, float]:
        self.model.eval()
        loss_sum = torch.zeros((), device=self.device)
        correct5 = torch.zeros((), device=self.device, dtype=torch.long)
        classes = self.spec.num_classes
        confusion = torch.zeros((classes, classes), device=self.device, dtype=torch.long)
        k = min(5, classes)
        for x, y in batches.iterate(size):
            callbacks.on_inference_pass(x.shape[0])
            with self.autocast():
                logits = _logits(self.forward(x))
            logits = logits.float()
            loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum")
            top = logits.topk(k, dim=1).indices
            confusion_update(confusion, y, top[:, 0])
            correct5 += (top == y[:, None]).any(dim=1).sum()
            callbacks.check_stop()
        n = max(1, len(batches))
        self.last_confusion = confusion
        return {
            f"{prefix}_loss": loss_sum.item() / n,
            f"{prefix}_accuracy": confusion.diagonal().sum().item() / n,
            f"{prefix}_top5_accuracy": correct5.item() / n,
            f"{prefix}_macro_f1": macro_f1(confusion),
        }


def place_model(model: nn.Module, device: torch.device) -> nn.Module:
    """The model on `device` as the service trains it: channels_last, CPU kernel choice."""
    model = model.to(device, memory_format=torch.channels_last)
    cpu_convolutions(model, device)
    return model


def build_trainer(spec: TrainSpec, steps_per_epoch: int, micro_batch: int | None = None) -> Trainer:
    """Model, optimiser, schedule and precision for `spec`, on its device."""
    torch.manual_seed(spec.seed)
    device = resolve_device(spec.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    model, freezing = build_model(spec)
    model = place_model(model, device)
    amp = resolve_amp(spec.mixed_precision, device, spec.image_size)
    optimizer = build_optimizer(model, spec)
    augment_gen = None
    if spec.augment:
        augment_gen = torch.Generator(device=device).manual_seed(spec.seed + 1)
    # Compile the forward only: the module itself keeps its state_dict keys unprefixed.
    net = torch.compile(model) if spec.compile else model
    return Trainer(
        spec=spec,
        net=net,
        forward=net,
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
        micro_batch=min(micro_batch or spec.batch_size, spec.batch_size),
    )
