"""Which reduced precision the hardware runs natively: shared by training and serving.

The API imports this one module of the training core lazily (when it loads a model for
predict), so that train and serve agree on what "auto" means on the same machine.
"""

import torch

# Below this side a CPU trains in fp32, whatever its bf16 units. ResNet18, batch 100, bf16 +
# channels_last over fp32 (2 threads): on an AMX Xeon 0.69× at 32 px, 1.23× at 64, 1.61× at
# 96, 1.74× at 128, 2.65× at 224 (its casts cost more than small convolutions gain). On an
# AVX512-BF16 EPYC without AMX the steps alone won from 16 px up (1.3-1.7× at 32 px), but
# whole 32 px epochs gained 0.96-1.48× in five runs (top-1 0.902 against 0.908 over four
# seeds), and of four 16 px runs one diverged (NaN weights in layer4, where the map is 1×1)
# and one lost 10 points of accuracy: too little speed for that risk (2026-12-01).
CPU_BF16_MIN_SIZE = 64


def resolve_amp(
    mode: str, device: torch.device, image_size: int | None = None
) -> torch.dtype | None:
    """The autocast dtype: bf16 where the hardware runs it natively, else fp16 on CUDA.

    On a CPU, bf16 only for images of at least CPU_BF16_MIN_SIZE (when the size is given).
    """
    if mode == "off":
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu":
        if image_size is not None and image_size < CPU_BF16_MIN_SIZE:
            return None
        return torch.bfloat16 if cpu_bf16_units() else None
    return None


def cpu_bf16_units() -> str | None:
    """What runs bf16 matrix math natively on this CPU: "AMX", "AVX512-BF16", or None."""
    if getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)():
        return "AMX"
    if getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)():
        return "AVX512-BF16"
    return None
