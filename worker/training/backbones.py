"""build_model(spec): torchvision backbone, its head sized for the dataset, freezing policy."""

import json
from dataclasses import dataclass

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn
from torchvision import models

from worker.training.spec import IMAGENET_MEAN, IMAGENET_STD, InitWeights, TrainSpec

# Fewer top-level blocks than this and the biggest one is split into its children, so that
# `partial` has useful granularity on models like EfficientNet (one big `features`).
MIN_BLOCKS = 4
AUXILIARY = ("aux1.", "aux2.", "AuxLogits.")  # GoogLeNet's and Inception v3's extra heads
# Each auxiliary head and the block whose output it reads: not a block of the body (it
# feeds only a training loss), it trains when that block does.
AUX_SOURCES = {"aux1": "inception4a", "aux2": "inception4d", "AuxLogits": "Mixed_6e"}


# Weights ported from TensorFlow expect pixels scaled to [-1, 1]: torchvision builds these
# backbones with `transform_input=True` when it loads them, turning ImageNet-normalised input
# into that. A model built without weights has no such step, and the weights file this
# service writes must load into a plain `get_model(backbone, weights=None)`: so these train
# (and serve, from the file's metadata) with the normalisation they expect instead.
TF_RANGE_WEIGHTS = frozenset({"googlenet", "inception_v3"})
TF_RANGE = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def input_normalisation(
    backbone: str, init: InitWeights
) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """(mean, std) the starting weights expect of [0, 1] pixels."""
    if init.source == "torchvision" and backbone in TF_RANGE_WEIGHTS:
        return TF_RANGE
    if init.source == "file":  # an earlier model of this service: what it was trained with
        assert init.path is not None
        with safe_open(init.path, framework="pt") as fh:
            meta = fh.metadata() or {}
        if "mean" in meta and "std" in meta:
            mean, std = json.loads(meta["mean"]), json.loads(meta["std"])
            return (mean[0], mean[1], mean[2]), (std[0], std[1], std[2])
    return IMAGENET_MEAN, IMAGENET_STD


def find_head(model: nn.Module, num_classes: int) -> str:
    """Name of the classifier layer: the last Linear/1×1 Conv producing `num_classes`."""
    head = None
    for name, module in model.named_modules():
        if (isinstance(module, nn.Linear) and module.out_features == num_classes) or (
            isinstance(module, nn.Conv2d) and module.out_channels == num_classes
        ):
            head = name
    if head is None:
        raise ValueError(f"no classifier layer with {num_classes} outputs found")
    return head


def _pretrained_state(backbone: str, init: InitWeights) -> dict[str, torch.Tensor]:
    if init.source == "file":
        assert init.path is not None
        return load_file(init.path)
    assert init.name is not None
    # get_model applies torchvision's own key fix-ups (DenseNet's legacy names, …) and
    # reads the file from TORCH_HOME's cache; the caller checked that it is there.
    return models.get_model(backbone, weights=models.get_weight(init.name)).state_dict()


def _transplant(
    model: nn.Module, state: dict[str, torch.Tensor], head: str, keep_head: bool
) -> None:
    """Copy every matching tensor except (unless `keep_head`) the classifier's.

    Auxiliary classifiers, which only help training, keep their fresh initialisation where
    the weights do not fit them: torchvision drops GoogLeNet's from a model built with its
    pretrained weights, and Inception v3's keeps ImageNet's 1000 outputs.
    """
    own = model.state_dict()
    head_keys = {k for k in own if k.startswith(head + ".")}
    unfit = {k for k in own if k not in state or state[k].shape != own[k].shape}
    fresh = {k for k in unfit if k.startswith(AUXILIARY)}
    missing = sorted(unfit - head_keys - fresh)
    if missing:
        raise ValueError(f"weights do not fit this backbone; e.g. {missing[:3]}")
    skipped = fresh if keep_head else fresh | head_keys
    chosen = {k: v for k, v in state.items() if k in own and k not in skipped}
    model.load_state_dict(chosen, strict=False)


@dataclass
class Freezing:
    """Which modules stay frozen: kept in eval mode so BatchNorm statistics never move."""

    frozen: list[nn.Module]
    trainable_blocks: int
    total_blocks: int
    head: str = ""

    def set_train_mode(self, model: nn.Module) -> None:
        model.train()
        for module in self.frozen:
            module.eval()


def _contains(module: nn.Module, target: nn.Module) -> bool:
    return any(m is target for m in module.modules())


def _blocks(model: nn.Module, head: nn.Module) -> list[nn.Module]:
    """The ordered top-level blocks of the body (head excluded) that own parameters."""

    def children(module: nn.Module) -> list[nn.Module]:
        out: list[nn.Module] = []
        for name, child in module.named_children():
            if child is head or name in AUX_SOURCES or not any(True for _ in child.parameters()):
                continue
            out.extend(children(child) if _contains(child, head) else [child])
        return out

    blocks = children(model)
    while len(blocks) < MIN_BLOCKS:
        splittable = [b for b in blocks if children(b)]
        if not splittable:
            break
        big = max(splittable, key=lambda b: sum(p.numel() for p in b.parameters()))
        i = blocks.index(big)
        blocks[i : i + 1] = children(big)
    return blocks


def apply_strategy(model: nn.Module, head_name: str, spec: TrainSpec) -> Freezing:
    """Set requires_grad per strategy and return the modules to keep in eval mode."""
    head = model.get_submodule(head_name)
    if spec.strategy == "full":
        return Freezing(frozen=[], trainable_blocks=0, total_blocks=0, head=head_name)
    blocks = _blocks(model, head)
    keep = 0 if spec.strategy == "linear_probe" else min(spec.trainable_layers, len(blocks))
    if keep == len(blocks):
        # Every block: the whole network, including parameters that sit on a container
        # rather than in a block (a ViT's class token and position embedding).
        return Freezing(frozen=[], trainable_blocks=keep, total_blocks=keep, head=head_name)
    trainable = [*blocks[len(blocks) - keep :], head]
    for aux, source in AUX_SOURCES.items():
        if hasattr(model, aux) and hasattr(model, source):
            fed = model.get_submodule(source)
            if any(_contains(t, fed) or _contains(fed, t) for t in trainable[:-1]):
                trainable.append(model.get_submodule(aux))
    for param in model.parameters():
        param.requires_grad_(False)
    for module in trainable:
        for param in module.parameters():
            param.requires_grad_(True)
    frozen = [
        m
        for m in model.modules()
        if m is not model and not any(_contains(t, m) or _contains(m, t) for t in trainable)
    ]
    return Freezing(frozen=frozen, trainable_blocks=keep, total_blocks=len(blocks), head=head_name)


def build_model(spec: TrainSpec) -> tuple[nn.Module, Freezing]:
    """The backbone with a `num_classes` head, initialised and frozen as the spec says."""
    model = models.get_model(spec.backbone, weights=None, num_classes=spec.num_classes)
    head = find_head(model, spec.num_classes)
    if spec.init.source != "none":
        state = _pretrained_state(spec.backbone, spec.init)
        _transplant(model, state, head, keep_head=spec.init.keep_head)
    return model, apply_strategy(model, head, spec)
