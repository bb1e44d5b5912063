"""Alembic environment: URL and metadata come from the service's own settings and models."""

from alembic import context

from app.core import models  # noqa: F401  (registers every table on Base.metadata)
from app.core.config import get_settings
from app.core.db import Base, get_engine

config = context.config
url = config.attributes.get("database_url") or get_settings().database_url


def run_offline() -> None:
    context.configure(url=url, target_metadata=Base.metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    # A connection of its own, never a caller's: on SQLite `_run` commits around its pragma.
    with get_engine(url).connect() as conn:
        _run(conn)


def _run(connection) -> None:  # type: ignore[no-untyped-def]
    sqlite = connection.dialect.name == "sqlite"
    if sqlite:
        # Batch mode rebuilds a table (copy, DROP, rename), and with foreign keys enforced
        # (app.core.db turns them on) the DROP fires their ON DELETE actions: rebuilding
        # `job` deleted every event, checkpoint and model. The pragma does nothing inside a
        # transaction, so it is set before one begins, and restored after. (Alembic runs
        # SQLite's DDL outside transactions: a check here could not undo anything.)
        connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
        connection.commit()
    try:
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            render_as_batch=sqlite,
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()
    finally:
        if sqlite:
            connection.exec_driver_sql("PRAGMA foreign_keys=ON")
            connection.commit()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
