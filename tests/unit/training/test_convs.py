"""Single-position convolutions as GEMMs: the same maths as nn.Conv2d, taken where it applies."""

import copy
import itertools

import pytest
import torch
from torch import nn
from torchvision import models

from worker.training.convs import SinglePositionConv2d, single_positions_as_matmul
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
        ours.__class__ = SinglePositionConv2d
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
    single_positions_as_matmul(ours, CPU)
    swapped = [m for m in ours.modules() if isinstance(m, SinglePositionConv2d)]
    assert len(swapped) == sum(isinstance(m, nn.Conv2d) for m in reference.modules()) == 20
    assert list(ours.state_dict()) == list(reference.state_dict())

    x = torch.randn(4, 3, 32, 32, dtype=torch.double)  # layer4 runs on 1×1 maps
    y = torch.tensor([0, 3, 5, 9])
    for model in (reference, ours):
        nn.functional.cross_entropy(model(x), y).backward()
    torch.testing.assert_close(ours(x), reference(x))
    for name, param in reference.named_parameters():
        torch.testing.assert_close(ours.get_parameter(name).grad, param.grad, msg=name)


def test_the_cpu_trainer_trains_through_them() -> None:
    spec = TrainSpec(backbone="resnet18", classes=("a", "b"), image_size=32, device="cpu")
    model = build_trainer(spec, steps_per_epoch=1).model
    assert all(type(m) is SinglePositionConv2d for m in model.modules() if isinstance(m, nn.Conv2d))


@pytest.mark.parametrize("device", ["cuda", "meta"])
def test_other_devices_keep_their_convolutions(device: str) -> None:
    model = models.resnet18(num_classes=10)
    single_positions_as_matmul(model, torch.device(device))
    assert not any(isinstance(m, SinglePositionConv2d) for m in model.modules())


def test_subclasses_of_conv2d_are_left_alone() -> None:
    class Custom(nn.Conv2d):
        pass

    model = nn.Sequential(Custom(3, 4, 3), nn.Conv2d(4, 4, 3))
    single_positions_as_matmul(model, CPU)
    assert type(model[0]) is Custom and type(model[1]) is SinglePositionConv2d
