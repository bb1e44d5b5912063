"""The CPU convolutions: the same maths as nn.Conv2d, a faster kernel taken where it applies."""

import copy
import itertools
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torchvision import models

from worker.training.convs import CpuConv2d, cpu_convolutions
from worker.training.spec import TrainSpec
from worker.training.trainer import build_trainer

CPU = torch.device("cpu")


def _shapes() -> list[dict]:
    """Kernels, strides, paddings and inputs around the 1×1-output boundary, plus fallbacks."""
    cases = [
        {"kernel_size": k, "stride": s, "padding": p, "hw": (h, w), "bias": b, "gemm": p < k}
        for k, s, p, h, w, b in itertools.product(
            (1, 2, 3, 5), (1, 2, 3), (0, 1, 2, 3), (1, 2, 3), (1, 2, 4), (True, False)
        )
        if h + 2 * p >= k and w + 2 * p >= k
    ]
    cases += [  # never a GEMM: groups, dilation, another padding mode, string padding
        {"kernel_size": 3, "padding": 1, "hw": (1, 1), "groups": 2},
        {"kernel_size": 3, "padding": 2, "hw": (1, 1), "dilation": 2},
        {"kernel_size": 3, "stride": 2, "padding": 1, "hw": (2, 2), "padding_mode": "reflect"},
        {"kernel_size": 3, "padding": "same", "hw": (1, 1)},
    ]
    cases += [
        {"kernel_size": (3, 1), "stride": (1, 2), "padding": (1, 0), "hw": (1, 2), "gemm": True}
    ]
    return cases


def test_every_shape_gives_conv2ds_output_and_gradients() -> None:
    torch.manual_seed(0)
    gemms = 0
    for case in _shapes():
        hw, gemm = case.pop("hw"), case.pop("gemm", False)
        reference = nn.Conv2d(4, 6, **case).double()
        ours = copy.deepcopy(reference)
        ours.__class__ = CpuConv2d
        x = torch.randn(3, 4, *hw, dtype=torch.double, requires_grad=True)
        x_ours = x.detach().clone().requires_grad_()
        expected, got = reference(x), ours(x_ours)
        assert got.shape == expected.shape, case
        # A GEMM exactly where the output is one position that sees more than padding.
        took_gemm = type(got.grad_fn).__name__ != "ConvolutionBackward0"
        assert took_gemm == (gemm and expected.shape[-2:] == (1, 1)), case
        gemms += took_gemm
        grad = torch.randn_like(expected)
        expected.backward(grad)
        got.backward(grad)
        torch.testing.assert_close(got, expected, msg=str(case))
        torch.testing.assert_close(x_ours.grad, x.grad, msg=str(case))
        for name, param in reference.named_parameters():
            torch.testing.assert_close(ours.get_parameter(name).grad, param.grad, msg=str(case))
    assert gemms > 100


def test_resnet18_at_32px_trains_alike_and_keeps_its_state_dict() -> None:
    torch.manual_seed(0)
    reference = models.resnet18(num_classes=10).double()
    ours = copy.deepcopy(reference)
    cpu_convolutions(ours, CPU)
    swapped = [m for m in ours.modules() if isinstance(m, CpuConv2d)]
    assert len(swapped) == sum(isinstance(m, nn.Conv2d) for m in reference.modules()) == 20
    assert list(ours.state_dict()) == list(reference.state_dict())

    x = torch.randn(4, 3, 32, 32, dtype=torch.double)  # layer4 runs on 1×1 maps
    y = torch.tensor([0, 3, 5, 9])
    for model in (reference, ours):
        nn.functional.cross_entropy(model(x), y).backward()
    torch.testing.assert_close(ours(x), reference(x))
    for name, param in reference.named_parameters():
        torch.testing.assert_close(ours.get_parameter(name).grad, param.grad, msg=name)


@pytest.mark.parametrize("backbone", ["resnet18", "mobilenet_v3_small"])
def test_the_cpu_trainer_trains_through_them(backbone: str) -> None:
    spec = TrainSpec(backbone=backbone, classes=("a", "b"), image_size=32, device="cpu")
    model = build_trainer(spec, steps_per_epoch=1).model
    assert all(type(m) is CpuConv2d for m in model.modules() if isinstance(m, nn.Conv2d))


def _depthwise(groups: int = 8) -> tuple[nn.Conv2d, nn.Conv2d]:
    torch.manual_seed(0)
    reference = nn.Conv2d(8, 16, 3, padding=1, groups=groups)
    ours = copy.deepcopy(reference)
    cpu_convolutions(ours, CPU)
    return reference, ours


def test_depthwise_trains_in_fp32_under_bf16_autocast() -> None:
    reference, ours = _depthwise()
    x = torch.randn(2, 8, 5, 5).bfloat16()  # what the layer before hands on under autocast
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert reference(x).dtype == torch.bfloat16
        got = ours(x)
    assert got.dtype == torch.float32
    expected = reference(x.float())  # fp32 input (bf16 values), fp32 kernel
    torch.testing.assert_close(got, expected)
    grad = torch.randn_like(expected)
    got.backward(grad)
    expected.backward(grad)
    for name, param in reference.named_parameters():
        torch.testing.assert_close(ours.get_parameter(name).grad, param.grad, msg=name)


def test_depthwise_is_left_to_autocast_without_gradients_or_for_other_groups() -> None:
    ours = _depthwise()[1]
    x = torch.randn(2, 8, 5, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with torch.no_grad():
            assert ours(x).dtype == torch.bfloat16  # inference: bf16 measured faster
        assert _depthwise(groups=2)[1](x).dtype == torch.bfloat16  # grouped, not depthwise
        assert ours.double()(x.double()).dtype == torch.float64  # never lowered


@pytest.mark.parametrize("device", ["cuda", "meta"])
def test_other_devices_keep_their_convolutions(device: str) -> None:
    model = models.resnet18(num_classes=10)
    cpu_convolutions(model, torch.device(device))
    assert not any(isinstance(m, CpuConv2d) for m in model.modules())


def test_subclasses_of_conv2d_are_left_alone() -> None:
    class Custom(nn.Conv2d):
        pass

    model = nn.Sequential(Custom(3, 4, 3), nn.Conv2d(4, 4, 3))
    cpu_convolutions(model, CPU)
    assert type(model[0]) is Custom and type(model[1]) is CpuConv2d


def test_a_bf16_training_step_runs_only_the_depthwise_layers_in_fp32() -> None:
    spec = TrainSpec(backbone="mobilenet_v3_small", classes=("a", "b"), image_size=32, device="cpu")
    trainer = build_trainer(spec, steps_per_epoch=1)
    trainer.amp = torch.bfloat16  # what `auto` picks on CPUs with native bf16 units
    dtypes: dict[bool, set[torch.dtype]] = {True: set(), False: set()}
    for module in trainer.model.modules():
        if isinstance(module, nn.Conv2d):
            depthwise = module.groups == module.in_channels > 1
            module.register_forward_hook(lambda m, i, out, d=depthwise: dtypes[d].add(out.dtype))
    x = torch.randn(4, 3, 32, 32).to(memory_format=torch.channels_last)
    loss = trainer._step(x, torch.tensor([0, 1, 0, 1]), SimpleNamespace(on_batch=lambda n: None))
    assert dtypes == {True: {torch.float32}, False: {torch.bfloat16}}
    assert loss.isfinite()
    assert all(p.grad.isfinite().all() for p in trainer.model.parameters() if p.grad is not None)
