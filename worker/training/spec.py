"""TrainSpec: everything `fit()` needs, as one frozen value."""

from dataclasses import dataclass, field
from typing import Literal

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Strategy = Literal["full", "linear_probe", "partial"]


@dataclass(frozen=True)
class InitWeights:
    """Where the starting weights come from.

    `torchvision`: a weights enum (`ResNet18_Weights.IMAGENET1K_V1`) read from TORCH_HOME.
    `file`: a safetensors state dict written by this service (`keep_head` when its classes
    are the same, so the classifier carries over too).
    """

    source: Literal["none", "torchvision", "file"] = "none"
    name: str | None = None
    path: str | None = None
    keep_head: bool = False


@dataclass(frozen=True)
class TrainSpec:
    backbone: str
    classes: tuple[str, ...]
    init: InitWeights = field(default_factory=InitWeights)
    strategy: Strategy = "full"
    trainable_layers: int = 1
    epochs: int = 10
    batch_size: int = 32
    learning_rate: float = 1e-3
    optimizer: Literal["sgd", "adamw"] = "adamw"
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_schedule: Literal["constant", "cosine", "step"] = "cosine"
    warmup_epochs: float = 0.0
    image_size: int = 224
    augment: bool = True
    label_smoothing: float = 0.0
    early_stopping_patience: int | None = None
    mixed_precision: Literal["auto", "off"] = "auto"
    seed: int = 0
    compile: bool = False
    device: str = "auto"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    @property
    def num_classes(self) -> int:
        return len(self.classes)
