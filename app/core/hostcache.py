"""A host's cache of derived and downloaded files, kept within a byte budget.

Two kinds of entries live in one folder: images decoded once per dataset and image size
(worker.jobspec), and copies of remote storage objects (RemoteStorage.local). Both can be
made again from what is stored, and both grow with every dataset a host has seen: a 10 GB
dataset of JPEGs decodes to ~15 GB at 224 px. So the cache keeps at most `max_bytes`,
evicting the least recently used entries first.

Entries are the folder's top-level files and folders (flat names). An entry in use is
never evicted:

- a long use (decoding a dataset, the model a job starts from) holds `use(name)`, a
  shared `flock` on the entry's lock file; eviction takes the exclusive lock without
  waiting and skips the entry when it cannot, across every process of the host;
- a short use that only needs a path (a download the API streams) is covered by recency:
  `touch` marks the use, and entries used within `GRACE_S` are kept.

A decoded-images file that training memory-maps may be evicted while a job trains from
it: the job keeps reading its mapping (Linux frees the blocks when it is unmapped), and
the next job decodes again.

The budget can be exceeded by what is in use (the dataset and decoded images of the job
starting now); nothing else stays once it would be.

Entries are made under dot names and renamed into place, so a process killed while making
one leaves a dot-named file that nothing will ever read: `trim` removes those once they
have not changed for `STALE_SCRATCH_S` (one being written changes all the time). Workers
and the API trim at start-up too, so a budget lowered by a restart applies at once.
"""

import contextlib
import fcntl
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

GRACE_S = 300.0
# A half-made entry untouched this long belongs to a process that died making it. Writers
# change their file as they go (a download streams, decoding fills a memory map page by
# page), so one still in progress never looks this old.
STALE_SCRATCH_S = 3600.0
LOCKS = ".locks"  # one empty lock file per entry name; they stay (a few bytes each)

log = logging.getLogger(__name__)


DECODED = "decoded-"  # the entries of decoded images: decoded-{dataset id}-{size}px...


def _decoded_prefix(dataset_id: str) -> str:
    return f"{DECODED}{dataset_id}-"


def decoded_dataset(name: str) -> str | None:
    """The dataset whose decoded images the entry `name` holds; None for other entries."""
    if not name.startswith(DECODED):
        return None
    return name.removeprefix(DECODED).split("-", 1)[0] or None


def decoded_entry(dataset_id: str, image_size: int) -> str:
    """The entry name of a dataset's images decoded at `image_size` (before the decoder's
    version, which worker.training.data.cache_file adds)."""
    return f"{_decoded_prefix(dataset_id)}{image_size}px.npy"


# Bytes of folder entries by (path, inode): an entry never changes once in place (stored
# objects are immutable, decoded images are written once), so a dataset's 100k files are
# walked once per process, not at every trim.
_folder_sizes: dict[tuple[str, int], int] = {}


def _size(item: os.DirEntry[str]) -> int:
    """Bytes of a file, or of every file under a folder."""
    if not item.is_dir(follow_symlinks=False):
        return item.stat().st_size
    key = (item.path, item.inode())
    if key not in _folder_sizes:
        total = 0
        for folder, _, files in os.walk(item.path):
            for name in files:
                with contextlib.suppress(FileNotFoundError):
                    total += os.stat(os.path.join(folder, name)).st_size
        _folder_sizes[key] = total
    return _folder_sizes[key]


def changed_since(path: Path, since: float) -> bool:
    """Whether the file, or anything under the folder, was modified after `since`."""
    if path.stat().st_mtime >= since:
        return True
    if not path.is_dir() or path.is_symlink():
        return False
    # A download writes class folders' files deep down: the top folder's time stays put.
    for folder, _, files in os.walk(path):
        for name in [".", *files]:
            with contextlib.suppress(FileNotFoundError):
                if os.stat(os.path.join(folder, name)).st_mtime >= since:
                    return True
    return False


def sweep_stale(folder: Path, wanted: Callable[[str], bool] = lambda _: True) -> None:
    """Remove what processes killed while writing left in `folder`: its items (those
    `wanted`, by name) that nothing changed for `STALE_SCRATCH_S`."""
    stale = time.time() - STALE_SCRATCH_S
    with contextlib.suppress(FileNotFoundError):
        for item in os.scandir(folder):
            if not wanted(item.name):
                continue
            with contextlib.suppress(FileNotFoundError):
                if not changed_since(Path(item.path), stale):
                    log.info("removing %s, left half-made by a process that ended", item.path)
                    remove(Path(item.path))


def remove(path: Path) -> None:
    """Delete a file or a whole folder; a missing one is fine."""
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


class HostCache:
    """One folder of cache entries and its byte budget (see the module docstring)."""

    def __init__(self, root: Path, max_bytes: int, grace_s: float = GRACE_S) -> None:
        self.root = root.resolve()
        self.max_bytes, self.grace_s = max_bytes, grace_s

    def path(self, name: str) -> Path:
        """The entry `name`'s path (it may not exist yet)."""
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"invalid cache entry name: {name!r}")
        return self.root / name

    def scratch(self, name: str) -> Path:
        """A unique path beside the entry to build it in, then `os.replace` into place.

        Dot names are never entries: a half-made one is neither read nor counted as used.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        return self.root / f".{name}.{uuid.uuid4().hex}.part"

    def touch(self, name: str) -> None:
        """Mark the entry as used now (its modification time is the cache's clock)."""
        with contextlib.suppress(FileNotFoundError):
            os.utime(self.path(name))

    @contextlib.contextmanager
    def use(self, name: str) -> Iterator[Path]:
        """Hold the entry against eviction while the block runs; yields its path.

        The entry may not exist yet: the block can make it, and it is then held as well.
        """
        path = self.path(name)
        with self._lock_file(name) as fh:
            fcntl.flock(fh, fcntl.LOCK_SH)
            self.touch(name)
            try:
                yield path
            finally:
                self.touch(name)
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _lock_file(self, name: str) -> IO[str]:
        """The entry's lock file, opened (it is made on first use and then stays)."""
        lock = self.root / LOCKS / self.path(name).name
        lock.parent.mkdir(parents=True, exist_ok=True)
        return lock.open("a")

    def names(self) -> list[str]:
        """Every entry's name, without sizing them (a cached dataset is a deep folder)."""
        with contextlib.suppress(FileNotFoundError):
            return sorted(n for n in os.listdir(self.root) if not n.startswith("."))
        return []

    def entries(self) -> list[tuple[float, int, str]]:
        """(last use, bytes, name) of every entry, least recently used first."""
        found = []
        with contextlib.suppress(FileNotFoundError):
            for item in os.scandir(self.root):
                if item.name.startswith("."):
                    continue
                try:
                    found.append((item.stat().st_mtime, _size(item), item.name))
                except FileNotFoundError:  # evicted meanwhile
                    continue
        return sorted(found)

    def trim(self, keep: str | None = None) -> list[str]:
        """Evict least recently used entries (never `keep`) until the cache fits its budget.

        Returns the names evicted. Stale half-made entries go as well (module docstring).
        """
        sweep_stale(self.root, lambda name: name.startswith(".") and name != LOCKS)
        entries = self.entries()
        total = sum(size for _, size, _ in entries)
        evicted: list[str] = []
        recent = time.time() - self.grace_s
        for used, size, name in entries:
            if total <= self.max_bytes:
                break
            if name != keep and used < recent and self.evict(name):
                total -= size
                evicted.append(name)
                log.info("cache entry %s evicted (%d bytes; %d bytes left)", name, size, total)
        return evicted

    def discard(self, name: str) -> None:
        """Remove the entry now (its object was deleted), unless a process holds it.

        A held entry is left to age out: the caller (an API request) never waits for a
        reader, and nothing asks for a deleted object's copy again.
        """
        self._drop(name, recent_too=True)

    def discard_decoded(self, dataset_id: str) -> None:
        """Remove every decoded-images entry of a deleted dataset, whatever its size."""
        # By name alone: sizing the entries (walking cached folders) is not needed here.
        for path in self.root.glob(f"{_decoded_prefix(dataset_id)}*"):
            self.discard(path.name)

    def evict(self, name: str) -> bool:
        """Remove the entry unless a process holds it or used it within `grace_s`."""
        return self._drop(name, recent_too=False)

    def _drop(self, name: str, *, recent_too: bool) -> bool:
        with self._lock_file(name) as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            try:
                used = os.stat(self.path(name)).st_mtime
            except FileNotFoundError:
                return False
            if not recent_too and used >= time.time() - self.grace_s:
                return False
            # Renamed away first, under the lock: a reader never finds half an entry.
            doomed = self.scratch(name)
            os.replace(self.path(name), doomed)
            remove(doomed)
            return True
