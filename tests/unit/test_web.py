"""The dashboard's files: served at / and /ui/, without a key, and kept out of the OpenAPI doc."""

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.core.config import Settings
from app.main import create_app
from app.web.router import STATIC_DIR


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> TestClient:
    # Auth on: the page itself must load without a key (the key is typed into it).
    root: Path = tmp_path_factory.mktemp("web")
    settings = Settings(
        data_dir=root, database_url=f"sqlite:///{root}/db.sqlite", auth_required=True
    )
    return TestClient(create_app(settings))  # no lifespan: nothing here touches the DB


def test_index_is_the_dashboard_page(client: TestClient) -> None:
    response = client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert '<script type="module" src="/ui/app.js">' in response.text
    assert "default-src 'self'" in response.headers["content-security-policy"]


@pytest.mark.parametrize(
    ("name", "content_type"),
    [
        ("app.js", "text/javascript; charset=utf-8"),
        ("job.js", "text/javascript; charset=utf-8"),
        ("style.css", "text/css; charset=utf-8"),
    ],
)
def test_assets_answer_with_their_content_type(
    client: TestClient, name: str, content_type: str
) -> None:
    response = client.get(f"/ui/{name}")
    assert response.status_code == 200
    assert response.headers["content-type"] == content_type
    assert response.content == (STATIC_DIR / name).read_bytes()


def test_every_module_the_page_imports_is_served(client: TestClient) -> None:
    for path in STATIC_DIR.glob("*.js"):
        for line in path.read_text().splitlines():
            if line.startswith("import ") and ' from "./' in line:
                name = line.split(' from "./', 1)[1].split('"', 1)[0]
                assert client.get(f"/ui/{name}").status_code == 200, (path.name, name)


@pytest.mark.parametrize("name", ["missing.js", "..%2Frouter.py", "__init__.py"])
def test_nothing_else_is_served(client: TestClient, name: str) -> None:
    response = client.get(f"/ui/{name}")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"


def test_openapi_leaves_the_dashboard_out(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert "/" not in paths and not [p for p in paths if p.startswith("/ui")]
    assert "/v1/jobs" in paths
