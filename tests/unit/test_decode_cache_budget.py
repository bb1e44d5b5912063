"""Decoded images live in the host cache: made once per dataset and size, within its budget."""

import os
from pathlib import Path
from types import SimpleNamespace

from app.core.config import Settings
from app.core.storage import LocalStorage, host_cache
from tests.support.images import stored_digits
from worker.jobspec import load_data
from worker.training.spec import TrainSpec


def stored_dataset(storage: LocalStorage, dataset_id: str, per_class: int) -> SimpleNamespace:
    key = f"datasets/{dataset_id}"
    classes = stored_digits(storage.path(key), per_class)
    return SimpleNamespace(id=dataset_id, classes=classes, storage_key=key)


def test_decoded_images_beyond_the_budget_are_evicted_oldest_first(tmp_path: Path) -> None:
    # 20 images of 3×S×S bytes: 15 kB at 16 px, 35 kB at 24 px, 61 kB at 32 px.
    settings = Settings(data_dir=tmp_path, cache_max_size=70_000)
    storage = LocalStorage(tmp_path / "artifacts")
    dataset = stored_dataset(storage, "ds_a", per_class=10)
    cache = host_cache(settings)

    def load(size: int) -> None:
        spec = TrainSpec(backbone="resnet18", classes=("d0", "d1"), image_size=size)
        data = load_data(settings, storage, dataset, spec, 0.2)  # type: ignore[arg-type]
        assert len(data.train) + len(data.val or ()) == 20

    load(16)
    load(24)
    names = sorted(name for _, _, name in cache.entries())
    assert names == [n for n in names if n.startswith("decoded-ds_a-")] and len(names) == 2
    for name in names:  # long unused, as after a weekend
        os.utime(cache.path(name), (1, 1))
    load(32)  # 61 kB more: neither older one fits beside it
    left = [name for _, _, name in cache.entries()]
    assert len(left) == 1 and left[0].startswith("decoded-ds_a-32px")
    load(32)  # the cached copy is used, not remade
    assert [name for _, _, name in cache.entries()] == left
