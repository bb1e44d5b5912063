"""Decoded images live in the host cache: made once per dataset and size, within its budget."""

import json
import os
from pathlib import Path
from types import SimpleNamespace

from app.core.config import Settings
from app.core.storage import LocalStorage, host_cache
from tests.support.images import digit_png, digits
from worker.jobspec import load_data
from worker.training.spec import TrainSpec


def stored_dataset(storage: LocalStorage, dataset_id: str, per_class: int) -> SimpleNamespace:
    """A stored dataset folder as the API leaves it: files + manifest.json."""
    images, labels = digits()
    root = storage.path(f"datasets/{dataset_id}")
    entries = []
    for label in (0, 1):
        for i in [int(i) for i in (labels == label).nonzero()[0][:per_class]]:
            name = f"files/{label}/{i}.png"
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(digit_png(images[i], 16))
            entries.append({"file": name, "label": f"d{label}", "split": "train"})
    (root / "manifest.json").write_text(json.dumps({"entries": entries}))
    return SimpleNamespace(
        id=dataset_id, classes=["d0", "d1"], storage_key=f"datasets/{dataset_id}"
    )


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
