"""Exports made by two makers at once: the first record stays, and matches its bytes."""

from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from app.core import exports
from app.core.config import Settings
from app.core.db import get_sessionmaker
from app.core.exports import ensure_export
from app.core.models import Model
from app.core.storage import get_storage, sha256_file
from tests.support.factories import make_dataset_row, make_model
from tests.support.files import age


def test_a_maker_that_lost_the_race_serves_the_winners_export(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cpu worker and the API (two processes) build one export at once. TorchScript
    bytes differ from save to save: the loser must neither overwrite the winner's file nor
    record its own sha256 over it, or the served ETag would not match the bytes."""
    settings = Settings(data_dir=tmp_path, database_url=pg_url)
    sessions, storage = get_sessionmaker(pg_url), get_storage(settings)
    with sessions() as session:
        dataset = make_dataset_row(session)
        model_id = make_model(session, storage, {"id": dataset.id, "classes": ["a", "b"]}).id
    build, first = exports._build, []

    def raced(model: Model, storage_: object, fmt: str) -> dict:
        with sessions() as other:  # the other process records its build meanwhile
            row = other.get(Model, model.id)
            assert row is not None
            first.append(build(row, storage, fmt))
            row.exports = {**row.exports, fmt: first[0]}
            other.commit()
        return build(model, storage, fmt)

    monkeypatch.setattr(exports, "_build", raced)
    with sessions() as session:
        model = session.get(Model, model_id)
        assert model is not None
        served = ensure_export(session, model, storage, "torchscript")
    with sessions() as session:
        recorded = session.get(Model, model_id).exports["torchscript"]  # type: ignore[union-attr]
    stored = list((tmp_path / "artifacts" / "models" / model_id).iterdir())
    assert served == recorded == first[0]  # the first record stays
    assert [p.name for p in stored] == [Path(recorded["storage_key"]).name]
    assert sha256_file(stored[0]) == recorded["sha256"]
    monkeypatch.setattr(exports, "_build", lambda *_: pytest.fail("built again"))
    with sessions() as session:  # recorded and stored: served without a build
        model = session.get(Model, model_id)
        assert ensure_export(session, model, storage, "torchscript") == recorded  # type: ignore[arg-type]


def test_an_export_the_database_did_not_record_leaves_no_file(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database goes away between the build and its record: the request fails, and the
    stored file, which no row would ever name or free, is deleted; the next request builds."""
    settings = Settings(data_dir=tmp_path, database_url=pg_url)
    sessions, storage = get_sessionmaker(pg_url), get_storage(settings)
    with sessions() as session:
        dataset = make_dataset_row(session)
        model_id = make_model(session, storage, {"id": dataset.id, "classes": ["a", "b"]}).id
    build = exports._build

    def cut_off(model: Model, storage_: object, fmt: str) -> dict:
        record = build(model, storage, fmt)
        pid = maker.scalar(text("SELECT pg_backend_pid()"))
        with sessions() as other:
            other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        return record

    monkeypatch.setattr(exports, "_build", cut_off)
    folder = tmp_path / "artifacts" / "models" / model_id
    with sessions() as maker:
        model = maker.get(Model, model_id)
        assert model is not None
        with pytest.raises(OperationalError):
            ensure_export(maker, model, storage, "torchscript")
    assert not folder.exists() or not list(folder.iterdir())
    monkeypatch.undo()
    with sessions() as session:
        model = session.get(Model, model_id)
        assert model is not None and not model.exports
        record = ensure_export(session, model, storage, "torchscript")
    assert [p.name for p in folder.iterdir()] == [Path(record["storage_key"]).name]


def test_a_killed_makers_unrecorded_export_goes_at_the_next_build(
    pg_url: str, tmp_path: Path
) -> None:
    """A maker killed between storing its export and recording it left a file that nothing
    named or freed. The next build of that format deletes it once an hour old; a younger
    one (another process building now) and the other format's stay."""
    settings = Settings(data_dir=tmp_path, database_url=pg_url)
    sessions, storage = get_sessionmaker(pg_url), get_storage(settings)
    with sessions() as session:
        dataset = make_dataset_row(session)
        model_id = make_model(session, storage, {"id": dataset.id, "classes": ["a", "b"]}).id
    folder = tmp_path / "artifacts" / "models" / model_id
    folder.mkdir(parents=True, exist_ok=True)
    killed, building, onnx = (
        folder / name for name in ("model-0000dead0000dead.pt", "model-1111.pt", "model-2222.onnx")
    )
    for path in (killed, building, onnx):
        path.write_bytes(b"left")
    age(killed, 2 * 3600)
    age(onnx, 2 * 3600)
    with sessions() as session:
        model = session.get(Model, model_id)
        assert model is not None
        record = ensure_export(session, model, storage, "torchscript")
    left = sorted(p.name for p in folder.iterdir())
    assert left == sorted([Path(record["storage_key"]).name, building.name, onnx.name])
