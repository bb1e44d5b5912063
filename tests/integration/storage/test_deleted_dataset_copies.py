"""A host's cached copies of a dataset deleted through another host go at its next round."""

from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from app.core.config import Settings
from app.core.ids import new_id
from app.core.storage import RemoteStorage, forget_deleted_datasets, host_cache
from app.main import create_app
from tests.support.factories import make_dataset_row
from tests.support.files import age, write_tree
from tests.support.processes import wait_for

HOUR = 3600


def _entry(settings: Settings, name: str, *, aged: bool = True) -> Path:
    """A cache entry: a folder of files for a stored copy, a file for decoded images."""
    path = host_cache(settings).path(name)
    if name.startswith("stored-"):
        write_tree(path, {"manifest.json": "{}", "files/0/a.png": "png"})
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\0" * 64)
    if aged:
        age(path, 2 * HOUR)
    return path


def test_copies_of_deleted_datasets_go_and_the_rest_stay(
    db_session: Session, tmp_path: Path
) -> None:
    settings = Settings(data_dir=tmp_path)
    alive = make_dataset_row(db_session).id
    deleted, in_use, just_used = (new_id("ds") for _ in range(3))
    copy = RemoteStorage.entry
    dropped = {
        f"decoded-{deleted}-16px.v3.npy": _entry(settings, f"decoded-{deleted}-16px.v3.npy"),
        copy(f"datasets/{deleted}"): _entry(settings, copy(f"datasets/{deleted}")),
    }
    kept = [
        _entry(settings, f"decoded-{alive}-16px.v3.npy"),
        _entry(settings, copy(f"datasets/{alive}")),
        _entry(settings, copy(f"datasets/{in_use}")),  # a job decodes from it right now
        _entry(settings, f"decoded-{just_used}-32px.npy", aged=False),
        _entry(settings, copy("models/mdl_x/model.safetensors")),  # not a dataset's
    ]
    cache = host_cache(settings)
    with cache.use(copy(f"datasets/{in_use}")):
        assert sorted(forget_deleted_datasets(db_session, settings)) == sorted(dropped)
    assert not any(path.exists() for path in dropped.values())
    assert all(path.exists() for path in kept)
    # Released, it was just used (the job's decode ended): it goes once that use is old.
    assert forget_deleted_datasets(db_session, settings) == []
    age(kept[2], 2 * HOUR)
    assert forget_deleted_datasets(db_session, settings) == [copy(f"datasets/{in_use}")]


def test_the_api_forgets_deleted_datasets_when_it_starts(tmp_path: Path, pg_url: str) -> None:
    settings = Settings(data_dir=tmp_path, database_url=pg_url)
    decoded = _entry(settings, f"decoded-{new_id('ds')}-16px.v3.npy")
    with TestClient(create_app(settings)):
        wait_for(lambda: not decoded.exists(), timeout=30, what="the start-up sweep")
