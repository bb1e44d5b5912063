"""Tenants: keys required, and another tenant's resources answer 404 on every route."""

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from app.api.deps import get_session
from app.core.config import Settings
from app.core.db import get_sessionmaker
from app.core.ids import new_id
from app.core.keys import create_key, tenant_for_key
from app.core.models import Checkpoint, Dataset
from app.core.storage import get_storage
from app.main import create_app
from tests.support.factories import make_model


@pytest.fixture
def secured(settings: Settings, db_session: Session) -> Iterator[tuple[TestClient, dict, dict]]:
    """An app with keys required and two tenants, each with its key's headers."""
    strict = settings.model_copy(update={"auth_required": True})
    key_a, _ = create_key(db_session, "tenant-a")
    key_b, _ = create_key(db_session, "tenant-b")
    db_session.commit()
    app = create_app(strict)
    app.dependency_overrides[get_session] = lambda: db_session
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client, {"Authorization": f"Bearer {key_a}"}, {"Authorization": f"Bearer {key_b}"}


def test_keys_are_required_and_checked(secured, digits_zip: Path) -> None:  # type: ignore[no-untyped-def]
    client, a, _ = secured
    for headers in ({}, {"Authorization": "Bearer ft_nope_nope"}, {"Authorization": "Basic eDp5"}):
        response = client.get("/v1/datasets", headers=headers)
        assert response.status_code == 401, headers
        assert response.json()["code"] == "unauthorized"
        assert response.headers["www-authenticate"] == "Bearer"
    assert client.get("/v1/datasets", headers=a).status_code == 200
    client.app.state.warm_up.join(timeout=120)  # type: ignore[attr-defined]
    assert client.get("/livez").status_code == 200 and client.get("/readyz").status_code == 200


def test_another_tenants_ids_answer_404_everywhere(  # type: ignore[no-untyped-def]
    secured, digits_zip: Path, db_session: Session, settings: Settings
) -> None:
    client, a, b = secured
    with digits_zip.open("rb") as fh:
        dataset = client.post("/v1/datasets", files={"file": ("d.zip", fh)}, headers=a).json()
    tenant_a = db_session.get(Dataset, dataset["id"]).tenant_id
    model = make_model(db_session, get_storage(settings), dataset, tenant=tenant_a)
    ckpt = db_session.get(Checkpoint, model.checkpoint_id)
    job = client.post(
        "/v1/jobs", json={"dataset_id": dataset["id"], "weights": None}, headers=a
    ).json()
    png = b"\x89PNG\r\n\x1a\n"
    routes = [
        ("GET", f"/v1/datasets/{dataset['id']}", {}),
        ("DELETE", f"/v1/datasets/{dataset['id']}", {}),
        ("GET", f"/v1/jobs/{job['id']}", {}),
        ("POST", f"/v1/jobs/{job['id']}/cancel", {}),
        ("POST", f"/v1/jobs/{job['id']}/retry", {}),
        ("GET", f"/v1/jobs/{job['id']}/events", {}),
        ("GET", f"/v1/jobs/{job['id']}/checkpoints", {}),
        ("GET", f"/v1/jobs/{model.job_id}/checkpoints/{ckpt.id}/content", {}),
        ("GET", f"/v1/models/{model.id}", {}),
        ("GET", f"/v1/models/{model.id}/content", {}),
        ("POST", f"/v1/models/{model.id}/predict", {"files": {"files": ("x.png", png)}}),
    ]
    for method, path, extra in routes:
        theirs = client.request(method, path, headers=b, **extra)
        assert theirs.status_code == 404, (method, path, theirs.text)
        missing = client.request(method, path.replace("_0", "_f"), headers=b, **extra)
        assert missing.status_code == 404 and missing.json()["code"] == theirs.json()["code"]
    # ids inside a body: 422 naming the field, exactly as an unknown id
    spec = {"dataset_id": dataset["id"], "weights": {"model_id": model.id}}
    response = client.post("/v1/jobs", json=spec, headers=b)
    assert (
        response.status_code == 422 and response.json()["errors"][0]["field"] == "body.dataset_id"
    )
    for listing in ("/v1/datasets", "/v1/jobs", "/v1/models"):
        assert client.get(listing, headers=b).json()["data"] == []
        assert client.get(listing, headers=a).json()["data"] != []
    # and A still sees everything it owns
    assert client.get(f"/v1/models/{model.id}/content", headers=a).status_code == 200
    assert client.get(f"/v1/jobs/{job['id']}/events", headers=a).json()["data"]


def _two_jobs_a_minute(settings: Settings, db_session: Session) -> FastAPI:
    limited = settings.model_copy(
        update={"rate_limit_jobs": "2/minute", "broker_url": settings.broker_url}
    )
    app = create_app(limited)
    app.dependency_overrides[get_session] = lambda: db_session
    return app


def test_job_submissions_are_rate_limited_per_tenant(
    settings: Settings, db_session: Session, dataset: dict
) -> None:
    app = _two_jobs_a_minute(settings, db_session)
    body = {"dataset_id": dataset["id"], "weights": None}
    with TestClient(app) as client:
        codes = [client.post("/v1/jobs", json=body).status_code for _ in range(3)]
        assert codes[:2] == [202, 202]
        refused = client.post("/v1/jobs", json=body)
    assert codes[2] == 429 and refused.status_code == 429
    assert refused.json()["code"] == "rate_limited" and int(refused.headers["retry-after"]) >= 1


def test_a_replayed_submission_is_not_counted_by_the_rate_limit(
    settings: Settings, db_session: Session, dataset: dict
) -> None:
    """A client that never got its answer sends the same Idempotency-Key again: it gets its
    job back, not a 429, however often it retries (replays used to use up the limit)."""
    app = _two_jobs_a_minute(settings, db_session)
    body = {"dataset_id": dataset["id"], "weights": None}
    with TestClient(app) as client:
        key = {"Idempotency-Key": "k1"}
        sent = [client.post("/v1/jobs", json=body, headers=key) for _ in range(3)]
        second = client.post("/v1/jobs", json=body)
        refused = client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "k2"})
    assert [r.status_code for r in sent] == [202, 200, 200]
    assert len({r.json()["id"] for r in sent}) == 1
    assert second.status_code == 202 and refused.status_code == 429


def test_a_key_lookup_leaves_no_transaction_open(pg_url: str) -> None:
    """It runs before a request's own work, which may take minutes away from the database
    (an upload received and checked): an open read would keep its connection idle in a
    transaction all along."""
    sessions = get_sessionmaker(pg_url)
    with sessions() as session:
        key, tenant = create_key(session, f"lookup-{new_id('t')}")
        session.commit()
    with sessions() as session:
        for _ in range(2):  # the first records the key's last use; the second only reads
            assert tenant_for_key(session, key) == tenant.id
            assert not session.in_transaction()
        assert tenant_for_key(session, key[:-1]) is None  # a known prefix, a wrong secret
        assert not session.in_transaction()
