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
    best_seconds,
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
    sync: bool = True,
) -> Callable[[], None]:
    """One full training step on a resident batch (no data path at all), ready to time.

    `service`: the model placed as the trainer places it (channels_last, CPU kernels);
    otherwise plain torchvision modules in `layout`. `sync`: wait for a GPU to finish the
    step (off when the caller times several steps and synchronises once).
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
        # cuDNN's kernel autotuning: the trainer turns it on, a textbook loop leaves it off.
        torch.backends.cudnn.benchmark = service
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        if sync and device.type == "cuda":
            torch.cuda.synchronize()

    return step


def step_flops(step: Callable[[], None]) -> int:
    """Floating-point operations of one call of `step` (forward and backward), as torch
    counts them: 2 per multiply-add of every matmul and convolution, nothing for the rest."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def _timed(run: Callable[[], None], device: torch.device, calls: int) -> Callable[[], None]:
    """`calls` calls of `run` with one synchronisation at the end, as a training loop runs."""

    def many() -> None:
        for _ in range(calls):
            run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return many


def matmul_tflops(device: torch.device, side: int, dtype: torch.dtype = torch.bfloat16) -> float:
    """TFLOP/s of square matmuls in `dtype` on `device`: what its matrix units give at best,
    measured here rather than read off a data sheet."""
    a, b = (torch.randn(side, side, device=device, dtype=dtype) for _ in range(2))
    calls = 10
    seconds = best_seconds(_timed(lambda: torch.mm(a, b), device, calls), 5) / calls
    return 2 * side**3 / seconds / 1e12


def model_rows(
    device: torch.device,
    backbones: tuple[str, ...] = ("resnet50", "vit_b_16"),
    size: int = 224,
    batch: int = 256,
    steps: int = 10,
    matmul_side: int = 8192,
) -> list[dict[str, Any]]:
    """Training steps of the model alone: the service's settings against plain fp32, each
    set against the most this device's matrix units give.

    `steps` steps per timing and one synchronisation, as in training (the trainer never
    waits for a GPU within an epoch). The achieved TFLOP/s (torch's count of one step's
    FLOPs × steps/s) of each side is divided by square matmuls timed in the same run, in
    the dtype that side computes in (the service's autocast dtype, fp32 for the reference):
    how close each step is to the hardware, and so how far precision alone can move the
    ratio. On a GPU the fp32 matmuls do not use TF32 while cuDNN's convolutions may, so
    `reference of matmul` can pass 1 there.
    """
    amp = resolve_amp("auto", device, size)
    ceiling = matmul_tflops(device, matmul_side, amp or torch.float32)
    fp32_ceiling = ceiling if amp is None else matmul_tflops(device, matmul_side, torch.float32)
    precision = str(amp).removeprefix("torch.") if amp else "fp32"
    rows = []
    for backbone in backbones:
        service = training_step(
            backbone, size, 1000, batch, amp, service=True, device=device, sync=False
        )
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        flops = step_flops(service)  # (also its first call: kernels are chosen)
        peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
        reference = training_step(
            backbone, size, 1000, batch, None, service=False, device=device, sync=False
        )
        seconds = fastest_alternated(
            {
                "service": _timed(service, device, steps),
                "reference": _timed(reference, device, steps),
            },
            rounds=3,
        )
        tflops = {side: flops * steps / s / 1e12 for side, s in seconds.items()}
        rows.append(
            {
                "benchmark": f"{'GPU' if device.type == 'cuda' else 'CPU'} training steps, "
                "model alone",
                "setting": f"{backbone} {size}px batch {batch}, "
                f"{precision} + channels_last vs fp32",
                "reference img/s": batch * steps / seconds["reference"],
                "service img/s": batch * steps / seconds["service"],
                "ratio": seconds["reference"] / seconds["service"],
                "TFLOP/s": tflops["service"],
                "matmul TFLOP/s": ceiling,
                "of matmul": tflops["service"] / ceiling,
                "reference TFLOP/s": tflops["reference"],
                "fp32 matmul TFLOP/s": fp32_ceiling,
                "reference of matmul": tflops["reference"] / fp32_ceiling,
                "peak CUDA MiB": peak,
            }
        )
        del service, reference
    return rows


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
        # Ten epochs of the ~1,440 training digits: on a GPU two would be over in a second,
        # mostly the first steps' kernel selection.
        out += [
            {"backbone": "resnet50", "size": 224, "epochs": 10, "per_class": None},
            {"backbone": "vit_b_16", "size": 224, "epochs": 10, "per_class": None},
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
    if not tiny:
        if torch.cuda.is_available():
            rows += model_rows(torch.device("cuda"))
        else:  # the 224 px row's model, at a batch that keeps this to seconds
            rows += model_rows(
                torch.device("cpu"), ("resnet18",), batch=32, steps=1, matmul_side=2048
            )
    return rows
