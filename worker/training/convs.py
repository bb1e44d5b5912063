"""Two convolution shapes that oneDNN trains slowly on CPUs, each run the fast way.

Single output position. oneDNN's backward is pathological for convolutions whose output is
1×1. In ResNet18 at 32 px, layer4's 3×3 convolutions see a 1×1 input: on an AVX2 host
(torch 2.14) each one's backward took ~125 ms against ~3 ms forward, half of the whole
training step. With one output position only the kernel taps that overlap the input see
anything but padding, so the output is `linear(input window, kernel window)`: the same
parameters and the same maths (the other taps' gradient is zero either way), one GEMM each
way instead of oneDNN's slow path.

Depthwise under bf16 autocast. oneDNN's bf16 depthwise convolutions trained 1.3-3.8×
slower than fp32 ones on an AMX Xeon (forward and backward, MobileNetV3 and EfficientNet
shapes), enough to make whole bf16 steps of MobileNetV3-Small 0.48× fp32's at 64 px and
EfficientNet-B0's 0.74× at 128 px. Run in fp32 inside bf16 training, they turned those
into 0.96× and 1.15×, and lifted EfficientNet-B0 at 224 px from 1.26× to 1.56× and
ConvNeXt-T from 1.68× to 2.29× (2026-12-02). Only while gradients are recorded: inference
keeps autocast's bf16 (whole bf16 forwards of the same models ran 1.25-1.35× fp32's; fp32
depthwise layers there are not measured yet).
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


class CpuConv2d(nn.Conv2d):
    """nn.Conv2d with the CPU kernel choices of this module's docstring, else as usual.

    Installed by swapping the class of existing modules (as torch.nn.utils.parametrize
    does), so parameters, buffers and state_dict keys stay those of nn.Conv2d.
    """

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        if (
            self.groups > 1
            and self.groups == self.in_channels
            and torch.is_grad_enabled()
            and torch.is_autocast_enabled("cpu")
        ):
            with torch.autocast("cpu", enabled=False):  # in the parameters' precision
                return super()._conv_forward(input.to(weight.dtype), weight, bias)
        window = _window(self, tuple(input.shape[-2:])) if input.dim() == 4 else None
        if window is None:
            return super()._conv_forward(input, weight, bias)
        (rows, top), (cols, left) = window
        x = input[:, :, :rows, :cols].flatten(1)
        w = weight[:, :, top : top + rows, left : left + cols].flatten(1)
        return F.linear(x, w, bias)[:, :, None, None]


def cpu_convolutions(model: nn.Module, device: torch.device) -> None:
    """On a CPU, make every plain nn.Conv2d of `model` a CpuConv2d (in place).

    Elsewhere nothing changes: both slow paths are oneDNN's, and cuDNN's benchmark mode
    already picks its algorithm per shape.
    """
    if device.type != "cpu":
        return
    for module in model.modules():
        if type(module) is nn.Conv2d:
            module.__class__ = CpuConv2d
