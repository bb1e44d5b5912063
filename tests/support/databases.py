"""Throwaway PostgreSQL databases, migrated to head, for tests and benchmarks."""

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import create_engine, text

from app.core.db import get_engine
from app.core.migrate import upgrade


@contextmanager
def fresh_database(admin_url: str, name: str) -> Iterator[str]:
    """A new database `name` on `admin_url`'s server, upgraded with `alembic upgrade head`;
    dropped after, whatever its users left connected."""
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        url = admin_url.rsplit("/", 1)[0] + f"/{name}"
        try:
            upgrade(url)
            yield url
        finally:
            get_engine(url).dispose()
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()
