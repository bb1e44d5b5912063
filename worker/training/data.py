"""Decode-once image cache, device-side batching, augmentation and normalisation.

Every image is decoded, oriented, converted to RGB and resized to `image_size`² exactly once
per dataset and size by `imaging.decode_image`, the function serving uses too; the result
is one uint8 tensor (N, 3, S, S), cached as safetensors.
Training then only indexes that tensor: no PIL, no DataLoader workers on the critical path.
"""

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

from worker.training.checkpoint import atomic_write
from worker.training.imaging import DECODER_VERSION, decode_image


@dataclass
class ImageSet:
    images: torch.Tensor  # uint8 (N, 3, S, S)
    labels: torch.Tensor  # int64 (N,)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, index: torch.Tensor) -> "ImageSet":
        return ImageSet(self.images[index], self.labels[index])


@dataclass
class TrainData:
    train: ImageSet
    val: ImageSet | None = None
    test: ImageSet | None = None


def decode_images(paths: Sequence[str | Path], size: int, threads: int = 4) -> torch.Tensor:
    """Decode many images in threads (PIL releases the GIL while decoding and resizing)."""
    out = np.empty((len(paths), 3, size, size), dtype=np.uint8)

    def work(i: int) -> None:
        out[i] = decode_image(paths[i], size)

    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(work, range(len(paths))))
    return torch.from_numpy(out)


def cached_images(
    cache: Path | None, paths: Sequence[str | Path], size: int, threads: int = 4
) -> torch.Tensor:
    """The decoded tensor for `paths`, read from `cache` when an earlier job made it."""
    if cache is not None and cache.exists():
        with safe_open(str(cache), framework="pt") as fh:
            # A cache decoded by an older normalisation would skew training from serving.
            if (fh.metadata() or {}).get("decoder") == DECODER_VERSION:
                images = fh.get_tensor("images")
                if images.shape == (len(paths), 3, size, size):
                    return images
    images = decode_images(paths, size, threads)
    if cache is not None:
        meta = {"decoder": DECODER_VERSION}
        atomic_write(cache, lambda tmp: save_file({"images": images}, str(tmp), metadata=meta))
    return images


def stratified_split(
    labels: torch.Tensor, fraction: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded per-class split: (train indices, val indices); each class keeps ≥1 train image."""
    gen = torch.Generator().manual_seed(seed)
    train, val = [], []
    for cls in torch.unique(labels):
        idx = torch.nonzero(labels == cls).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        n_val = min(round(len(idx) * fraction), len(idx) - 1)
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return torch.cat(train).sort().values, torch.cat(val).sort().values


class DeviceBatches:
    """Batches of one ImageSet on the training device, normalised, channels_last.

    On CUDA the uint8 tensor moves to the GPU once when it fits, otherwise it stays in
    pinned host memory and each batch is copied with `non_blocking=True`.
    """

    def __init__(
        self,
        data: ImageSet,
        device: torch.device,
        mean: Sequence[float],
        std: Sequence[float],
        gpu_fraction: float = 0.3,
    ) -> None:
        self.device = device
        images, labels = data.images, data.labels
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            if images.numel() < free * gpu_fraction:
                images = images.to(device)
            else:
                images = images.pin_memory()
            labels = labels.to(device)
        self.images, self.labels = images, labels
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1) * 255

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def steps(self, batch_size: int, drop_last: bool) -> int:
        n = len(self)
        return max(1, n // batch_size) if drop_last else -(-n // batch_size)

    def iterate(
        self,
        batch_size: int,
        *,
        shuffle: bool = False,
        drop_last: bool = False,
        generator: torch.Generator | None = None,
        augment: torch.Generator | None = None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield (float images, labels); `augment` is the device RNG, None for no augmentation."""
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        order = order.to(self.images.device)
        steps = self.steps(batch_size, drop_last)
        for step in range(steps):
            idx = order[step * batch_size : (step + 1) * batch_size]
            x = self.images.index_select(0, idx)
            if x.device != self.device:
                x = x.pin_memory().to(self.device, non_blocking=True)
            x = x.float()
            if augment is not None:
                x = random_resized_flip(x, augment)
            x = ((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last)
            yield x, self.labels.index_select(0, idx.to(self.labels.device))


def random_resized_flip(
    x: torch.Tensor, gen: torch.Generator, min_scale: float = 0.6
) -> torch.Tensor:
    """Batched random crop (side scale in [min_scale, 1]), shift and horizontal flip.

    One affine grid_sample for the whole batch on the batch's device: the GPU-side
    equivalent of RandomResizedCrop + RandomHorizontalFlip, without a per-image loop.
    """
    b = x.shape[0]
    rand = torch.rand(b, 4, generator=gen, device=x.device)
    scale = min_scale + (1 - min_scale) * rand[:, 0]
    flip = torch.where(rand[:, 1] < 0.5, -1.0, 1.0)
    shift_x = (rand[:, 2] * 2 - 1) * (1 - scale)
    shift_y = (rand[:, 3] * 2 - 1) * (1 - scale)
    theta = torch.zeros(b, 2, 3, device=x.device)
    theta[:, 0, 0] = scale * flip
    theta[:, 0, 2] = shift_x
    theta[:, 1, 1] = scale
    theta[:, 1, 2] = shift_y
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
