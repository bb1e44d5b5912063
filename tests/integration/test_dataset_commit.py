"""An upload whose commit raises keeps its files exactly when the row landed.

A commit whose answer was lost (the connection dropped after the server committed) used to
delete the stored images of a row that exists: listed forever, every job on it failing."""

import io
from pathlib import Path

import pytest
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from app.core.config import Settings
from app.core.db import get_sessionmaker
from app.core.models import LOCAL_TENANT, Dataset
from app.core.storage import get_storage
from app.datasets import service
from tests.support import crafted


@pytest.fixture
def settings(tmp_path: Path, pg_url: str) -> Settings:
    return Settings(data_dir=tmp_path, database_url=pg_url)


def _upload_failing_commit(settings: Settings, lands: bool) -> tuple[str, object]:
    """Upload with a commit that raises after (`lands`) or instead of committing: the
    dataset's id, and what the upload returned or raised."""
    made: list[str] = []
    with get_sessionmaker(settings.database_url)() as session:
        real = session.commit

        def commit() -> None:
            made.extend(o.id for o in session.new if isinstance(o, Dataset))
            session.commit = real  # type: ignore[method-assign]
            if lands:
                real()
            raise OperationalError("COMMIT", {}, Exception("server closed the connection"))

        session.commit = commit  # type: ignore[method-assign]
        try:
            outcome: object = service.create(
                session,
                settings,
                get_storage(settings),
                LOCAL_TENANT,
                io.BytesIO(crafted.with_extra({})),
                "digits.zip",
                None,
            )
        except OperationalError as exc:
            outcome = exc
    return made[0], outcome


@pytest.mark.parametrize("lands", [True, False], ids=["answer-lost", "not-committed"])
def test_files_stay_exactly_when_the_row_landed(settings: Settings, lands: bool) -> None:
    """A landed row is the upload's success (a 201, not a 503 inviting a duplicate)."""
    dataset_id, outcome = _upload_failing_commit(settings, lands)
    if lands:
        assert isinstance(outcome, Dataset) and outcome.id == dataset_id
    else:
        assert isinstance(outcome, OperationalError)
    with get_sessionmaker(settings.database_url)() as session:
        assert (session.get(Dataset, dataset_id) is not None) == lands
    stored = get_storage(settings).exists(f"datasets/{dataset_id}/manifest.json")
    assert stored == lands


def test_files_stay_when_the_database_cannot_say(settings: Settings, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The orphan sweep frees them later if no row names them."""

    def unreachable(*_: object, **__: object) -> None:
        raise OperationalError("SELECT", {}, Exception("connection refused"))

    monkeypatch.setattr(Session, "get", unreachable)
    dataset_id, outcome = _upload_failing_commit(settings, lands=False)
    assert isinstance(outcome, OperationalError)
    assert get_storage(settings).exists(f"datasets/{dataset_id}/manifest.json")
