"""HTTP helpers shared by the integration tests."""

import time
from typing import Any

import httpx

from app.core.models import TERMINAL_STATUSES


def wait_job(
    client: httpx.Client,
    job_id: str,
    until: frozenset[str] | set[str] = TERMINAL_STATUSES,
    timeout: float = 180,
) -> dict[str, Any]:
    """Poll GET /v1/jobs/{id} until its status is in `until`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").raise_for_status().json()
        if job["status"] in until:
            return job
        time.sleep(0.25)
    raise TimeoutError(f"job {job_id} still {job['status']} after {timeout}s: {job}")


def wait_exports(client: httpx.Client, model_id: str, timeout: float = 240) -> dict[str, Any]:
    """Poll GET /v1/models/{id} until the cpu queue recorded both exports."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        model = client.get(f"/v1/models/{model_id}").raise_for_status().json()
        if {"onnx", "torchscript"} <= set(model["exports"]):
            return model
        time.sleep(0.5)
    raise TimeoutError(f"exports of {model_id} not recorded after {timeout}s: {model['exports']}")


def upload(client: httpx.Client, archive_path: Any, name: str | None = None) -> httpx.Response:
    with open(archive_path, "rb") as fh:
        data = {"name": name} if name else None
        return client.post("/v1/datasets", files={"file": (archive_path.name, fh)}, data=data)
