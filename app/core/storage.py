"""Artifact and dataset storage behind one small interface.

Keys are chosen by the service (never client file names) and use `/` separators. Two
backends share the interface:

- `LocalStorage`: a directory (local disk or a network filesystem every host mounts).
- `RemoteStorage`: any fsspec URL, `s3://bucket/prefix` in production, so API and workers
  on different hosts share datasets and artifacts through the object store alone.

Every consumer (safetensors, the memory-mapped decode cache, TensorBoard, FileResponse)
wants a real file, so the interface speaks in local paths: `local(key)` gives a readable
copy (remote objects are downloaded once into the host's cache), `hold(key)` keeps that
copy from eviction while a long read runs, `put_file`/`put_dir` publish finished local
files, and `workspace(key)` + `publish(key)` serve writers that append over time
(TensorBoard). Stored objects are immutable once published (every key names one attempt,
model or export), which is what makes the per-host cache safe. The cache holds only what a
host has read, within `FINETUNE_CACHE_MAX_SIZE` (app.core.hostcache).
"""

import contextlib
import hashlib
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote, unquote

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.config import Settings
from app.core.hostcache import HostCache, changed_since, decoded_dataset, remove, sweep_stale
from app.core.models import Dataset

log = logging.getLogger(__name__)
STORED = "stored-"  # the host cache entries that are copies of stored objects

S3_PROTOCOLS = frozenset({"s3", "s3a"})


class Storage(Protocol):
    """What the API and the workers need from a storage backend."""

    def local(self, key: str) -> Path:
        """A readable local path of the file or directory at `key`."""
        ...

    def hold(
        self, key: str, check: Callable[[], None] | None = None
    ) -> contextlib.AbstractContextManager[Path]:
        """`local(key)`, kept from the host cache's eviction until the block ends.

        A directory fetched from a remote store calls `check` after each of its files, from
        the store's I/O thread; what it raises stops the fetch and leaves no copy.
        """
        ...

    def put_file(self, src: Path, key: str) -> None:
        """Publish a finished local file at `key` (atomically replacing what was there)."""
        ...

    def put_dir(self, src: Path, key: str) -> None:
        """Publish a finished local directory at `key`."""
        ...

    def staging(self) -> Path:
        """Scratch directory for files about to be `put_file`d (same filesystem: a rename)."""
        ...

    def workspace(self, key: str) -> Path:
        """A local directory to write `key`'s files into; `publish(key)` makes them durable."""
        ...

    def publish(self, key: str) -> None:
        """Make what the workspace of `key` holds now durable and visible to every host."""
        ...

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None:
        """Remove a file or a whole directory; missing keys are fine."""
        ...

    def children(self, key: str) -> list[str]:
        """The names directly under the directory `key` (none if it is missing)."""
        ...

    def changed_since(self, key: str, since: float) -> bool:
        """Whether anything under `key` changed after `since` (POSIX seconds)."""
        ...

    def writable(self) -> bool: ...


def _check_key(key: str) -> str:
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"invalid storage key: {key!r}")
    return key


def _replace_file(src: Path, dest: Path) -> None:
    """Move `src` onto `dest` atomically, also across filesystems (copy beside, then rename)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(src, dest)
    except OSError:  # EXDEV: the staging area is on another filesystem
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
        os.close(fd)
        try:
            shutil.copyfile(src, tmp)
            os.replace(tmp, dest)
        finally:
            Path(tmp).unlink(missing_ok=True)
        src.unlink()


def _directory(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


class LocalStorage:
    """Storage on a local (or shared network) filesystem rooted at one directory."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()

    def path(self, key: str) -> Path:
        """Local path of `key`; refuses keys that would leave the root."""
        path = (self.root / _check_key(key)).resolve()
        if not path.is_relative_to(self.root):
            raise ValueError(f"storage key escapes the root: {key!r}")
        return path

    def local(self, key: str) -> Path:
        return self.path(key)

    @contextlib.contextmanager
    def hold(self, key: str, check: Callable[[], None] | None = None) -> Iterator[Path]:
        """The stored file itself: nothing to evict, nothing to fetch."""
        yield self.path(key)

    def put_file(self, src: Path, key: str) -> None:
        _replace_file(src, self.path(key))

    def put_dir(self, src: Path, key: str) -> None:
        dest = self.path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(src, dest)

    def staging(self) -> Path:
        return _directory(self.root / ".staging")

    def workspace(self, key: str) -> Path:
        return _directory(self.path(key))

    def publish(self, key: str) -> None:
        """Nothing to do: the workspace is the stored directory itself."""

    def exists(self, key: str) -> bool:
        return self.path(key).exists()

    def delete(self, key: str) -> None:
        remove(self.path(key))

    def children(self, key: str) -> list[str]:
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            return sorted(os.listdir(self.path(key)))
        return []

    def changed_since(self, key: str, since: float) -> bool:
        with contextlib.suppress(FileNotFoundError):
            return changed_since(self.path(key), since)
        return False

    def writable(self) -> bool:
        self.root.mkdir(parents=True, exist_ok=True)
        return os.access(self.root, os.W_OK)


class RemoteStorage:
    """Storage in an fsspec filesystem (S3 and S3-compatible stores), cached per host."""

    # Whether the filesystem has directories to make before files go in them; object stores
    # (`objectstore.S3Storage`) have none.
    directories = True

    def __init__(
        self,
        url: str,
        cache: HostCache,
        workspaces: Path,
        options: dict[str, Any] | None = None,
        probe_timeout_s: float | None = None,
    ) -> None:
        import fsspec

        self.fs, root = fsspec.core.url_to_fs(url, **(options or {}))
        self.root = root.rstrip("/")
        self.probe_timeout_s = probe_timeout_s
        self.cache = cache
        self.workspaces = workspaces.resolve()

    def _remote(self, key: str) -> str:
        return f"{self.root}/{_check_key(key)}"

    @staticmethod
    def entry(key: str) -> str:
        """The host cache's entry name of a storage key (one flat name per key)."""
        return STORED + quote(_check_key(key), safe="")

    def local(self, key: str, check: Callable[[], None] | None = None) -> Path:
        """The cached copy, downloaded first if this host has none (files and directories).

        `check` is called after each file of a directory (see Storage.hold).
        """
        name = self.entry(key)
        dest = self.cache.path(name)
        if dest.exists():
            self.cache.touch(name)
            return dest
        remote = self._remote(key)
        self.fs.invalidate_cache()
        if not self.fs.exists(remote):
            raise FileNotFoundError(f"no stored object at {key!r}")
        # Download beside the destination, then rename: a crash or a concurrent reader never
        # sees a half-downloaded file or directory.
        tmp = self.cache.scratch(name)
        try:
            if self.fs.isdir(remote):
                tmp.mkdir()
                progress = {} if check is None else {"callback": _checking(check)}
                self.fs.get(f"{remote}/", f"{tmp}/", recursive=True, **progress)
                with contextlib.suppress(OSError):  # another process finished first
                    tmp.rename(dest)
            else:
                self.fs.get_file(remote, str(tmp))
                os.replace(tmp, dest)
        finally:
            remove(tmp)
        self.cache.touch(name)
        self.cache.trim(keep=name)
        return dest

    @contextlib.contextmanager
    def hold(self, key: str, check: Callable[[], None] | None = None) -> Iterator[Path]:
        with self.cache.use(self.entry(key)):
            yield self.local(key, check)

    # Writes are not kept in the cache: the host that writes (an API storing an upload, a
    # worker storing checkpoints) is rarely the one that reads, and the cache stays small.
    def put_file(self, src: Path, key: str) -> None:
        self.fs.put_file(str(src), self._remote(key))
        src.unlink()

    def put_dir(self, src: Path, key: str) -> None:
        self._put_tree(src, self._remote(key))
        remove(src)

    def _put_tree(self, src: Path, remote: str) -> None:
        """Upload every file under `src` to the same relative path under `remote`.

        Given the files as lists, fsspec neither probes the destination nor makes folders:
        s3fs's `makedirs` checks the bucket once per folder, and creates it when that check
        fails (a store that does not answer), so an upload took three timeouts to fail."""
        files = sorted(path for path in src.rglob("*") if path.is_file())
        if self.directories:
            folders = {path.parent.relative_to(src).as_posix() for path in files}
            for folder in sorted(folders):
                self.fs.makedirs(f"{remote}/{folder}".removesuffix("/."), exist_ok=True)
        targets = [f"{remote}/{path.relative_to(src).as_posix()}" for path in files]
        self.fs.put([str(path) for path in files], targets)

    def staging(self) -> Path:
        return _directory(self.workspaces / ".staging")

    def workspace(self, key: str) -> Path:
        """Outside the cache: a writer's folder must not be evicted while it writes."""
        return _directory(self.workspaces / self.entry(key))

    def publish(self, key: str) -> None:
        self._put_tree(self.workspace(key), self._remote(key))

    def exists(self, key: str) -> bool:
        self.fs.invalidate_cache()  # another host may have written it since we last looked
        return bool(self.fs.exists(self._remote(key)))

    def delete(self, key: str) -> None:
        remote = self._remote(key)
        self.fs.invalidate_cache()
        if self.fs.exists(remote):
            self.fs.rm(remote, recursive=True)
        self.cache.discard(self.entry(key))
        remove(self.workspaces / self.entry(key))

    def children(self, key: str) -> list[str]:
        self.fs.invalidate_cache()
        try:
            paths = self.fs.ls(self._remote(key), detail=False)
        except FileNotFoundError:
            return []
        return sorted(path.rstrip("/").rsplit("/", 1)[-1] for path in paths)

    def changed_since(self, key: str, since: float) -> bool:
        self.fs.invalidate_cache()
        found = self.fs.find(self._remote(key), detail=True)
        return any(_modified(info) >= since for info in found.values())

    def writable(self) -> bool:
        """Write and remove a probe object, each within `probe_timeout_s` (retries included).

        A readiness probe must answer promptly whatever the store does: fsspec's `timeout`
        cancels the call on its event loop (async filesystems, S3 among them)."""
        bound = {"timeout": self.probe_timeout_s} if self.fs.async_impl else {}
        probe = f"{self.root}/.probe-{uuid.uuid4().hex}"
        self.fs.pipe_file(probe, b"ok", **bound)
        self.fs.rm(probe, **bound)
        return True


def _modified(info: dict[str, Any]) -> float:
    """An fsspec listing entry's modification time: S3 says `LastModified`, others `mtime`."""
    stamp = info.get("LastModified", info.get("mtime"))
    return stamp.timestamp() if hasattr(stamp, "timestamp") else float(stamp)


def unreachable(exc: BaseException) -> bool:
    """Whether `exc` says the store did not answer in time or cut the connection (the same
    call may succeed later), rather than that it refused the request."""
    import botocore.exceptions as boto  # s3fs's; a dependency whatever the storage URL

    # HTTPClientError: read timeouts, connections closed mid-answer
    return isinstance(
        exc, (TimeoutError, ConnectionError, boto.ConnectionError, boto.HTTPClientError)
    )


def _checking(check: Callable[[], None]) -> Any:
    """An fsspec callback calling `check` at each update: the file count once known, then
    every file done. fsspec (2026.4 and later) cancels the files in flight when a callback
    raises and raises that exception to the caller."""
    from fsspec.callbacks import Callback

    class Checking(Callback):  # type: ignore[misc]
        def call(self, *args: Any, **kwargs: Any) -> None:
            check()

    return Checking()


def discard(storage: Storage, *keys: str | None) -> None:
    """Delete stored files that no row names any more, as far as the store lets us.

    Called once the rows are settled, so a failure must not undo or hide that outcome: it is
    logged, and what stays is freed by the sweeps of files no row names
    (app.datasets.service.sweep_orphans, app.jobs.service.sweep_files)."""
    for key in keys:
        if key is None:
            continue
        try:
            storage.delete(key)
        except Exception:
            log.warning("could not delete %s; it stays until a sweep", key, exc_info=True)


def get_storage(settings: Settings) -> Storage:
    """The storage backend for `FINETUNE_STORAGE_URL`: a directory, S3, or any fsspec URL."""
    url = settings.storage_url
    if "://" not in url or url.startswith("file://"):
        return LocalStorage(url.removeprefix("file://"))
    if url.split("://", 1)[0] in S3_PROTOCOLS:
        from app.core.objectstore import s3_storage  # aiobotocore: only where S3 is used

        return s3_storage(url, settings)
    return RemoteStorage(
        url,
        host_cache(settings),
        workspaces(settings),
        settings.storage_options,
        probe_timeout_s=settings.storage_timeout_s,
    )


def workspaces(settings: Settings) -> Path:
    """Where this host's `RemoteStorage` writers append before they publish."""
    return settings.work_dir / "workspaces"


def stored_key(entry: str) -> str | None:
    """The storage key whose copy the host cache entry `entry` is (`RemoteStorage.entry`);
    None for entries of another kind."""
    return unquote(entry.removeprefix(STORED)) if entry.startswith(STORED) else None


def host_cache(settings: Settings) -> HostCache:
    """This host's cache of decoded images and remote copies (`FINETUNE_CACHE_MAX_SIZE`)."""
    return HostCache(settings.work_dir / "cache", settings.cache_max_size)


def tidy_host(settings: Settings) -> None:
    """Start-up housekeeping of this host's scratch space (the API's and every worker's).

    The host cache goes within its budget, which a restart may have lowered, and what a
    process killed mid-write left goes too: an upload being received or extracted (up to
    the archive limit, 10 GB and more), a checkpoint or export being staged for storage.
    A failure is logged, never raised: housekeeping must not keep a service from starting
    (nor stop a worker's heartbeats, which run after it on the same thread).
    """
    try:
        host_cache(settings).trim()
        sweep_stale(settings.uploads_dir)
        sweep_stale(get_storage(settings).staging())
    except Exception:
        log.warning("could not tidy this host's scratch space", exc_info=True)


def _dataset_of(entry: str) -> str | None:
    """The dataset a host cache entry is a copy of (its fetched files, `datasets/{id}`, or
    its decoded images); None for entries of anything else."""
    key = stored_key(entry)
    if key is None:
        return decoded_dataset(entry)
    folder, _, rest = key.partition("/")
    return (rest.split("/", 1)[0] or None) if folder == "datasets" else None


def forget_deleted_datasets(session: Session, settings: Settings) -> list[str]:
    """Drop this host's cached copies of datasets deleted since; return the entries dropped.

    A delete clears the cache of the host that answered it. Workers and other API replicas
    kept the dataset's fetched files and decoded images until their cache needed the space,
    which for data its owner deleted can be never. The API runs this with its hourly sweeps,
    and workers with every heartbeat: one query and one listing of the cache folder. An
    entry in use, or used within the cache's grace period, stays until a later round.
    """
    cache = host_cache(settings)
    owners = {name: owner for name in cache.names() if (owner := _dataset_of(name))}
    if not owners:
        return []
    known = set(owners.values())
    alive = set(session.scalars(select(Dataset.id).where(Dataset.id.in_(known))))
    session.commit()  # no transaction held while files are removed
    return [name for name, owner in owners.items() if owner not in alive and cache.evict(name)]


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()
