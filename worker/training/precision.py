"""Which reduced precision the hardware runs natively: shared by training and serving.

The API imports this one module of the training core lazily (when it loads a model for
predict), so that train and serve agree on what "auto" means on the same machine.
"""

import torch


def resolve_amp(mode: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype: bf16 where the hardware runs it natively, else fp16 on CUDA."""
    if mode == "off":
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu":
        native = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
        amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
        return torch.bfloat16 if native or amx else None
    return None
