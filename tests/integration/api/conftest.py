"""API tests: the real app over HTTP (TestClient), Postgres inside a rolled-back transaction."""

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from app.api.deps import get_session
from app.core.config import Settings
from app.main import create_app
from tests.support.images import digit_members, write_zip


@pytest.fixture
def settings(tmp_path: Path, pg_url: str) -> Settings:
    return Settings(data_dir=tmp_path / "var", database_url=pg_url)


@pytest.fixture
def client(settings: Settings, db_session: Session) -> Iterator[TestClient]:
    app = create_app(settings)
    app.dependency_overrides[get_session] = lambda: db_session
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture(scope="session")
def digits_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    members, _ = digit_members(range(3), per_class=12, size=16)
    return write_zip(tmp_path_factory.mktemp("archives") / "digits.zip", members)


@pytest.fixture
def dataset(client: TestClient, digits_zip: Path) -> dict:
    with digits_zip.open("rb") as fh:
        response = client.post("/v1/datasets", files={"file": ("digits.zip", fh)})
    assert response.status_code == 201, response.text
    return response.json()
