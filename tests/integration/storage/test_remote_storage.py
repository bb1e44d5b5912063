"""RemoteStorage against a real S3 server: two 'hosts' (cache folders) share one bucket."""

import os
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from app.core.config import Settings
from app.core.hostcache import HostCache
from app.core.objectstore import S3Storage
from app.core.storage import RemoteStorage, get_storage, host_cache
from tests.integration.storage.conftest import S3
from tests.support.files import write_tree
from tests.support.images import stored_digits
from worker.jobspec import load_data
from worker.training.spec import TrainSpec

pytestmark = pytest.mark.integration


@pytest.fixture
def url(s3: S3, request: pytest.FixtureRequest) -> str:
    return f"s3://{s3.bucket}/{request.node.name}"


def host(url: str, s3: S3, root: Path, budget: int = 2**30) -> RemoteStorage:
    return S3Storage(url, HostCache(root / "cache", budget), root / "workspaces", s3.options)


def test_settings_pick_the_remote_backend(tmp_path: Path, s3: S3, url: str) -> None:
    settings = Settings(data_dir=tmp_path, storage_url=url, storage_options=s3.options)
    storage = get_storage(settings)
    assert isinstance(storage, S3Storage)
    assert storage.writable()
    assert storage.cache.root == (tmp_path / "work" / "cache").resolve()
    assert storage.cache.max_bytes == settings.cache_max_size


def test_a_file_put_on_one_host_reads_back_on_another(tmp_path: Path, s3: S3, url: str) -> None:
    a, b = host(url, s3, tmp_path / "a"), host(url, s3, tmp_path / "b")
    src = a.staging() / "w.bin"
    src.write_bytes(b"\x00weights" * 1000)
    a.put_file(src, "models/m1/weights.safetensors")
    assert not src.exists(), "the staged file is consumed"
    assert s3.keys(url.split("/", 3)[3]) == [
        f"{url.split('/', 3)[3]}/models/m1/weights.safetensors"
    ]
    copy = b.local("models/m1/weights.safetensors")
    assert copy.read_bytes() == b"\x00weights" * 1000
    assert copy.is_relative_to(b.cache.root)
    assert not list(a.cache.root.glob("stored-*")), "writes are not cached"
    assert b.exists("models/m1/weights.safetensors")


def test_a_directory_travels_whole(tmp_path: Path, s3: S3, url: str) -> None:
    a, b = host(url, s3, tmp_path / "a"), host(url, s3, tmp_path / "b")
    files = {rel: rel for rel in ("manifest.json", "files/0/a.png", "files/1/b.png")}
    a.put_dir(write_tree(tmp_path / "upload", files), "datasets/ds1")
    root = b.local("datasets/ds1")
    got = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert got == ["files/0/a.png", "files/1/b.png", "manifest.json"]
    assert (root / "files/1/b.png").read_text() == "files/1/b.png"


def test_concurrent_first_reads_of_a_directory_agree(tmp_path: Path, s3: S3, url: str) -> None:
    a = host(url, s3, tmp_path / "a")
    tree = write_tree(tmp_path / "upload", {f"{i}.txt": str(i) for i in range(20)})
    a.put_dir(tree, "datasets/ds2")
    b = host(url, s3, tmp_path / "b")
    seen: list[Path] = []
    threads = [
        threading.Thread(target=lambda: seen.append(b.local("datasets/ds2"))) for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(seen)) == 1 and len(seen) == 4
    assert sorted(p.name for p in seen[0].iterdir()) == sorted(f"{i}.txt" for i in range(20))
    assert not [p for p in seen[0].parent.iterdir() if p.name.endswith(".part")]


class _Stop(Exception):
    pass


def test_a_check_that_raises_stops_a_directory_fetch_and_keeps_nothing(
    tmp_path: Path, s3: S3, url: str
) -> None:
    # A worker fetching a large dataset for its first decode, when the job is cancelled or
    # the worker told to shut down: the fetch stops, and no partial copy is taken as whole.
    a = host(url, s3, tmp_path / "a")
    a.put_dir(write_tree(tmp_path / "upload", {f"{i}.txt": str(i) for i in range(60)}), "ds")
    b = host(url, s3, tmp_path / "b")
    calls = 0

    def check() -> None:
        nonlocal calls
        calls += 1
        if calls == 4:
            raise _Stop

    with pytest.raises(_Stop), b.hold("ds", check):
        pytest.fail("held a directory whose fetch was stopped")
    assert not [p.name for p in b.cache.root.iterdir() if p.name != ".locks"]
    calls = 0 - 1000  # no more raising
    with b.hold("ds", check) as root:
        assert sorted(p.name for p in root.iterdir()) == sorted(f"{i}.txt" for i in range(60))
    assert calls + 1000 > 60  # called for every file at least


def test_a_workspace_is_visible_elsewhere_after_each_publish(
    tmp_path: Path, s3: S3, url: str
) -> None:
    a = host(url, s3, tmp_path / "a")
    board = a.workspace("jobs/j1/tensorboard")
    (board / "events.1").write_text("epoch 1")
    a.publish("jobs/j1/tensorboard")
    (board / "events.1").write_text("epoch 1, epoch 2")
    a.publish("jobs/j1/tensorboard")
    b = host(url, s3, tmp_path / "b")
    assert (b.local("jobs/j1/tensorboard") / "events.1").read_text() == "epoch 1, epoch 2"


def test_delete_removes_the_object_and_every_cached_copy(tmp_path: Path, s3: S3, url: str) -> None:
    a = host(url, s3, tmp_path / "a")
    tree = write_tree(tmp_path / "upload", {"x/y.txt": "y"})
    a.put_dir(tree, "datasets/gone")
    assert not tree.exists()
    assert (a.local("datasets/gone") / "x" / "y.txt").read_text() == "y"  # cached here now
    a.delete("datasets/gone")
    assert not a.exists("datasets/gone")
    assert not a.cache.path(a.entry("datasets/gone")).exists()
    with pytest.raises(FileNotFoundError):
        host(url, s3, tmp_path / "b").local("datasets/gone")
    a.delete("datasets/never-was")  # missing keys are fine


@pytest.mark.parametrize("key", ["../outside", "a/../../b", "/abs", "a//b", ""])
def test_keys_never_leave_the_prefix(tmp_path: Path, s3: S3, url: str, key: str) -> None:
    with pytest.raises(ValueError, match="invalid storage key"):
        host(url, s3, tmp_path).local(key)


def test_copies_beyond_the_budget_are_evicted_least_recently_used_first(
    tmp_path: Path, s3: S3, url: str
) -> None:
    a = host(url, s3, tmp_path / "a")
    for name in ("old", "used", "new"):
        src = a.staging() / name
        src.write_bytes(name.encode() * 1000)  # 3-4 kB each
        a.put_file(src, f"models/{name}/w.bin")
    b = host(url, s3, tmp_path / "b", budget=8000)
    b.cache.grace_s = 0  # no reader here needs the recency grace
    old, used = b.local("models/old/w.bin"), b.local("models/used/w.bin")
    os.utime(old, (1, 1))
    os.utime(used, (2, 2))
    with b.hold("models/used/w.bin") as held:  # in use: kept, though the oldest
        os.utime(held, (0, 0))
        new = b.local("models/new/w.bin")  # 10 kB > 8000: the oldest unheld copy goes
        assert held.exists() and new.exists()
    assert not old.exists()
    assert b.local("models/old/w.bin").read_bytes() == b"old" * 1000  # downloaded again


def test_a_decoded_dataset_needs_only_its_manifest_again(tmp_path: Path, s3: S3, url: str) -> None:
    """Once a worker decoded a dataset, its files' copy may leave the cache for good."""
    api = host(url, s3, tmp_path / "api")
    tree = tmp_path / "upload"
    classes = stored_digits(tree, per_class=5)
    api.put_dir(tree, "datasets/ds_r")
    settings = Settings(data_dir=tmp_path / "worker")
    worker = S3Storage(url, host_cache(settings), tmp_path / "worker" / "ws", s3.options)
    dataset = SimpleNamespace(id="ds_r", classes=classes, storage_key="datasets/ds_r")
    spec = TrainSpec(backbone="resnet18", classes=tuple(classes), image_size=16)

    first = load_data(settings, worker, dataset, spec, 0.2)  # type: ignore[arg-type]
    copy = worker.cache.path(worker.entry("datasets/ds_r"))
    assert (copy / "files").is_dir(), "decoding fetched the dataset's files"
    worker.cache.discard(copy.name)  # evicted, as a budget would after a while
    again = load_data(settings, worker, dataset, spec, 0.2)  # type: ignore[arg-type]
    assert not copy.exists(), "the decoded images were enough: nothing downloaded again"
    assert torch.equal(again.train.images, first.train.images)
