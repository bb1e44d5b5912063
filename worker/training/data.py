"""Decode-once image cache and the datasets the training loop indexes.

Every image is decoded, oriented, converted to RGB and resized to `image_size`² exactly once
per dataset and size by `imaging.decode_image`, the function serving uses too. The result
is one uint8 array (N, 3, S, S) in a memory-mapped `.npy` file: decoding writes it row by
row and training reads only the rows of each batch, so memory stays bounded whatever the
dataset's size (the OS page cache keeps the hot part). Training then only indexes it: no
PIL, no DataLoader workers on the critical path.
"""

import os
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from worker.training.imaging import DECODER_VERSION, decode_image


@dataclass
class ImageSet:
    """Rows `index` of a (possibly memory-mapped) image tensor; subsets never copy pixels."""

    images: torch.Tensor  # uint8 (N_all, 3, S, S)
    labels: torch.Tensor  # int64 (N_all,)
    index: torch.Tensor | None = None  # rows of this set; None = all

    def rows(self) -> torch.Tensor:
        return torch.arange(len(self.labels)) if self.index is None else self.index

    def __len__(self) -> int:
        return len(self.labels) if self.index is None else len(self.index)

    def subset(self, positions: torch.Tensor) -> "ImageSet":
        """The set of this set's `positions` (0-based within this set)."""
        return ImageSet(self.images, self.labels, self.rows()[positions])

    def set_labels(self) -> torch.Tensor:
        return self.labels[self.rows()]


@dataclass
class TrainData:
    train: ImageSet
    val: ImageSet | None = None
    test: ImageSet | None = None


def _decode_into(
    out: np.ndarray,
    paths: Sequence[str | Path],
    size: int,
    threads: int,
    check: Callable[[], None] = lambda: None,
) -> None:
    """Decode `paths` into the rows of `out`, calling `check` after every image.

    `check` may raise to stop (a cancel, a shutdown): a first decode of a large dataset
    takes minutes, and a job must stop within seconds. At most a few images per thread are
    in flight, so what is left to finish after it raises is that much, not the dataset.
    """

    def work(i: int) -> None:
        out[i] = decode_image(paths[i], size)

    # PIL releases the GIL while decoding and resizing, so threads scale.
    with ThreadPoolExecutor(max_workers=threads) as pool:
        pending: deque[Future[None]] = deque()
        try:
            for i in range(len(paths)):
                if len(pending) >= 4 * threads:
                    pending.popleft().result()
                    check()
                pending.append(pool.submit(work, i))
            while pending:
                pending.popleft().result()
                check()
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise


def decode_images(paths: Sequence[str | Path], size: int, threads: int = 4) -> torch.Tensor:
    """Decode many images into memory (small sets, benchmarks, tests)."""
    out = np.empty((len(paths), 3, size, size), dtype=np.uint8)
    _decode_into(out, paths, size, threads)
    return torch.from_numpy(out)


def cache_file(cache: Path) -> Path:
    """The file `cached_images(cache, …)` keeps its decoded images in.

    The decoder's version is in the name: a cache made by an older normalisation would make
    training see other pixels than serving.
    """
    return cache.with_name(f"{cache.stem}-d{DECODER_VERSION}.npy")


def open_cached(cache: Path, count: int, size: int) -> torch.Tensor | None:
    """The `count` images `cached_images(cache, …)` decoded at `size`, or None if not made.

    A file of another shape (not what these images decode to) is deleted and answers None.
    """
    path = cache_file(cache)
    try:
        array = np.load(path, mmap_mode="c")  # copy-on-write: read lazily, never written back
    except FileNotFoundError:
        return None
    if array.shape != (count, 3, size, size):
        path.unlink(missing_ok=True)
        return None
    return torch.from_numpy(array)


def cached_images(
    cache: Path | None,
    paths: Sequence[str | Path],
    size: int,
    threads: int = 4,
    check: Callable[[], None] = lambda: None,
) -> torch.Tensor:
    """The decoded images of `paths`, memory-mapped from `cache` (made on first use).

    `check` is called as images are decoded and may raise to stop; then no file is left.
    """
    if cache is None:
        return decode_images(paths, size, threads)
    images = open_cached(cache, len(paths), size)
    if images is not None:
        return images
    path = cache_file(cache)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Unique across hosts' containers sharing the work volume, whose pids repeat.
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    out = np.lib.format.open_memmap(
        tmp, mode="w+", dtype=np.uint8, shape=(len(paths), 3, size, size)
    )
    try:
        _decode_into(out, paths, size, threads, check)
        out.flush()
        del out
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    images = open_cached(cache, len(paths), size)
    assert images is not None, path
    return images


def stratified_split(
    labels: torch.Tensor, fraction: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded per-class split: (train positions, val positions); each class keeps ≥1 in train
    and, when `fraction` > 0 and it has 2 images or more, gives ≥1 to val (a class of 2 at
    0.2 rounded to none, and a dataset of such classes had no validation at all)."""
    gen = torch.Generator().manual_seed(seed)
    train, val = [], []
    for cls in torch.unique(labels):
        idx = torch.nonzero(labels == cls).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        least = 1 if fraction > 0 else 0
        n_val = min(max(round(len(idx) * fraction), least), len(idx) - 1)
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return torch.cat(train).sort().values, torch.cat(val).sort().values
