"""Stored datasets that no row names are swept once old; named or fresh ones are kept."""

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from app.core.config import Settings
from app.core.storage import LocalStorage, Storage, get_storage
from app.datasets.service import sweep_orphans
from app.main import create_app
from tests.integration.storage.conftest import S3
from tests.support.factories import make_dataset_row
from tests.support.files import age, write_tree
from tests.support.processes import wait_for

pytestmark = pytest.mark.integration

HOUR = 3600


def store(storage: Storage, tmp_path: Path, name: str) -> str:
    """A small stored dataset folder at `datasets/<name>`; its key."""
    files = {rel: rel for rel in ("manifest.json", "files/0/a.png")}
    storage.put_dir(write_tree(tmp_path / "upload" / name, files), f"datasets/{name}")
    return f"datasets/{name}"


def named(session: Session, storage: Storage, tmp_path: Path) -> str:
    """A stored dataset with its row."""
    row = make_dataset_row(session)
    row.storage_key = store(storage, tmp_path, row.id)
    session.flush()
    return row.storage_key


def test_old_unnamed_datasets_go_and_the_rest_stay(db_session: Session, tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "store")
    kept = named(db_session, storage, tmp_path)
    orphan = store(storage, tmp_path, "ds_orphan")  # an upload the store stopped answering
    in_flight = store(storage, tmp_path, "ds_in_flight")  # stored, row about to be committed
    foreign = store(storage, tmp_path, "not-ours")  # not a dataset id: never the service's
    for key in (kept, orphan, foreign):
        age(storage.path(key), 2 * HOUR)

    assert sweep_orphans(db_session, storage) == [orphan]
    assert not storage.exists(orphan)
    assert all(storage.exists(key) for key in (kept, in_flight, foreign))
    assert sweep_orphans(db_session, storage) == []


def test_the_sweep_reads_ages_from_s3(
    db_session: Session, tmp_path: Path, s3: S3, request: pytest.FixtureRequest
) -> None:
    url = f"s3://{s3.bucket}/{request.node.name}"
    storage = get_storage(Settings(data_dir=tmp_path, storage_url=url, storage_options=s3.options))
    kept = named(db_session, storage, tmp_path)
    orphan = store(storage, tmp_path, "ds_orphan")

    assert sweep_orphans(db_session, storage) == [], "written just now: maybe an upload"
    assert sweep_orphans(db_session, storage, older_than_s=-60) == [orphan]
    assert not storage.exists(orphan) and storage.exists(kept)
    assert s3.keys(f"{request.node.name}/{orphan}") == []


def test_the_api_sweeps_when_it_starts(tmp_path: Path, pg_url: str) -> None:
    settings = Settings(data_dir=tmp_path, database_url=pg_url)
    storage = get_storage(settings)
    assert isinstance(storage, LocalStorage)
    orphan = store(storage, tmp_path, "ds_left_by_a_killed_api")
    age(storage.path(orphan), 2 * HOUR)
    with TestClient(create_app(settings)):
        wait_for(lambda: not storage.exists(orphan), timeout=30, what="the start-up sweep")
