"""The GPU rows' arithmetic (FLOP counts, TFLOP/s against matmuls), checked on the CPU."""

import pytest
import torch
from torch import nn

from benchmarks.train_throughput import gpu_model_rows, step_flops


def test_a_step_counts_two_flops_per_multiply_add_forward_and_backward() -> None:
    layer = nn.Linear(10, 20, bias=False)
    x = torch.randn(4, 10, requires_grad=True)
    # forward x·Wᵀ, backward its gradients for x and for W: three 4×10×20 products
    assert step_flops(lambda: layer(x).sum().backward()) == 3 * 2 * 4 * 10 * 20
    frozen_input = torch.randn(4, 10)
    assert step_flops(lambda: layer(frozen_input).sum().backward()) == 2 * 2 * 4 * 10 * 20


def test_model_rows_set_the_step_against_matmuls_timed_in_the_same_run() -> None:
    (row,) = gpu_model_rows(
        torch.device("cpu"), ("resnet18",), size=32, batch=2, steps=1, matmul_side=64
    )
    assert row["setting"].startswith("resnet18 32px batch 2, ")
    assert row["service img/s"] > 0 and row["reference img/s"] > 0 and row["ratio"] > 0
    assert row["of matmul"] == pytest.approx(row["TFLOP/s"] / row["bf16 matmul TFLOP/s"])
    # ResNet18 at 32 px: ~37 MFLOP forward per image, three times that with the backward
    flops_per_image = row["TFLOP/s"] * 1e12 / row["service img/s"]
    assert 0.05e9 < flops_per_image < 0.2e9, flops_per_image
    assert row["peak CUDA MiB"] is None
