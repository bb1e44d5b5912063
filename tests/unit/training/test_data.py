"""Decode-once cache, stratified split and device-side batches."""

from pathlib import Path

import pytest
import torch
from PIL import Image

from worker.training import data
from worker.training.batches import DeviceBatches, FeatureBatches, random_resized_flip
from worker.training.data import ImageSet, cached_images, stratified_split


def _draw(path: Path, color: tuple[int, int, int], mode: str = "RGB", size=(40, 20)) -> Path:  # type: ignore[no-untyped-def]
    Image.new("RGB", size, color).convert(mode).save(path)
    return path


def test_images_are_decoded_once_and_cached(tmp_path: Path) -> None:
    paths = [
        _draw(tmp_path / "a.png", (255, 0, 0)),
        _draw(tmp_path / "b.png", (0, 0, 255), mode="L"),
        _draw(tmp_path / "c.png", (0, 255, 0), mode="P"),
    ]
    cache = tmp_path / "cache" / "8.npy"
    images = cached_images(cache, paths, 8, threads=2)
    assert images.shape == (3, 3, 8, 8) and images.dtype == torch.uint8
    assert images[0, :, 0, 0].tolist() == [255, 0, 0]
    assert images[1, 0, 0, 0] == images[1, 1, 0, 0] == images[1, 2, 0, 0]  # grey → RGB
    assert len(list((tmp_path / "cache").glob("8-d*.npy"))) == 1  # named by the decoder version
    assert not list((tmp_path / "cache").glob(".*tmp"))
    for p in paths:
        p.unlink()  # a second call must not need the files any more
    assert torch.equal(cached_images(cache, paths, 8), images)


class _Stop(Exception):
    pass


def test_a_check_that_raises_stops_the_decode_and_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A cancel or shutdown mid-decode: the rest of a large dataset is not decoded, and
    # neither a cache file (it would be taken as complete) nor a temporary file stays.
    paths = [_draw(tmp_path / f"{i}.png", (i, 0, 0)) for i in range(200)]
    decoded: list[str] = []
    decode = data.decode_image

    def counted(path: Path, size: int) -> object:
        decoded.append(str(path))
        return decode(path, size)

    monkeypatch.setattr(data, "decode_image", counted)
    calls = 0

    def check() -> None:
        nonlocal calls
        calls += 1
        if calls == 10:
            raise _Stop

    cache = tmp_path / "cache" / "8.npy"
    with pytest.raises(_Stop):
        cached_images(cache, paths, 8, threads=2, check=check)
    # 10 checked, at most 4 per thread queued behind them: the pool's queue is dropped.
    assert len(decoded) <= 10 + 4 * 2, len(decoded)
    assert not list((tmp_path / "cache").iterdir())
    monkeypatch.undo()
    images = cached_images(cache, paths, 8, threads=2, check=check)  # made whole later
    assert images[199, :, 0, 0].tolist() == [199, 0, 0] and calls == 210


def test_stratified_split_keeps_every_class_in_train() -> None:
    labels = torch.tensor([0] * 10 + [1] * 5 + [2] * 1)
    train, val = stratified_split(labels, 0.2, seed=3)
    assert sorted(torch.cat([train, val]).tolist()) == list(range(16))
    assert (
        (labels[val] == 0).sum() == 2
        and (labels[val] == 1).sum() == 1
        and (labels[val] == 2).sum() == 0
    )
    again, _ = stratified_split(labels, 0.2, seed=3)
    assert torch.equal(train, again)


def test_every_class_of_two_images_or_more_gives_one_to_validation() -> None:
    # 2 × 0.2 rounds to 0: a dataset of such small classes got no validation set at all.
    labels = torch.tensor([0] * 2 + [1] * 3 + [2] * 1)
    train, val = stratified_split(labels, 0.2, seed=0)
    assert sorted(labels[val].tolist()) == [0, 1] and set(labels[train].tolist()) == {0, 1, 2}
    _, none = stratified_split(labels, 0.0, seed=0)
    assert len(none) == 0


def test_device_batches_normalise_in_channels_last() -> None:
    data = ImageSet(torch.full((5, 3, 4, 4), 255, dtype=torch.uint8), torch.arange(5))
    batches = DeviceBatches(data, torch.device("cpu"), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    out = list(
        batches.iterate(2, shuffle=True, drop_last=True, generator=torch.Generator().manual_seed(0))
    )
    assert len(out) == batches.steps(2, drop_last=True) == 2
    x, _y = out[0]
    assert x.is_contiguous(memory_format=torch.channels_last) and torch.allclose(
        x, torch.ones_like(x)
    )
    assert len({int(v) for _, ys in out for v in ys}) == 4


def test_augmentation_is_batched_and_seeded() -> None:
    x = torch.rand(6, 3, 16, 16)
    a = random_resized_flip(x, torch.Generator().manual_seed(1))
    b = random_resized_flip(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, x)


def test_subsets_index_without_copying_pixels() -> None:
    images = torch.arange(6 * 3 * 2 * 2, dtype=torch.uint8).view(6, 3, 2, 2)
    full = ImageSet(images, torch.tensor([0, 1, 0, 1, 0, 1]))
    odd = full.subset(torch.tensor([1, 3, 5]))
    last_two = odd.subset(torch.tensor([1, 2]))
    assert last_two.images is images and last_two.rows().tolist() == [3, 5]
    assert last_two.set_labels().tolist() == [1, 1] and len(last_two) == 2
    batches = DeviceBatches(last_two, torch.device("cpu"), mean=(0, 0, 0), std=(1 / 255,) * 3)
    ((x, y),) = list(batches.iterate(8))
    assert torch.equal(x, images[[3, 5]].float()) and y.tolist() == [1, 1]


def test_feature_batches_shuffle_features_and_labels_together() -> None:
    features = torch.arange(10.0).view(10, 1)
    batches = FeatureBatches(features, torch.arange(10))
    seen = list(
        batches.iterate(4, shuffle=True, drop_last=True, generator=torch.Generator().manual_seed(0))
    )
    assert len(seen) == 2
    for x, y in seen:
        assert torch.equal(x.flatten().long(), y)


def test_cached_images_are_memory_mapped_not_loaded(tmp_path: Path) -> None:
    paths = [_draw(tmp_path / f"{i}.png", (i, 0, 0)) for i in range(4)]
    images = cached_images(tmp_path / "cache" / "8.npy", paths, 8, threads=2)
    (cache,) = (tmp_path / "cache").glob("8-d*.npy")
    pointer = images.data_ptr()
    mapped = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split()
        if len(fields) >= 6 and fields[5] == str(cache):
            start, end = (int(v, 16) for v in fields[0].split("-"))
            mapped.append(start <= pointer < end)
    assert any(mapped), "the image tensor must live in the file mapping, not in a heap copy"
