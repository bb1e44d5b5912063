"""Convolutions whose output is one spatial position, run as the matrix product they are.

oneDNN's backward is pathological for such shapes on CPUs. In ResNet18 at 32 px, layer4's
3×3 convolutions see a 1×1 input: on an AVX2 host (torch 2.14) each one's backward took
~125 ms against ~3 ms forward, half of the whole training step. With one output position
only the kernel taps that overlap the input see anything but padding, so the output is
`linear(input window, kernel window)`: the same parameters and the same maths (the other
taps' gradient is zero either way), one GEMM each way instead of oneDNN's slow path.
"""

import torch
from torch import Tensor, nn
from torch.nn import functional as F


def _window(conv: nn.Conv2d, size: tuple[int, ...]) -> tuple[tuple[int, int], ...] | None:
    """Per spatial dim (input positions used, first kernel tap) if the output is 1×1."""
    if (
        conv.groups != 1
        or conv.padding_mode != "zeros"
        or isinstance(conv.padding, str)
        or any(d != 1 for d in conv.dilation)
    ):
        return None
    window = []
    for n, k, s, p in zip(size, conv.kernel_size, conv.stride, conv.padding, strict=True):
        if not (k <= n + 2 * p < k + s) or p >= k:  # not one output position, or only padding
            return None
        window.append((min(n, k - p), p))
    return tuple(window)


class SinglePositionConv2d(nn.Conv2d):
    """nn.Conv2d that runs as one matrix product when its output is 1×1, else as usual.

    Installed by swapping the class of existing modules (as torch.nn.utils.parametrize
    does), so parameters, buffers and state_dict keys stay those of nn.Conv2d.
    """

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        window = _window(self, tuple(input.shape[-2:])) if input.dim() == 4 else None
        if window is None:
            return super()._conv_forward(input, weight, bias)
        (rows, top), (cols, left) = window
        x = input[:, :, :rows, :cols].flatten(1)
        w = weight[:, :, top : top + rows, left : left + cols].flatten(1)
        return F.linear(x, w, bias)[:, :, None, None]


def single_positions_as_matmul(model: nn.Module, device: torch.device) -> None:
    """On a CPU, make every plain nn.Conv2d of `model` a SinglePositionConv2d (in place).

    Elsewhere nothing changes: the slow path is oneDNN's, and cuDNN's benchmark mode
    already picks its algorithm per shape.
    """
    if device.type != "cpu":
        return
    for module in model.modules():
        if type(module) is nn.Conv2d:
            module.__class__ = SinglePositionConv2d
