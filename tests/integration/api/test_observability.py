"""Prometheus metrics, request ids and structured logs."""

import io
import json
import logging

from fastapi.testclient import TestClient
from pythonjsonlogger.json import JsonFormatter

from app.core.logs import ContextFilter


def test_metrics_count_routes_and_jobs(client: TestClient, dataset: dict) -> None:
    job = client.post("/v1/jobs", json={"dataset_id": dataset["id"], "weights": None}).json()
    client.get(f"/v1/jobs/{job['id']}")
    client.get("/v1/jobs/job_nope")
    text = client.get("/metrics").text
    assert (
        'finetune_http_requests_total{method="GET",route="/v1/jobs/{job_id}",status="200"} 1.0'
        in text
    )
    assert 'route="/v1/jobs/{job_id}",status="404"' in text
    assert 'finetune_jobs{status="queued"}' in text and "finetune_queue_depth" in text
    assert "finetune_workers_alive 0.0" in text and "finetune_job_duration_seconds_count" in text
    assert "finetune_http_request_duration_seconds_bucket" in text


def test_request_ids_are_echoed_and_logged(client: TestClient) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter("%(message)s %(request_id)s"))
    logging.getLogger("app").addHandler(handler)
    try:

        @client.app.get("/boom")  # type: ignore[attr-defined]
        def boom() -> None:
            raise RuntimeError("kaboom")

        response = client.get("/boom", headers={"X-Request-ID": "req-42"})
    finally:
        logging.getLogger("app").removeHandler(handler)
    assert response.headers["x-request-id"] == "req-42"
    logged = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert any(entry["request_id"] == "req-42" for entry in logged), logged
    assert len(client.get("/livez").headers["x-request-id"]) == 32
