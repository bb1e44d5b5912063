"""Artifact and dataset storage behind one small interface.

Keys are chosen by the service (never client file names) and use `/` separators.
Only a local directory is implemented; an object store plugs in behind the same methods.
"""

import hashlib
import os
import shutil
from pathlib import Path


class LocalStorage:
    """Storage on a local (or shared network) filesystem rooted at one directory."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()

    def path(self, key: str) -> Path:
        """Local path of `key`; refuses keys that would leave the root."""
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root):
            raise ValueError(f"storage key escapes the root: {key!r}")
        return path

    def put_dir(self, src: Path, key: str) -> None:
        """Move a finished directory into place."""
        dest = self.path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(src, dest)

    def exists(self, key: str) -> bool:
        return self.path(key).exists()

    def delete(self, key: str) -> None:
        """Remove a file or a whole directory; missing keys are fine."""
        path = self.path(key)
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)

    def writable(self) -> bool:
        self.root.mkdir(parents=True, exist_ok=True)
        return os.access(self.root, os.W_OK)


def get_storage(storage_url: str) -> LocalStorage:
    """The storage backend for `FINETUNE_STORAGE_URL`."""
    if "://" in storage_url and not storage_url.startswith("file://"):
        raise ValueError(f"unsupported storage URL {storage_url!r}: only local directories")
    return LocalStorage(storage_url.removeprefix("file://"))


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()
