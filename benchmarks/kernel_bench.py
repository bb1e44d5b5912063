"""The trainer's CPU convolutions (worker/training/convs.py) against plain nn.Conv2d.

Training steps on one resident batch, both in channels_last and the same precision, so
that the kernel choice is all that differs: single-position convolutions as GEMMs (fp32,
where a backbone's last stage runs on 1×1 maps), and depthwise convolutions in fp32 inside
bf16 autocast. The bf16 rows also give each side's step against the service's own fp32
step (`mixed_precision: off`), the comparison `auto` rests on; they are measured only on
CPUs with native bf16 units, the only ones where the service trains in bf16.
"""

from collections.abc import Callable
from typing import Any

import torch

from benchmarks.common import fastest_alternated
from benchmarks.train_throughput import training_step
from worker.training.precision import cpu_bf16_units

CLASSES = 10
ROUNDS = 3
# (backbone, image side, batch, bf16): ResNets at 32 px run layer4 on 1×1 maps; MobileNetV3
# and EfficientNet are mostly depthwise-separable.
CASES = [
    ("resnet18", 32, 100, False),
    ("resnet50", 32, 100, False),
    ("mobilenet_v3_small", 64, 100, True),
    ("efficientnet_b0", 128, 32, True),
]
TINY_CASES = [("resnet18", 16, 4, False), ("mobilenet_v3_small", 32, 4, True)]


def _case(backbone: str, size: int, batch: int, bf16: bool, rounds: int) -> dict[str, Any]:
    cpu = torch.device("cpu")
    precision = torch.bfloat16 if bf16 else None

    def variant(amp: torch.dtype | None, service: bool) -> Callable[[], None]:
        layout = torch.channels_last
        return training_step(
            backbone, size, CLASSES, batch, amp, service=service, layout=layout, device=cpu
        )

    runs = {"plain": variant(precision, False), "service": variant(precision, True)}
    if bf16:
        runs["fp32"] = variant(None, True)
    seconds = fastest_alternated(runs, rounds)
    what = "fp32 depthwise" if bf16 else "single-position GEMMs"
    row = {
        "benchmark": "CPU convolutions",
        "setting": f"{backbone} {size}px {'bf16' if bf16 else 'fp32'}, batch {batch}: {what}",
        "reference img/s": batch / seconds["plain"],
        "service img/s": batch / seconds["service"],
        "ratio": seconds["plain"] / seconds["service"],
    }
    if bf16:
        row["fp32 img/s"] = batch / seconds["fp32"]
        row["reference ÷ fp32"] = seconds["fp32"] / seconds["plain"]
        row["service ÷ fp32"] = seconds["fp32"] / seconds["service"]
    return row


def run(tiny: bool) -> list[dict[str, Any]]:
    if tiny:
        return [_case(*case, rounds=1) for case in TINY_CASES]
    native = cpu_bf16_units() is not None
    return [
        _case(backbone, size, batch, bf16, rounds=ROUNDS)
        for backbone, size, batch, bf16 in CASES
        if native or not bf16
    ]
