"""Shared fixtures: a fresh Postgres database migrated by Alembic, real test images."""

import os
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import create_engine, text

from app.core.db import get_engine
from app.core.migrate import upgrade

PG_ADMIN_URL = os.environ.get(
    "FINETUNE_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("FINETUNE_TEST_REDIS", "redis://127.0.0.1:6379/11")


@contextmanager
def fresh_database(name: str) -> Iterator[str]:
    """A new Postgres database `name` upgraded with `alembic upgrade head`; dropped after."""
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        upgrade(url)
        yield url
    finally:
        get_engine(url).dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A new, empty database for this test run."""
    with fresh_database(f"finetune_test_{os.getpid()}") as url:
        yield url


@pytest.fixture(scope="session")
def redis_url() -> str:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    client.close()
    return REDIS_URL
