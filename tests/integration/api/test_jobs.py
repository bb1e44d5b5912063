"""Job routes over HTTP: spec validation, defaults, idempotency, cancel, events, 404s."""

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event, update
from sqlalchemy.orm import ORMExecuteState, Session

from app.api.deps import get_session
from app.core import registry
from app.core.config import Settings
from app.core.models import Job, JobStatus
from app.jobs.router import resume_point
from app.main import create_app
from tests.support.webserver import serving


def _field(problem: dict) -> str:
    return problem["errors"][0]["field"]


def test_spec_defaults_are_filled_and_echoed(client: TestClient, dataset: dict) -> None:
    response = client.post("/v1/jobs", json={"dataset_id": dataset["id"], "weights": None})
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] == "queued" and job["attempts"] == 0 and job["model_id"] is None
    spec = job["spec"]
    assert spec["backbone"] == "resnet18" and spec["strategy"] == "full" and spec["epochs"] == 10
    assert spec["optimizer"] == "adamw" and spec["mixed_precision"] == "auto"
    assert client.get(f"/v1/jobs/{job['id']}").json() == job


@pytest.mark.parametrize(
    ("patch", "status", "code", "field"),
    [
        ({"bogus": 1}, 422, "validation_error", "body.bogus"),
        ({"epochs": 0}, 422, "validation_error", "body.epochs"),
        ({"strategy": "half"}, 422, "validation_error", "body.strategy"),
        ({"learning_rate": -1}, 422, "validation_error", "body.learning_rate"),
        ({"warmup_epochs": 5, "epochs": 2}, 422, "validation_error", "body.warmup_epochs"),
        ({"backbone": "resnet9000"}, 422, "backbone_unknown", "body.backbone"),
        (
            {"backbone": "vit_b_16", "image_size": 32},
            422,
            "image_size_unsupported",
            "body.image_size",
        ),
        (
            {"backbone": "alexnet", "image_size": 32},
            422,
            "image_size_unsupported",
            "body.image_size",
        ),
        (
            {"backbone": "inception_v3", "image_size": 224},  # its auxiliary head needs 299
            422,
            "image_size_unsupported",
            "body.image_size",
        ),
        (
            {"image_size": 32, "batch_size": 1},  # ResNet18's last maps are 1×1 there
            422,
            "batch_size_unsupported",
            "body.batch_size",
        ),
        (
            {"early_stopping_patience": 2, "validation_split": 0},  # no val/ either
            422,
            "validation_missing",
            "body.early_stopping_patience",
        ),
        ({"weights": "IMAGENET9K_V9"}, 422, "weights_unknown", "body.weights"),
        (
            {"backbone": "vit_b_16", "weights": "IMAGENET1K_SWAG_E2E_V1"},  # for 384 px ViTs
            422,
            "weights_unsupported",
            "body.weights",
        ),
        ({"weights": {"model_id": "mdl_missing"}}, 422, "model_not_found", "body.weights.model_id"),
        ({"dataset_id": "ds_missing"}, 422, "dataset_not_found", "body.dataset_id"),
    ],
)
def test_bad_specs_are_refused_naming_the_field(
    client, dataset, patch, status, code, field
) -> None:  # type: ignore[no-untyped-def]
    response = client.post("/v1/jobs", json={"dataset_id": dataset["id"], "weights": None, **patch})
    assert response.status_code == status, response.text
    problem = response.json()
    assert response.headers["content-type"] == "application/problem+json"
    assert problem["code"] == code and _field(problem) == field
    assert problem["title"] == "Unprocessable content"  # the same for the schema's and ours


def test_missing_weights_are_refused_unless_they_can_be_downloaded(
    client: TestClient, dataset: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A weights file missing from TORCH_HOME is accepted when its URL answers (the worker
    downloads it), and refused, saying where to put it, when it does not. A local server
    stands in for download.pytorch.org, out of reach here."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(registry, "_answered", {})
    real = registry.resolve_weights("resnet18", "DEFAULT")
    name = Path(real.path).name
    (tmp_path / "web").mkdir()
    with serving(tmp_path / "web") as web:
        url = f"{web}/{name}"
        monkeypatch.setattr(
            registry,
            "resolve_weights",
            lambda *_: registry.ResolvedWeights(real.name, real.path, url),
        )
        body = {"dataset_id": dataset["id"], "weights": "DEFAULT"}
        response = client.post("/v1/jobs", json=body)
        assert response.status_code == 422
        problem = response.json()
        assert problem["code"] == "weights_unavailable" and real.path in problem["detail"]
        assert f"{url} answered 404" in problem["detail"]
        (tmp_path / "web" / name).write_bytes(b"weights")
        assert client.post("/v1/jobs", json=body).status_code == 202  # the worker fetches it
    assert client.post("/v1/jobs", json=body).status_code == 202  # its answer is remembered
    registry._answered.clear()  # five minutes later
    response = client.post("/v1/jobs", json=body)  # the server is gone
    assert response.status_code == 422 and "out of reach" in response.json()["detail"]
    Path(real.path).parent.mkdir(parents=True)
    Path(real.path).write_bytes(b"placeholder: the API only checks presence")
    assert client.post("/v1/jobs", json=body).status_code == 202, response.text


def test_downloads_off_refuse_missing_weights(
    settings: Settings,
    db_session: Session,
    dataset: dict,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    app = create_app(settings.model_copy(update={"weights_download": False}))
    app.dependency_overrides[get_session] = lambda: db_session
    with TestClient(app) as offline:
        response = offline.post("/v1/jobs", json={"dataset_id": dataset["id"]})
    assert response.status_code == 422 and "downloads are off" in response.json()["detail"]


def test_idempotency_key_replays_or_refuses(client: TestClient, dataset: dict) -> None:
    body = {"dataset_id": dataset["id"], "weights": None, "epochs": 3}
    headers = {"Idempotency-Key": "abc-123"}
    first = client.post("/v1/jobs", json=body, headers=headers)
    again = client.post("/v1/jobs", json=body, headers=headers)
    assert first.status_code == 202 and again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    other = client.post("/v1/jobs", json={**body, "epochs": 4}, headers=headers)
    assert other.status_code == 422 and other.json()["code"] == "idempotency_key_reused"
    for _ in range(2):  # an empty key was stored as one: the second POST was a 500
        empty = client.post("/v1/jobs", json=body, headers={"Idempotency-Key": ""})
        assert empty.status_code == 422, empty.text
        assert empty.json()["errors"][0]["field"] == "header.idempotency-key"


def test_cancel_queued_job_at_once_then_409(client: TestClient, dataset: dict) -> None:
    job = client.post("/v1/jobs", json={"dataset_id": dataset["id"], "weights": None}).json()
    response = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert response.status_code == 202 and response.json()["status"] == "cancelled"
    assert response.json()["finished_at"] is not None
    again = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert again.status_code == 409 and again.json()["code"] == "job_not_cancellable"
    events = client.get(f"/v1/jobs/{job['id']}/events").json()["data"]
    assert [(e["type"], e["data"]["status"]) for e in events] == [
        ("status", "queued"),
        ("status", "cancelled"),
    ]
    after = client.get(f"/v1/jobs/{job['id']}/events", params={"after": events[0]["id"]}).json()
    assert [e["id"] for e in after["data"]] == [events[1]["id"]]
    url = f"/v1/jobs/{job['id']}/events"
    assert client.get(url, params={"after": 2**63 - 1}).json()["data"] == []
    assert client.get(url, params={"after": 2**63}).status_code == 422  # was a 500 on SQLite
    # Header values arrive decoded as latin-1; these were 500s, they now start over.
    assert [resume_point(bad, None) for bad in ("²", "9" * 20, "-1", "")] == [0, 0, 0, 0]
    assert (resume_point("42", 7), resume_point(None, 7)) == (42, 7)


def test_a_job_that_keeps_changing_state_under_cancel_gets_503_and_stays(
    client: TestClient, db_session: Session, dataset: dict
) -> None:
    job = client.post("/v1/jobs", json={"dataset_id": dataset["id"], "weights": None}).json()
    flips = []

    @event.listens_for(db_session, "do_orm_execute")
    def finish_first(state: ORMExecuteState) -> None:
        # Before each of cancel's updates the job leaves queued (a worker ends it); the
        # rollback after the missed update brings it back (a reaper requeues it): each read
        # says "cancellable", each update misses.
        if state.is_update:
            flips.append(state.statement)
            state.session.connection().execute(
                update(Job).where(Job.id == job["id"]).values(status=JobStatus.succeeded)
            )

    response = client.post(f"/v1/jobs/{job['id']}/cancel")
    event.remove(db_session, "do_orm_execute", finish_first)
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "unavailable" and "try again" in response.json()["detail"]
    assert len(flips) == 10  # five rounds of (queued?, running?)
    assert client.get(f"/v1/jobs/{job['id']}").json()["status"] == "queued"
    events = client.get(f"/v1/jobs/{job['id']}/events").json()["data"]
    assert [e["data"]["status"] for e in events] == ["queued"]
    assert client.post(f"/v1/jobs/{job['id']}/cancel").json()["status"] == "cancelled"


def test_list_filters_by_status_newest_first(client: TestClient, dataset: dict) -> None:
    a = client.post("/v1/jobs", json={"dataset_id": dataset["id"], "weights": None}).json()
    b = client.post("/v1/jobs", json={"dataset_id": dataset["id"], "weights": None}).json()
    client.post(f"/v1/jobs/{a['id']}/cancel")
    queued = client.get("/v1/jobs", params={"status": "queued"}).json()["data"]
    assert b["id"] in [j["id"] for j in queued] and a["id"] not in [j["id"] for j in queued]
    page = client.get("/v1/jobs", params={"limit": 1}).json()
    assert page["data"][0]["id"] == b["id"] and page["has_more"] and page["next_cursor"] == b["id"]
    assert client.get("/v1/jobs", params={"status": "lost"}).status_code == 422


@pytest.mark.parametrize(
    "path",
    [
        "/v1/jobs/job_nope",
        "/v1/jobs/job_nope/events",
        "/v1/jobs/job_nope/checkpoints",
        "/v1/jobs/job_nope/checkpoints/ckpt_nope/content",
    ],
)
def test_unknown_job_is_404_problem(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] in {"job_not_found", "checkpoint_not_found"}


def test_queued_job_says_why_it_waits(client: TestClient, dataset: dict) -> None:
    job = client.post("/v1/jobs", json={"dataset_id": dataset["id"], "weights": None}).json()
    queue = client.get(f"/v1/jobs/{job['id']}").json()["queue"]
    assert queue["position"] >= 1 and queue["workers_alive"] == 0
    assert "no worker is alive" in queue["reason"]
    second = client.post("/v1/jobs", json={"dataset_id": dataset["id"], "weights": None}).json()
    listed = {
        j["id"]: j["queue"]
        for j in client.get("/v1/jobs", params={"status": "queued"}).json()["data"]
    }
    assert listed[second["id"]]["position"] == listed[job["id"]]["position"] + 1
    client.post(f"/v1/jobs/{second['id']}/cancel")
    client.post(f"/v1/jobs/{job['id']}/cancel")
    assert client.get(f"/v1/jobs/{job['id']}").json()["queue"] is None


def test_retry_requeues_only_failed_jobs(client: TestClient, dataset: dict, db_session) -> None:  # type: ignore[no-untyped-def]
    from app.core.models import Job

    job = client.post("/v1/jobs", json={"dataset_id": dataset["id"], "weights": None}).json()
    refused = client.post(f"/v1/jobs/{job['id']}/retry")
    assert refused.status_code == 409 and refused.json()["code"] == "job_not_retryable"
    row = db_session.get(Job, job["id"])
    row.status, row.attempts, row.error = (
        "failed",
        3,
        {"code": "max_attempts_exceeded", "message": "x"},
    )
    db_session.commit()
    retried = client.post(f"/v1/jobs/{job['id']}/retry")
    assert retried.status_code == 202, retried.text
    body = retried.json()
    assert body["status"] == "queued" and body["error"] is None and body["attempts"] == 3
    assert client.post("/v1/jobs/job_nope/retry").status_code == 404
    row.status, row.dataset_id = "failed", None  # its dataset was deleted since
    db_session.commit()
    orphan = client.post(f"/v1/jobs/{job['id']}/retry")  # was queued, to fail again
    assert orphan.status_code == 409 and "dataset was deleted" in orphan.json()["detail"]
