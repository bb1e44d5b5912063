"""The whole flow through HTTP with a real worker process on Postgres and Redis."""

import io
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load
from torchvision import models

from tests.integration.conftest import Digits, Service
from tests.support.client import upload, wait_job
from tests.support.images import digit_members, write_zip

pytestmark = pytest.mark.integration
FAST = {"image_size": 32, "augment": False, "batch_size": 32}


def plain_torchvision_predict(weights: bytes, classes: list[str], pngs: list[bytes]) -> list[str]:
    """What a user does with the downloaded file: torch, torchvision and safetensors only."""
    net = models.get_model("resnet18", weights=None, num_classes=len(classes))
    net.load_state_dict(load(weights), strict=True)
    net.eval()
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    batch = []
    for png in pngs:
        img = Image.open(io.BytesIO(png)).convert("RGB").resize((32, 32), Image.Resampling.BILINEAR)
        x = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 255
        batch.append((x - mean) / std)
    with torch.inference_mode():
        return [classes[i] for i in net(torch.stack(batch)).argmax(1).tolist()]


def test_train_poll_download_and_predict_held_out_digits(
    service: Service, digits10: Digits
) -> None:
    client = service.client
    dataset = upload(client, digits10.archive).raise_for_status().json()
    response = client.post(
        "/v1/jobs", json={"dataset_id": dataset["id"], "weights": None, "epochs": 3, **FAST}
    )
    assert response.status_code == 202
    job = wait_job(client, response.json()["id"])
    assert job["status"] == "succeeded", job
    assert job["attempts"] == 1 and job["progress"]["fraction"] == 1.0
    assert job["metrics"]["best_val_accuracy"] >= 0.9 and job["metrics"]["images_per_second"] > 0

    events = client.get(f"/v1/jobs/{job['id']}/events").json()["data"]
    statuses = [e["data"]["status"] for e in events if e["type"] == "status"]
    assert statuses[0] == "queued" and statuses[-1] == "succeeded" and "running" in statuses
    assert [e["data"]["epoch"] for e in events if e["type"] == "epoch"] == [1, 2, 3]

    checkpoints = client.get(f"/v1/jobs/{job['id']}/checkpoints").json()["data"]
    assert [c["epoch"] for c in checkpoints] == [1, 2, 3]
    model = client.get(f"/v1/models/{job['model_id']}").json()
    best = next(c for c in checkpoints if c["epoch"] == job["metrics"]["best_epoch"])
    download = client.get(f"/v1/jobs/{job['id']}/checkpoints/{best['id']}/content")
    assert download.headers["etag"] == f'"{best["sha256"]}"'
    assert client.get(f"/v1/models/{model['id']}/content").content == download.content

    classes = model["classes"]
    pngs = [png for png, _ in digits10.held_out]
    truth = [f"digit_{label}" for _, label in digits10.held_out]
    local = plain_torchvision_predict(download.content, classes, pngs)
    assert np.mean([p == t for p, t in zip(local, truth, strict=True)]) >= 0.9

    labels = []
    for start in range(0, len(pngs), 50):  # two requests: the service takes 64 files at most
        files = [
            ("files", (f"{i}.png", png, "image/png"))
            for i, png in enumerate(pngs[start : start + 50])
        ]
        served = client.post(f"/v1/models/{model['id']}/predict", files=files, params={"top_k": 3})
        labels += [p["label"] for p in served.raise_for_status().json()["predictions"]]
    assert np.mean([p == t for p, t in zip(labels, truth, strict=True)]) >= 0.9
    assert np.mean([a == b for a, b in zip(labels, local, strict=True)]) >= 0.95


def test_cancel_a_running_job_within_seconds(service: Service, digits10: Digits) -> None:
    client = service.client
    dataset = upload(client, digits10.archive).raise_for_status().json()
    job = client.post(
        "/v1/jobs", json={"dataset_id": dataset["id"], "weights": None, "epochs": 200, **FAST}
    ).json()
    running = wait_job(client, job["id"], until={"running"}, timeout=60)
    assert running["status"] == "running"
    assert client.post(f"/v1/jobs/{job['id']}/cancel").status_code == 202
    done = wait_job(client, job["id"], timeout=10)
    assert done["status"] == "cancelled" and done["model_id"] is None
    events = client.get(f"/v1/jobs/{job['id']}/events").json()["data"]
    assert events[-1]["type"] == "status" and events[-1]["data"]["status"] == "cancelled"
    assert client.post(f"/v1/jobs/{job['id']}/cancel").status_code == 409


def test_a_diverging_job_fails_with_a_clear_error_and_keeps_its_finite_epochs(
    service: Service, tmp_path: Path
) -> None:
    client = service.client
    members, _ = digit_members(range(10), per_class=20, size=16)
    dataset = upload(client, write_zip(tmp_path / "d.zip", members)).raise_for_status().json()
    spec = {
        "dataset_id": dataset["id"],
        "weights": None,
        "epochs": 30,
        **FAST,
        "image_size": 16,
        "optimizer": "sgd",
        "learning_rate": 5,  # half the highest the API accepts: the logits overflow within epochs
        "lr_schedule": "constant",
    }
    job = client.post("/v1/jobs", json=spec).json()
    job = wait_job(client, job["id"])
    assert job["status"] == "failed" and job["model_id"] is None, job
    assert job["error"]["code"] == "training_diverged", job
    assert "lower learning_rate" in job["error"]["message"]
    epochs = [c["epoch"] for c in client.get(f"/v1/jobs/{job['id']}/checkpoints").json()["data"]]
    assert epochs == list(range(1, len(epochs) + 1))
    assert f"in epoch {len(epochs) + 1};" in job["error"]["message"]
    events = client.get(f"/v1/jobs/{job['id']}/events").json()["data"]
    assert [e["type"] for e in events[-2:]] == ["error", "status"]


def test_pretrained_partial_then_transfer_by_linear_probe(service: Service, tmp_path) -> None:  # type: ignore[no-untyped-def]
    client = service.client
    first_members, _ = digit_members(range(5), per_class=40, size=32)
    second_members, _ = digit_members(range(5, 10), per_class=40, size=32)
    first = upload(client, write_zip(tmp_path / "a.zip", first_members)).raise_for_status().json()
    second = upload(client, write_zip(tmp_path / "b.zip", second_members)).raise_for_status().json()

    spec = {
        "dataset_id": first["id"],
        "weights": "DEFAULT",
        "strategy": "partial",
        "trainable_layers": 1,
        "epochs": 1,
        **FAST,
    }
    job = wait_job(client, client.post("/v1/jobs", json=spec).json()["id"])
    assert job["status"] == "succeeded", job
    source = load(client.get(f"/v1/models/{job['model_id']}/content").content)
    pretrained = torch.load(service.torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth")
    assert torch.equal(source["layer3.1.bn2.running_mean"], pretrained["layer3.1.bn2.running_mean"])
    assert not torch.equal(source["layer4.1.conv2.weight"], pretrained["layer4.1.conv2.weight"])

    spec = {
        "dataset_id": second["id"],
        "weights": {"model_id": job["model_id"]},
        "strategy": "linear_probe",
        "epochs": 1,
        **FAST,
    }
    probe = wait_job(client, client.post("/v1/jobs", json=spec).json()["id"])
    assert probe["status"] == "succeeded", probe
    target = load(client.get(f"/v1/models/{probe['model_id']}/content").content)
    body = [k for k in source if not k.startswith("fc.")]
    assert all(torch.equal(source[k], target[k]) for k in body)
    assert target["fc.weight"].shape == (5, 512)


def _sse(client, job_id: str, **headers: str) -> list[dict]:  # type: ignore[no-untyped-def]
    events, current = [], {}
    with client.stream(
        "GET",
        f"/v1/jobs/{job_id}/events",
        headers={"Accept": "text/event-stream", **headers},
        timeout=120,
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if not line:
                if "data" in current:
                    events.append(current)
                current = {}
            elif not line.startswith(":"):
                key, _, value = line.partition(":")
                current[key] = value.strip()
    return events


def test_events_stream_live_and_resume(service: Service, digits10: Digits) -> None:
    import json

    client = service.client
    dataset = upload(client, digits10.archive).raise_for_status().json()
    job = client.post(
        "/v1/jobs", json={"dataset_id": dataset["id"], "weights": None, "epochs": 2, **FAST}
    ).json()
    live = _sse(client, job["id"])  # returns once the terminal status event was sent
    ids = [int(e["id"]) for e in live]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert json.loads(live[-1]["data"])["data"]["status"] == "succeeded"
    assert [e["event"] for e in live].count("epoch") == 2
    listed = client.get(f"/v1/jobs/{job['id']}/events").json()["data"]
    assert [e["id"] for e in listed] == [e["id"] for e in live]
    resumed = _sse(client, job["id"], **{"Last-Event-ID": live[2]["id"]})
    assert [e["id"] for e in resumed] == [e["id"] for e in live[3:]]
    # A browser reconnects to a closed stream with the last id it saw: the stream must end
    # at once, not wait (keep-alives reset any read timeout) for events that never come.
    after_end: list[list[dict]] = []
    reader = threading.Thread(
        target=lambda: after_end.append(
            _sse(client, job["id"], **{"Last-Event-ID": live[-1]["id"]})
        ),
        daemon=True,
    )
    reader.start()
    reader.join(timeout=10)
    assert after_end == [[]], "the stream resumed after the terminal event did not end"
