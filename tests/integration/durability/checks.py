"""What every fault-injection test asserts about the job it disturbed."""

from typing import Any

from tests.integration.durability.conftest import Cluster
from tests.support.client import wait_job
from tests.support.processes import wait_for

SPEC = {
    "weights": None,
    "epochs": 4,
    "image_size": 32,
    "augment": False,
    "batch_size": 16,
    "learning_rate": 0.002,
}


def submit(cluster: Cluster, **overrides: Any) -> str:
    body = {"dataset_id": cluster.dataset["id"], **SPEC, **overrides}
    response = cluster.client.post("/v1/jobs", json=body)
    assert response.status_code == 202, response.text
    return response.json()["id"]


def wait_epochs(cluster: Cluster, job_id: str, done: int) -> None:
    """Wait until `done` epochs are committed and the next one is under way."""

    def ready() -> bool:
        job = cluster.client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] != "running" or job["progress"]["epoch"] <= done:
            return False  # (progress names the epoch under way, and the one just ended)
        ckpts = cluster.client.get(f"/v1/jobs/{job_id}/checkpoints").json()["data"]
        return len(ckpts) >= done

    wait_for(ready, what=f"epoch {done + 1} of {job_id} under way")


def events(cluster: Cluster, job_id: str) -> list[dict]:
    return cluster.client.get(f"/v1/jobs/{job_id}/events", params={"limit": 1000}).json()["data"]


def assert_clean_history(cluster: Cluster, job_id: str, epochs: int = SPEC["epochs"]) -> dict:
    """One terminal state, every epoch once, each attempt resumed after the last committed epoch,
    and a final model that classifies held-out digits."""
    job = wait_job(cluster.client, job_id, timeout=120)
    assert job["status"] == "succeeded", (job, events(cluster, job_id)[-5:])
    evs = events(cluster, job_id)
    terminal = [
        e
        for e in evs
        if e["type"] == "status" and e["data"]["status"] in {"succeeded", "failed", "cancelled"}
    ]
    assert len(terminal) == 1
    epoch_events = [e["data"]["epoch"] for e in evs if e["type"] == "epoch"]
    assert epoch_events == list(range(1, epochs + 1)), epoch_events
    ckpts = cluster.client.get(f"/v1/jobs/{job_id}/checkpoints").json()["data"]
    assert [c["epoch"] for c in ckpts] == list(range(1, epochs + 1))
    committed = 0
    for e in evs:  # every attempt started right after the last epoch committed before it
        if e["type"] == "epoch":
            committed += 1
        elif "resumed_after_epoch" in e["data"]:
            assert e["data"]["resumed_after_epoch"] == committed, evs
    files = [
        ("files", (f"{i}.png", png, "image/png")) for i, (png, _) in enumerate(cluster.held_out)
    ]
    preds = cluster.client.post(f"/v1/models/{job['model_id']}/predict", files=files).json()[
        "predictions"
    ]
    correct = sum(
        p["label"] == f"digit_{label}"
        for p, (_, label) in zip(preds, cluster.held_out, strict=True)
    )
    assert correct / len(preds) >= 0.8, preds
    return job


def started_attempts(cluster: Cluster, job_id: str) -> list[int]:
    return [
        e["data"]["attempt"]
        for e in events(cluster, job_id)
        if e["type"] == "status" and "attempt" in e["data"] and e["data"]["status"] == "running"
    ]
