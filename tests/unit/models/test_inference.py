"""Serving precision: fp32 is exactly the torch model; auto follows the hardware."""

from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision import models

from app.core.storage import sha256_file
from app.models.inference import ModelCache
from worker.training.checkpoint import save_weights, weights_metadata
from worker.training.precision import resolve_amp
from worker.training.spec import TrainSpec

SIZE = 64  # CPU bf16 starts here (precision.CPU_BF16_MIN_SIZE): "auto" is tested as such


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(0)
    net = models.get_model("resnet18", weights=None, num_classes=3).eval()
    spec = TrainSpec(backbone="resnet18", classes=("a", "b", "c"), image_size=SIZE)
    path = tmp_path_factory.mktemp("w") / "m.safetensors"
    save_weights(path, net.state_dict(), weights_metadata(spec, job_id="job_x", epoch=1))
    return path, net


def _probs(path: Path, precision: str, x: np.ndarray) -> tuple[object, np.ndarray]:
    cache = ModelCache(1, "cpu", precision=precision)
    loaded = cache.get("m", lambda: path, sha256_file(path))
    return loaded.amp, loaded.probabilities(x)


def test_fp32_serves_exactly_what_torch_computes(weights: tuple[Path, torch.nn.Module]) -> None:
    path, net = weights
    x = np.random.default_rng(0).standard_normal((4, 3, SIZE, SIZE)).astype(np.float32)
    amp, probs = _probs(path, "fp32", x)
    with torch.inference_mode():
        expected = torch.softmax(net(torch.from_numpy(x)), dim=1).numpy()
    assert amp is None
    np.testing.assert_allclose(probs, expected, atol=1e-5)


def test_auto_uses_the_native_precision_and_stays_close(
    weights: tuple[Path, torch.nn.Module],
) -> None:
    path, _ = weights
    x = np.random.default_rng(1).standard_normal((8, 3, SIZE, SIZE)).astype(np.float32)
    amp, probs = _probs(path, "auto", x)
    assert amp == resolve_amp("auto", torch.device("cpu"), SIZE)
    _, exact = _probs(path, "fp32", x)
    np.testing.assert_allclose(probs, exact, atol=2e-2)
    assert np.allclose(probs.sum(axis=1), 1, atol=1e-5)
