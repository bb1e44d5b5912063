"""The model-alone rows' arithmetic (FLOP counts, TFLOP/s against matmuls), on the CPU."""

import pytest
import torch
from torch import nn

from benchmarks import train_throughput
from benchmarks.train_throughput import model_rows, step_flops


def test_a_step_counts_two_flops_per_multiply_add_forward_and_backward() -> None:
    layer = nn.Linear(10, 20, bias=False)
    x = torch.randn(4, 10, requires_grad=True)
    # forward x·Wᵀ, backward its gradients for x and for W: three 4×10×20 products
    assert step_flops(lambda: layer(x).sum().backward()) == 3 * 2 * 4 * 10 * 20
    frozen_input = torch.randn(4, 10)
    assert step_flops(lambda: layer(frozen_input).sum().backward()) == 2 * 2 * 4 * 10 * 20


def test_model_rows_set_the_step_against_matmuls_timed_in_the_same_run() -> None:
    (row,) = model_rows(
        torch.device("cpu"), ("resnet18",), size=32, batch=2, steps=1, matmul_side=64
    )
    assert row["benchmark"] == "CPU training steps, model alone"
    # Below 64 px the service trains in fp32 on every CPU: one ceiling for both sides
    assert row["setting"] == "resnet18 32px batch 2, fp32 + channels_last vs fp32"
    assert row["matmul TFLOP/s"] == row["fp32 matmul TFLOP/s"] > 0
    assert row["service img/s"] > 0 and row["reference img/s"] > 0 and row["ratio"] > 0
    assert row["of matmul"] == pytest.approx(row["TFLOP/s"] / row["matmul TFLOP/s"])
    # Both sides do the same FLOPs: their TFLOP/s stand in the ratio of their speeds
    speeds = row["service img/s"] / row["reference img/s"]
    assert row["TFLOP/s"] / row["reference TFLOP/s"] == pytest.approx(speeds)
    # ResNet18 at 32 px: ~37 MFLOP forward per image, three times that with the backward
    flops_per_image = row["TFLOP/s"] * 1e12 / row["service img/s"]
    assert 0.05e9 < flops_per_image < 0.2e9, flops_per_image
    assert row["peak CUDA MiB"] is None


def test_a_bf16_step_is_set_against_bf16_matmuls_and_the_reference_against_fp32(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # As on a CPU with native bf16 at 64 px and up; any CPU runs the arithmetic.
    monkeypatch.setattr(train_throughput, "resolve_amp", lambda *_: torch.bfloat16)
    timed: list[torch.dtype] = []

    def matmuls(device: torch.device, side: int, dtype: torch.dtype = torch.bfloat16) -> float:
        timed.append(dtype)
        return {torch.bfloat16: 2.0, torch.float32: 1.0}[dtype]

    monkeypatch.setattr(train_throughput, "matmul_tflops", matmuls)
    (row,) = model_rows(
        torch.device("cpu"), ("resnet18",), size=32, batch=2, steps=1, matmul_side=64
    )
    assert timed == [torch.bfloat16, torch.float32]
    assert row["setting"] == "resnet18 32px batch 2, bfloat16 + channels_last vs fp32"
    assert (row["matmul TFLOP/s"], row["fp32 matmul TFLOP/s"]) == (2.0, 1.0)
    assert row["of matmul"] == pytest.approx(row["TFLOP/s"] / 2)
    assert row["reference of matmul"] == pytest.approx(row["reference TFLOP/s"])
