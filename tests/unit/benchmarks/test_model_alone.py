"""The GPU rows' arithmetic (FLOP counts, TFLOP/s against matmuls), checked on the CPU, and
the training benchmarks' independence from the service's web and queue packages."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from benchmarks.train_throughput import gpu_model_rows, step_flops

ROOT = Path(__file__).resolve().parents[3]


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


BLOCKED = ("app", "fastapi", "starlette", "celery", "kombu", "sqlalchemy", "httpx", "redis")


def test_training_benchmarks_need_no_service_packages(tmp_path: Path) -> None:
    # A GPU machine's stock PyTorch image has torch, torchvision, numpy, PIL, safetensors and
    # scikit-learn, none of the web or queue stack: `--only train` must run with that alone.
    out = tmp_path / "train.json"
    code = (
        "import sys\n"
        f"sys.modules.update(dict.fromkeys({BLOCKED!r}))\n"  # None: importing them fails
        "from benchmarks.run import main\n"
        f"main(['--only', 'train', '--tiny', '--out', {str(out)!r}])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [r["benchmark"] for r in rows] == ["training throughput"]
