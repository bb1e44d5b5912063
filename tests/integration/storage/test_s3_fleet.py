"""A fleet on S3: API, a gpu-queue worker and a cpu-queue worker on three 'hosts'.

Each process gets its own data directory, so the only thing they share is the bucket (and
Postgres + Redis): the dataset the API stores must reach the trainer through S3, and the
checkpoints and model the trainer stores must reach the API and the exporter through S3.
"""

import os
from pathlib import Path

import httpx
import pytest
from safetensors.torch import load

from app.core.storage import RemoteStorage
from tests.integration.conftest import Digits
from tests.integration.storage.conftest import S3
from tests.support.client import upload, wait_exports, wait_job
from tests.support.processes import free_port, running, service_env, wait_http, wait_log

pytestmark = pytest.mark.integration


def test_upload_train_export_and_download_through_s3(
    tmp_path: Path, s3: S3, pg_url: str, redis_url: str, digits10: Digits
) -> None:
    pid = os.getpid()
    common = {
        "database_url": pg_url,
        "broker_url": redis_url,
        "storage_url": f"s3://{s3.bucket}/fleet",
        "storage_options": s3.options_json(),
        "gpu_queue": f"fleet-gpu-{pid}",
        "cpu_queue": f"fleet-cpu-{pid}",
        "progress_interval_s": "0.5",
    }
    hosts = {name: tmp_path / name for name in ("api", "gpu", "cpu")}
    env = {name: service_env(data_dir=str(root), **common) for name, root in hosts.items()}
    port = free_port()
    with (
        running(
            ["worker", "--queues", common["gpu_queue"]], env["gpu"], tmp_path / "gpu.log"
        ) as gpu,
        running(
            ["worker", "--queues", common["cpu_queue"]], env["cpu"], tmp_path / "cpu.log"
        ) as cpu,
        running(["api", "--port", str(port)], env["api"], tmp_path / "api.log") as api,
    ):
        wait_log(tmp_path / "gpu.log", "ready.", gpu)
        wait_log(tmp_path / "cpu.log", "ready.", cpu)
        wait_http(f"http://127.0.0.1:{port}/readyz", api, tmp_path / "api.log")
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)

        dataset = upload(client, digits10.archive).raise_for_status().json()
        assert s3.keys(f"fleet/datasets/{dataset['id']}/")
        spec = {"dataset_id": dataset["id"], "weights": None, "epochs": 2, "image_size": 32}
        job = wait_job(
            client, client.post("/v1/jobs", json={**spec, "augment": False}).json()["id"]
        )
        assert job["status"] == "succeeded", job

        checkpoints = client.get(f"/v1/jobs/{job['id']}/checkpoints").json()["data"]
        stored = set(s3.keys(f"fleet/jobs/{job['id']}/"))
        for ckpt in checkpoints:
            body = client.get(f"/v1/jobs/{job['id']}/checkpoints/{ckpt['id']}/content")
            assert body.headers["etag"] == f'"{ckpt["sha256"]}"'
            assert load(body.content)["fc.weight"].shape == (10, 512)
        assert any("/checkpoints/" in k for k in stored) and any(
            "/tensorboard/" in k for k in stored
        )

        model = wait_exports(client, job["model_id"])
        made = model["exports"]
        assert (
            set(s3.keys(f"fleet/models/{model['id']}/"))
            == {  # named by their content
                f"fleet/models/{model['id']}/model-{made['onnx']['sha256'][:16]}.onnx",
                f"fleet/models/{model['id']}/model-{made['torchscript']['sha256'][:16]}.pt",
            }
        )
        onnx = client.get(f"/v1/models/{model['id']}/content", params={"format": "onnx"})
        assert (
            onnx.status_code == 200
            and onnx.headers["etag"] == f'"{model["exports"]["onnx"]["sha256"]}"'
        )

        png, _ = digits10.held_out[0]
        answer = (
            client.post(
                f"/v1/models/{model['id']}/predict", files=[("files", ("d.png", png, "image/png"))]
            )
            .raise_for_status()
            .json()
        )
        assert answer["predictions"][0]["top_k"]

    # The routing: training ran on the gpu worker only, the exports on the cpu worker only.
    gpu_log, cpu_log = (tmp_path / "gpu.log").read_text(), (tmp_path / "cpu.log").read_text()
    assert "Task finetune.train[" in gpu_log and "Task finetune.export[" not in gpu_log
    assert "Task finetune.export[" in cpu_log and "Task finetune.train[" not in cpu_log
    assert "exported as onnx" in cpu_log
    # Exports leave no noise in the log: ONNX's progress, TorchScript's deprecation notices.
    assert "celery.redirected" not in cpu_log and "is deprecated" not in cpu_log
    # Nothing was stored on local disks: only each host's download cache holds copies.
    for root in hosts.values():
        assert not (root / "artifacts").exists()
    copy = RemoteStorage.entry(f"datasets/{dataset['id']}")
    assert (hosts["gpu"] / "work" / "cache" / copy).is_dir()
