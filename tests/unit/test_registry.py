"""Which input sizes a backbone takes, found on the meta device before any worker trains."""

import hashlib
from pathlib import Path

import pytest

from app.core import registry
from tests.support.webserver import serving


def test_a_vit_takes_only_its_own_size() -> None:
    assert registry.input_size_problem("vit_b_16", 224) is None
    problem = registry.input_size_problem("vit_b_16", 32)
    assert problem is not None and "Expected 224 but got 32" in problem


def test_small_maps_vanish_in_deep_cnns_but_not_in_resnets() -> None:
    assert registry.input_size_problem("resnet18", 16) is None
    assert registry.input_size_problem("alexnet", 64) is None
    problem = registry.input_size_problem("alexnet", 32)
    assert problem is not None and "too small" in problem


def test_a_builder_that_needs_real_tensors_is_not_judged() -> None:
    # RegNet computes its widths with tensors while it is built: nothing to learn on meta.
    with pytest.raises(NotImplementedError):
        registry._forward_problem("regnet_x_400mf", 224, train=False)
    assert registry.input_size_problem("regnet_x_400mf", 16) is None


def test_inceptions_auxiliary_head_is_judged_as_training_runs_it() -> None:
    """Eval mode skips it, so 224 px looked fine and the job failed at its first step."""
    problem = registry.input_size_problem("inception_v3", 224)
    assert problem is not None and "Kernel size" in problem
    assert registry.input_size_problem("inception_v3", 299) is None


def test_weights_for_another_vit_size_are_a_problem() -> None:
    """SWAG end-to-end ViT weights build a 384 px (or larger) ViT: they fit no 224 px one."""
    problem = registry.weights_problem("vit_b_16", "IMAGENET1K_SWAG_E2E_V1")
    assert problem is not None and "384" in problem
    assert registry.weights_problem("vit_h_14", "DEFAULT") is not None  # 518 px by default
    assert registry.weights_problem("vit_b_16", "IMAGENET1K_SWAG_LINEAR_V1") is None
    assert registry.weights_problem("resnet18", "DEFAULT") is None
    assert registry.weights_problem("regnet_x_400mf", "DEFAULT") is None  # not judged on meta


def test_one_image_on_a_one_pixel_map_is_the_batch_sizes_problem() -> None:
    assert registry.input_size_problem("resnet18", 32) is None
    problem = registry.input_size_problem("resnet18", 32, batch=1)
    assert problem is not None and "more than 1 value per channel" in problem
    assert registry.input_size_problem("resnet18", 64, batch=1) is None


def test_a_weights_file_downloads_into_torch_home_checked_against_its_hash(
    tmp_path: Path,
) -> None:
    """As torchvision would fetch it: under its own name, its sha256 prefix checked, and
    never half there. A local server stands in for download.pytorch.org."""
    data = b"the weights"
    good = f"resnet18-{hashlib.sha256(data).hexdigest()[:8]}.pth"
    bad = "resnet18-00000000.pth"
    web = tmp_path / "web"
    web.mkdir()
    for name in (good, bad):
        (web / name).write_bytes(data)
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    with serving(web) as base:
        registry.download(registry.ResolvedWeights("W", str(cache / good), f"{base}/{good}"))
        assert (cache / good).read_bytes() == data
        with pytest.raises(RuntimeError, match="invalid hash"):
            registry.download(registry.ResolvedWeights("W", str(cache / bad), f"{base}/{bad}"))
        big = b"x" * (3 << 20)  # a cancel or shutdown stops a long download, leaving nothing
        name = f"vit-{hashlib.sha256(big).hexdigest()[:8]}.pth"
        (web / name).write_bytes(big)

        def stop() -> None:
            raise InterruptedError

        with pytest.raises(InterruptedError):
            registry.download(
                registry.ResolvedWeights("W", str(cache / name), f"{base}/{name}"), stop
            )
    assert sorted(p.name for p in cache.iterdir()) == [good]
