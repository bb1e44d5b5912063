"""storage.discard: deletions after a settled commit log their failures and go on."""

import logging
from pathlib import Path

import pytest

from app.core.storage import LocalStorage, discard


def test_a_failed_delete_is_logged_and_the_rest_go(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    storage = LocalStorage(tmp_path)
    keys = []
    for name in ("a", "b"):
        src = tmp_path / f"{name}.src"
        src.write_text(name)
        storage.put_file(src, f"jobs/j/state/{name}")
        keys.append(f"jobs/j/state/{name}")
    with caplog.at_level(logging.WARNING, "app.core.storage"):
        discard(storage, keys[0], "jobs/../outside", None, keys[1])
    assert not any(storage.exists(key) for key in keys)
    assert [r.getMessage() for r in caplog.records] == [
        "could not delete jobs/../outside; it stays until a sweep"
    ]
