"""The host cache: a byte budget, least recently used out first, never what is in use."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app.core.hostcache import STALE_SCRATCH_S, HostCache

ROOT = Path(__file__).resolve().parents[2]


def entry(cache: HostCache, name: str, size: int, used: float) -> Path:
    """An entry of `size` bytes last used at `used` (seconds since the epoch)."""
    path = cache.path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    os.utime(path, (used, used))
    return path


def folder_entry(cache: HostCache, name: str, files: int, size: int, used: float) -> Path:
    path = cache.path(name)
    for i in range(files):
        (path / "sub").mkdir(parents=True, exist_ok=True)
        (path / "sub" / f"{i}.bin").write_bytes(b"x" * size)
    os.utime(path, (used, used))
    return path


def test_trim_evicts_the_least_recently_used_until_within_budget(tmp_path: Path) -> None:
    cache = HostCache(tmp_path, max_bytes=250, grace_s=0)
    a = entry(cache, "a", 100, used=3)
    b = folder_entry(cache, "b", files=2, size=50, used=1)  # a folder counts all its files
    c = entry(cache, "c", 100, used=2)
    d = entry(cache, "d", 100, used=4)
    assert cache.trim() == ["b", "c"]
    assert a.exists() and d.exists() and not b.exists() and not c.exists()
    assert cache.trim() == []  # within budget: nothing more goes
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".") and p.name != ".locks"]


def test_recent_use_and_keep_protect_an_entry(tmp_path: Path) -> None:
    cache = HostCache(tmp_path, max_bytes=0, grace_s=60)
    old = entry(cache, "old", 10, used=1)
    fresh = entry(cache, "fresh", 10, used=1)
    cache.touch("fresh")  # used just now: a path handed out is not pulled from under its reader
    kept = entry(cache, "kept", 10, used=1)
    assert cache.trim(keep="kept") == ["old"]
    assert fresh.exists() and kept.exists() and not old.exists()


def test_dot_names_are_never_entries(tmp_path: Path) -> None:
    cache = HostCache(tmp_path, max_bytes=0, grace_s=0)
    part = cache.scratch("x")
    part.write_bytes(b"half made")
    assert part.name.startswith(".") and cache.entries() == []
    assert cache.trim() == [] and part.exists()
    for bad in ("", "a/b", ".hidden"):
        with pytest.raises(ValueError, match="invalid cache entry"):
            cache.path(bad)


def test_half_made_entries_of_dead_processes_are_swept(tmp_path: Path) -> None:
    cache = HostCache(tmp_path, max_bytes=2**30)
    old = time.time() - STALE_SCRATCH_S - 60
    abandoned = cache.scratch("stored-a")  # a download killed mid-way
    (abandoned / "class0").mkdir(parents=True)
    (abandoned / "class0" / "0.png").write_bytes(b"png")
    decoding = tmp_path / ".decoded-x-32px-d1.npy.123.tmp"  # a decode killed mid-way
    decoding.write_bytes(b"npy")
    slow = cache.scratch("stored-b")  # a slow download: only a file deep down is fresh
    (slow / "class0").mkdir(parents=True)
    (slow / "class0" / "0.png").write_bytes(b"png")
    for path in (abandoned, abandoned / "class0", abandoned / "class0" / "0.png", decoding):
        os.utime(path, (old, old))
    for path in (slow, slow / "class0"):
        os.utime(path, (old, old))
    fresh = cache.scratch("stored-c")
    fresh.write_bytes(b"being written")
    with cache.use("kept"):  # makes the lock folder, which is never swept
        pass
    os.utime(tmp_path / ".locks", (old, old))
    assert cache.trim() == []  # within budget: sweeping is not evicting
    assert not abandoned.exists() and not decoding.exists()
    assert slow.exists() and fresh.exists() and (tmp_path / ".locks" / "kept").exists()


HOLDER = """
import sys, time
from pathlib import Path
from app.core.hostcache import HostCache
with HostCache(Path(sys.argv[1]), 0).use("held"):
    print("holding", flush=True)
    sys.stdin.readline()
"""


def test_an_entry_another_process_holds_survives_trim(tmp_path: Path) -> None:
    cache = HostCache(tmp_path, max_bytes=0, grace_s=0)
    held = entry(cache, "held", 10, used=1)
    other = entry(cache, "other", 10, used=2)
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "holding"
        os.utime(held, (1, 1))  # its use() touched it: make it the oldest again
        assert cache.trim() == ["other"]
        assert held.exists() and not other.exists()
    finally:
        assert proc.stdin is not None
        proc.stdin.write("\n")
        proc.stdin.close()
        proc.wait(timeout=30)
    os.utime(held, (1, 1))
    assert cache.trim() == ["held"]  # released: it goes like any other


def test_discard_removes_a_recent_entry_but_leaves_a_held_one(tmp_path: Path) -> None:
    cache = HostCache(tmp_path, max_bytes=2**30)
    recent = entry(cache, "recent", 10, used=1)
    cache.touch("recent")
    cache.discard("recent")  # its object was deleted: recency does not keep it
    assert not recent.exists()
    held = entry(cache, "held", 10, used=1)
    with cache.use("held") as path:
        cache.discard("held")  # an API request never waits for a reader...
        assert path.read_bytes() == b"x" * 10  # ...who keeps the whole entry
    assert held.exists()
