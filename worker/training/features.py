"""Linear probe with cached features: run the frozen backbone once, train the head on its output.

Valid when nothing before the head changes between epochs: strategy `linear_probe` (frozen
and in eval mode) and no augmentation. The head's input is captured with a forward hook, so
it works for any torchvision model whose last layer is a Linear head; a probe batch checks
that the head alone reproduces the model's logits, and otherwise caching is skipped.
"""

from typing import TYPE_CHECKING

import torch
from torch import nn

from worker.training.batches import DeviceBatches, FeatureBatches
from worker.training.trainer import Trainer, _logits

if TYPE_CHECKING:
    from worker.training.loop import FitCallbacks


def extract(
    trainer: Trainer, batches: DeviceBatches, head: nn.Module, callbacks: "FitCallbacks"
) -> FeatureBatches | None:
    """Features of every image of `batches`, or None when the head is not the model's last op.

    `callbacks.on_inference_pass` runs before every pass and `callbacks.check_stop` after it (a
    cancel may raise there). Passes that run out of memory are run again smaller
    (`Trainer.inferring`).
    """
    return trainer.inferring(
        256, len(batches), lambda size: _extract(trainer, batches, head, size, callbacks), callbacks
    )


@torch.no_grad()
def _extract(
    trainer: Trainer,
    batches: DeviceBatches,
    head: nn.Module,
    size: int,
    callbacks: "FitCallbacks",
) -> FeatureBatches | None:
    captured: list[torch.Tensor] = []
    hook = head.register_forward_hook(lambda _m, inputs, _out: captured.append(inputs[0].float()))
    trainer.model.eval()
    first_logits = None
    try:
        for x, _ in batches.iterate(size):
            callbacks.on_inference_pass(x.shape[0])
            with trainer.autocast():
                logits = _logits(trainer.net(x)).float()
            first_logits = logits if first_logits is None else first_logits
            callbacks.check_stop()
    finally:
        hook.remove()  # before the check below: calling the head must not capture again
    if not captured or captured[0].ndim != 2:
        return None
    with trainer.autocast():
        replayed = head(captured[0]).float()
    if not torch.allclose(replayed, first_logits, rtol=1e-2, atol=1e-2):
        return None
    return FeatureBatches(torch.cat(captured), batches.labels)


def use_cached_features(
    trainer: Trainer,
    train: DeviceBatches,
    val: DeviceBatches | None,
    callbacks: "FitCallbacks",
) -> tuple[FeatureBatches, FeatureBatches | None] | None:
    """Switch `trainer` to head-only training on cached features when that is exact."""
    spec = trainer.spec
    if spec.strategy != "linear_probe" or spec.augment:
        return None
    head = trainer.model.get_submodule(trainer.freezing.head)
    if not isinstance(head, nn.Linear):
        return None
    train_features = extract(trainer, train, head, callbacks)
    if train_features is None:
        return None
    val_features = extract(trainer, val, head, callbacks) if val is not None else None
    trainer.forward = head
    return train_features, val_features
