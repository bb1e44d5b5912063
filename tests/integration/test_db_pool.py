"""Pooled connections: kept once opened, and never left idle in a transaction during work."""

import threading
import time
from pathlib import Path

from sqlalchemy import text

from app.core.config import Settings
from app.core.db import POOL, get_sessionmaker
from app.core.exports import ensure_export
from app.core.models import Model
from app.core.storage import get_storage
from tests.support.factories import make_dataset_row, make_model


def test_connections_of_a_burst_stay_pooled(pg_url: str) -> None:
    sessions = get_sessionmaker(pg_url)
    burst = 12  # more than SQLAlchemy's default pool of 5, as 8 concurrent GETs need
    opened = [sessions() for _ in range(burst)]
    for session in opened:
        session.execute(text("select 1"))
    pool = sessions.kw["bind"].pool
    for session in opened:
        session.close()
    assert burst <= POOL["pool_size"]
    assert pool.checkedin() >= burst  # a closed-again connection would be missing here


def test_an_export_is_built_outside_any_transaction(pg_url: str, tmp_path: Path) -> None:
    """A build takes seconds; the read that found the model must not stay open through it."""
    sessions = get_sessionmaker(pg_url)
    storage = get_storage(Settings(data_dir=tmp_path, database_url=pg_url))
    with sessions() as session:
        dataset = make_dataset_row(session)
        session.commit()
        model = make_model(session, storage, {"id": dataset.id, "classes": dataset.classes})
    with sessions() as session:
        model = session.get(Model, model.id)
        assert model is not None
        pid = session.scalar(text("SELECT pg_backend_pid()"))  # this read's connection
        states: list[str] = []
        done = threading.Event()

        def watch() -> None:
            with get_sessionmaker(pg_url)() as observer:
                while not done.is_set():
                    state = observer.scalar(
                        text("SELECT state FROM pg_stat_activity WHERE pid = :pid"), {"pid": pid}
                    )
                    observer.rollback()
                    states.append(state)
                    time.sleep(0.02)

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            record = ensure_export(session, model, storage, "torchscript")
        finally:
            done.set()
            watcher.join()
    assert record["size_bytes"] > 0
    assert len(states) > 5, states  # the build lasted long enough to be watched
    assert "idle in transaction" not in states, states
