"""Probes, OpenAPI completeness and problem+json for every kind of error."""

import gc
import socket
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from alembic.script import ScriptDirectory
from botocore.exceptions import ReadTimeoutError
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.orm import Session

from app.core import db
from app.core.config import Settings
from app.core.errors import Unavailable
from app.core.migrate import alembic_config
from app.main import create_app


def test_probes(client: TestClient) -> None:
    assert client.get("/livez").json() == {"status": "ok"}
    client.app.state.warm_up.join(timeout=120)  # type: ignore[attr-defined]
    ready = client.get("/readyz")
    assert ready.status_code == 200
    checks = {"database": "ok", "broker": "ok", "storage": "ok", "warm_up": "ok"}
    assert ready.json()["checks"] == checks


def test_readyz_waits_for_the_warm_up(client: TestClient) -> None:
    """A replica takes traffic once requests no longer queue behind torchvision's import."""
    state = client.app.state  # type: ignore[attr-defined]
    state.warm_up.join(timeout=120)
    release = threading.Event()
    state.warm_up = threading.Thread(target=release.wait, daemon=True)
    state.warm_up.start()
    try:
        pending = client.get("/readyz")
        assert pending.status_code == 503 and pending.json()["checks"]["warm_up"] == "pending"
    finally:
        release.set()
        state.warm_up.join()
    assert client.get("/readyz").status_code == 200


def test_readyz_says_when_the_schema_is_behind_this_code(
    client: TestClient, db_session: Session
) -> None:
    """Behind or missing: not ready, and how to fix it. Ahead (a newer deploy migrated): ready."""
    client.app.state.warm_up.join(timeout=120)  # type: ignore[attr-defined]
    oldest = ScriptDirectory.from_config(alembic_config("")).get_base()

    def readyz_at(revision: str | None) -> tuple[int, str]:
        db_session.execute(text("DELETE FROM alembic_version"))
        if revision is not None:
            db_session.execute(
                text("INSERT INTO alembic_version (version_num) VALUES (:r)"), {"r": revision}
            )
        response = client.get("/readyz")
        return response.status_code, response.json()["checks"]["database"]

    status, database = readyz_at(oldest)
    assert status == 503 and f"schema at {oldest}" in database
    assert "run `finetune db upgrade`" in database
    status, database = readyz_at(None)
    assert status == 503 and database.startswith("failing: no schema")
    assert readyz_at("ffffffffffff") == (200, "ok")  # a revision from a newer release


def test_startup_freezes_torch_out_of_the_garbage_collectors_scans(client: TestClient) -> None:
    """A full collection scanning torch's ~400k objects stalled every request for ~170 ms."""
    client.app.state.warm_up.join(timeout=120)  # type: ignore[attr-defined]
    torchvision_models = sys.modules["torchvision.models"].__dict__
    assert gc.get_freeze_count() > 100_000
    assert not any(o is torchvision_models for o in gc.get_objects())


def test_readyz_reports_a_dead_database(tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings = Settings(
        data_dir=tmp_path, database_url="postgresql+psycopg://nobody@127.0.0.1:1/none"
    )
    with TestClient(create_app(settings)) as client:
        response = client.get("/readyz")
    assert response.status_code == 503 and response.json()["checks"]["database"].startswith(
        "failing"
    )


def test_readyz_reports_a_database_that_answers_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server that accepts connections and stays silent (frozen, a dead host behind a
    proxy) is reported failing after the connect timeout, not waited for forever."""
    # 2 s instead of the service's 10: libpq waits it out twice (its SSL request, then the
    # plain start-up), which took 20 s of the suite; what is tested is that it is bounded.
    monkeypatch.setitem(db.PG_CONNECT, "connect_timeout", 2)
    silent = socket.create_server(("127.0.0.1", 0))  # the kernel accepts; nobody answers
    port = silent.getsockname()[1]
    settings = Settings(
        data_dir=tmp_path, database_url=f"postgresql+psycopg://x@127.0.0.1:{port}/x"
    )
    answers: list[httpx.Response] = []
    with silent, TestClient(create_app(settings)) as client:
        probe = threading.Thread(target=lambda: answers.append(client.get("/readyz")), daemon=True)
        started = time.monotonic()
        probe.start()
        probe.join(60)
        assert answers, "/readyz still waiting on the silent database after 60 s"
    assert time.monotonic() - started < 10
    assert answers[0].status_code == 503
    assert answers[0].json()["checks"]["database"].startswith("failing")


def test_openapi_documents_every_route_with_problems(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    expected = {
        ("/v1/datasets", "post"),
        ("/v1/datasets", "get"),
        ("/v1/datasets/{dataset_id}", "get"),
        ("/v1/datasets/{dataset_id}", "delete"),
        ("/v1/jobs", "post"),
        ("/v1/jobs", "get"),
        ("/v1/jobs/{job_id}", "get"),
        ("/v1/jobs/{job_id}/cancel", "post"),
        ("/v1/jobs/{job_id}/events", "get"),
        ("/v1/jobs/{job_id}/checkpoints", "get"),
        ("/v1/jobs/{job_id}/checkpoints/{checkpoint_id}/content", "get"),
        ("/v1/models", "get"),
        ("/v1/models/{model_id}", "get"),
        ("/v1/models/{model_id}/content", "get"),
        ("/v1/models/{model_id}/predict", "post"),
        ("/v1/backbones", "get"),
        ("/livez", "get"),
        ("/readyz", "get"),
    }
    assert expected <= {(p, m) for p, ops in paths.items() for m in ops}
    for path, method in expected:
        if "{" in path:
            assert "404" in paths[path][method]["responses"], (path, method)
    schemas = spec["components"]["schemas"]
    assert "Problem" in schemas and "examples" in schemas["JobCreate"]
    assert client.get("/docs").status_code == 200
    for path, ops in paths.items():
        for method, op in ops.items():
            where = (path, method)
            assert op.get("summary") and op.get("description"), where
            assert ("422" in op["responses"]) == bool(op.get("parameters") or "requestBody" in op)
            for status, response in op["responses"].items():
                assert "X-Request-ID" in response["headers"], (*where, status)
                if status[0] in "45" and where != ("/readyz", "get"):
                    example = response["content"]["application/problem+json"]["example"]
                    assert example["status"] == int(status) and "{" not in example["instance"]
    for path in ("/v1/datasets", "/v1/jobs"):
        created = paths[path]["post"]["responses"]["201" if "datasets" in path else "202"]
        assert created["headers"]["Location"]["schema"]["example"].startswith(path + "/")
    download = paths["/v1/models/{model_id}/content"]["get"]["responses"]["200"]
    assert "ETag" in download["headers"]
    conflict = paths["/v1/datasets/{dataset_id}"]["delete"]["responses"]["409"]
    assert conflict["content"]["application/problem+json"]["example"]["code"] == "dataset_in_use"

    def example(path: str, method: str, status: str) -> dict:
        response = paths[path][method]["responses"][status]
        return response["content"]["application/problem+json"]["example"]

    for path in (
        "/v1/models/{model_id}/content",
        "/v1/jobs/{job_id}/checkpoints/{checkpoint_id}/content",
    ):
        responses = paths[path]["get"]["responses"]
        assert {"200", "206", "304", "400", "416"} <= set(responses), path
        assert example(path, "get", "400")["code"] == "range_invalid"
        assert example(path, "get", "416")["code"] == "range_not_satisfiable"
        assert "Content-Range" in responses["416"]["headers"]
        assert {"ETag", "Content-Range"} <= set(responses["206"]["headers"])
    assert example("/v1/models/{model_id}/content", "get", "500")["code"] == "export_failed"
    for path in ("/v1/datasets", "/v1/models/{model_id}/predict"):  # multipart bodies
        assert "400" in paths[path]["post"]["responses"], path
    # The examples say what the service says, under the default limits.
    defaults = Settings()
    limits = {
        "/v1/datasets": defaults.max_upload_bytes,
        "/v1/models/{model_id}/predict": defaults.max_predict_bytes,
        "/v1/jobs": defaults.max_json_bytes,
    }
    for path, limit in limits.items():
        assert f"larger than {int(limit)} bytes" in example(path, "post", "413")["detail"]
    assert "uploads" in example("/v1/datasets", "post", "429")["detail"]
    assert defaults.rate_limit_jobs in example("/v1/jobs", "post", "429")["detail"]


def test_unhandled_errors_are_problems_without_traces(client: TestClient) -> None:
    @client.app.get("/boom")  # type: ignore[attr-defined]
    def boom() -> None:
        raise RuntimeError("secret internals")

    response = client.get("/boom")
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/problem+json"
    assert "secret" not in response.text and response.json()["code"] == "internal_error"
    assert client.get("/v1/nowhere").json()["code"] == "not_found"

    @client.app.get("/silent-store")  # type: ignore[attr-defined]
    def silent_store() -> None:
        raise ReadTimeoutError(endpoint_url="http://store/bucket/key")

    response = client.get("/silent-store")
    assert response.status_code == 503 and response.headers["retry-after"] == "5"
    assert response.json()["code"] == "storage_unavailable"


def test_a_method_not_allowed_names_every_method_the_path_answers(client: TestClient) -> None:
    """`GET /v1/jobs` and `POST /v1/jobs` are two routes: Allow lists both (RFC 9110)."""
    listing = client.delete("/v1/jobs")
    assert listing.status_code == 405
    assert listing.headers["content-type"] == "application/problem+json"
    assert listing.json()["code"] == "method_not_allowed"
    assert listing.headers["allow"] == "GET, HEAD, POST"
    assert client.put("/v1/datasets/ds_0").headers["allow"] == "GET, HEAD, DELETE"
    assert client.get("/v1/models/m_0/predict").headers["allow"] == "POST"


def test_an_overloaded_service_says_when_to_retry(client: TestClient) -> None:
    @client.app.get("/busy")  # type: ignore[attr-defined]
    def busy() -> None:
        raise Unavailable("prediction queue is full; retry shortly", code="overloaded")

    response = client.get("/busy")
    assert response.status_code == 503 and response.headers["retry-after"] == "1"
    assert response.json()["code"] == "overloaded"


def test_a_database_that_does_not_answer_is_a_503(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path, database_url="postgresql+psycopg://nobody@127.0.0.1:1/none"
    )
    with TestClient(create_app(settings)) as client:
        response = client.get("/v1/jobs")
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "database_unavailable"
    assert client.put("/v1/jobs").json()["code"] == "method_not_allowed"
