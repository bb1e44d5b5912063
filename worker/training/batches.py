"""Batches on the training device: images (normalised, augmented, channels_last) or features."""

from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F

from worker.training.data import ImageSet


class Batches:
    """What the loop iterates: a sized set that yields (inputs, labels) batches."""

    labels: torch.Tensor

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
        """Yield (inputs, labels); `augment` is the device RNG, None for no augmentation."""
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        for step in range(self.steps(batch_size, drop_last)):
            yield self._batch(order[step * batch_size : (step + 1) * batch_size], augment)

    def _batch(
        self, pos: torch.Tensor, augment: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch of these positions (0-based within the set)."""
        raise NotImplementedError


class DeviceBatches(Batches):
    """Batches of one ImageSet on the training device, normalised, channels_last.

    On CUDA the set's uint8 rows move to the GPU once when they fit; otherwise each batch is
    gathered on the host, pinned and copied with `non_blocking=True`.
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
        self.images, self.rows = data.images, data.rows()
        self.labels = data.set_labels().to(device)
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            if len(self.rows) * self.images[0].numel() < free * gpu_fraction:
                self.images = self.images.index_select(0, self.rows).to(device)
                self.rows = torch.arange(len(self.rows), device=device)
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1) * 255

    def _batch(
        self, pos: torch.Tensor, augment: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.images.index_select(0, self.rows[pos.to(self.rows.device)])
        if x.device != self.device:
            x = x.pin_memory().to(self.device, non_blocking=True)
        x = x.float()
        if augment is not None:
            x = random_resized_flip(x, augment)
        x = ((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last)
        return x, self.labels.index_select(0, pos.to(self.labels.device))


class FeatureBatches(Batches):
    """Batches of precomputed backbone features (linear probe without augmentation)."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        self.features, self.labels = features, labels

    def _batch(
        self, pos: torch.Tensor, augment: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        pos = pos.to(self.features.device)
        return self.features.index_select(0, pos), self.labels.index_select(0, pos)


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
