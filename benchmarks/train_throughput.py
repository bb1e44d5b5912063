"""Training throughput: the service's training core against the textbook loop, same data.

Both train the same backbone from the same initialisation on the same real images for the
same epochs with SGD (lr 0.01, momentum 0.9, batch 100). The service's time includes
decoding its uint8 cache; the reference decodes with PIL every step.
"""

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision import models

from benchmarks import reference_loop
from benchmarks.common import (
    digits_imagefolder,
    epoch_images,
    fastest_alternated,
    peak_cuda_mib,
    peak_rss_mib,
    step_seconds,
    worker_process,
)
from worker.training.data import ImageSet, TrainData, cached_images
from worker.training.loop import fit
from worker.training.precision import resolve_amp
from worker.training.spec import TrainSpec
from worker.training.trainer import place_model

BATCH = 100  # both loops, and the model-alone steps beside them


def _image_set(root: Path, classes: list[str], size: int) -> tuple[ImageSet, float]:
    paths, labels = [], []
    for label, cls in enumerate(classes):
        for path in sorted((root / cls).iterdir()):
            paths.append(path)
            labels.append(label)
    start = time.perf_counter()
    images = cached_images(None, paths, size, threads=4)
    return ImageSet(images, torch.tensor(labels)), time.perf_counter() - start


def service_core(
    root: Path, classes: list[str], backbone: str, size: int, epochs: int
) -> dict[str, float]:
    train, decode_s = _image_set(root / "train", classes, size)
    test, _ = _image_set(root / "test", classes, size)
    spec = TrainSpec(
        backbone=backbone,
        classes=tuple(classes),
        epochs=epochs,
        batch_size=BATCH,
        learning_rate=0.01,
        optimizer="sgd",
        momentum=0.9,
        weight_decay=0.0,
        lr_schedule="constant",
        image_size=size,
        augment=False,
    )
    result = fit(spec, TrainData(train=train, test=test))
    train_s = step_seconds(result.history, len(train), spec.batch_size)
    seen = epochs * epoch_images(len(train), spec.batch_size)
    return {
        "images_per_second": seen / (train_s + decode_s),
        "train_seconds": train_s + decode_s,
        "decode_seconds": decode_s,
        "train_loss": result.history[-1]["train_loss"],
        "accuracy": result.test_metrics["test_accuracy"] if result.test_metrics else None,
    }


def training_step(
    backbone: str,
    size: int,
    classes: int,
    batch: int,
    amp: torch.dtype | None,
    *,
    service: bool,
    layout: torch.memory_format = torch.contiguous_format,
    device: torch.device | None = None,
) -> Callable[[], None]:
    """One full training step on a resident batch (no data path at all), ready to time.

    `service`: the model placed as the trainer places it (channels_last, CPU kernels);
    otherwise plain torchvision modules in `layout`.
    """
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model = models.get_model(backbone, weights=None, num_classes=classes)
    if service:
        model, layout = place_model(model, device), torch.channels_last
    else:
        model = model.to(device, memory_format=layout)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=layout)
    y = torch.randint(0, classes, (batch,), device=device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    return step


def model_only_ratio(backbone: str, size: int, classes: int, batch: int) -> float:
    """The model alone: training steps on resident tensors, service settings ÷ reference's.

    The service's precision (bf16 where native and the images are large enough, as
    `resolve_amp` decides for the service), channels_last and its CPU kernel choice
    (worker/training/convs.py) against fp32 in the default memory format, with no data
    path at all: what those settings give by themselves on this hardware. A throughput
    ratio above it comes from the data path (the textbook loop decodes with PIL every step).
    """
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    amp = resolve_amp("auto", device, size)
    seconds = fastest_alternated(
        {
            "service": training_step(backbone, size, classes, batch, amp, service=True),
            "reference": training_step(backbone, size, classes, batch, None, service=False),
        },
        rounds=3,
    )
    return seconds["reference"] / seconds["service"]


def configs(tiny: bool) -> list[dict[str, Any]]:
    if tiny:
        return [{"backbone": "resnet18", "size": 16, "epochs": 1, "per_class": 12}]
    out = [
        {"backbone": "resnet18", "size": 32, "epochs": 3, "per_class": None},
        {"backbone": "resnet18", "size": 224, "epochs": 2, "per_class": 80},
    ]
    if torch.cuda.is_available():
        out += [
            {"backbone": "resnet50", "size": 224, "epochs": 2, "per_class": None},
            {"backbone": "vit_b_16", "size": 224, "epochs": 2, "per_class": None},
        ]
    return out


def run(workdir: Path, tiny: bool) -> list[dict[str, Any]]:
    rows = []
    for cfg in configs(tiny):
        data = digits_imagefolder(
            workdir / f"digits{cfg['size']}-{cfg['per_class']}", cfg["size"], cfg["per_class"]
        )
        ref = reference_loop.train(
            data.root, cfg["backbone"], cfg["size"], cfg["epochs"], batch_size=BATCH, lr=0.01
        )
        with worker_process() as call:
            ours = call(
                service_core, data.root, data.classes, cfg["backbone"], cfg["size"], cfg["epochs"]
            )
        rows.append(
            {
                "benchmark": "training throughput",
                "setting": f"{cfg['backbone']} {cfg['size']}px ×{cfg['epochs']} ep",
                "reference img/s": ref["images_per_second"],
                "service img/s": ours["images_per_second"],
                "ratio": ours["images_per_second"] / ref["images_per_second"],
                "model-only ratio": model_only_ratio(
                    cfg["backbone"], cfg["size"], len(data.classes), 8 if tiny else BATCH
                ),
                "reference acc": ref["accuracy"],
                "service acc": ours["accuracy"],
                "reference loss": ref["train_loss"],
                "service loss": ours["train_loss"],
                "peak RSS MiB": peak_rss_mib(),
                "peak CUDA MiB": peak_cuda_mib(),
            }
        )
    return rows
