"""Shared fixtures: a fresh Postgres database migrated by Alembic, real test images."""

import os
from collections.abc import Iterator

import pytest

from tests.support.databases import fresh_database

PG_ADMIN_URL = os.environ.get(
    "FINETUNE_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("FINETUNE_TEST_REDIS", "redis://127.0.0.1:6379/11")


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A new, empty database for this test run."""
    with fresh_database(PG_ADMIN_URL, f"finetune_test_{os.getpid()}") as url:
        yield url


@pytest.fixture(scope="session")
def redis_url() -> str:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    client.close()
    return REDIS_URL
