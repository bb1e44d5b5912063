"""The object store freezes while a job trains: the job loses an attempt, not its life.

A worker whose checkpoint upload fails because the store stopped answering lets its lease
lapse, as it does when the database is unreachable; the next attempt resumes from the last
checkpoint once the store answers again. Before, the upload waited forever (the job stayed
`running` with a live lease), and once bounded it failed the job with `training_error`.
"""

import json
import os
import signal
from pathlib import Path

import httpx
import pytest

from tests.integration.storage.conftest import moto_server
from tests.support.client import upload, wait_job
from tests.support.images import digit_members, write_zip
from tests.support.processes import free_port, running, service_env, wait_for, wait_http, wait_log

pytestmark = pytest.mark.integration
ONE_ATTEMPT = {"retries": {"mode": "standard", "max_attempts": 1}}


def test_a_store_frozen_mid_job_costs_an_attempt_not_the_job(
    tmp_path: Path, pg_url: str, redis_url: str
) -> None:
    pid = os.getpid()
    archive = write_zip(tmp_path / "digits.zip", digit_members(range(3), per_class=30)[0])
    with moto_server(tmp_path, bucket="outage") as (s3, moto):
        common = {
            "database_url": pg_url,
            "broker_url": redis_url,
            "storage_url": f"s3://{s3.bucket}/artifacts",
            # One botocore attempt per s3fs try: the service's default of three multiplies
            # every give-up by three (~45 s here) and is not what this test is about.
            "storage_options": json.dumps({**s3.options, "config_kwargs": ONE_ATTEMPT}),
            "storage_timeout_s": "1",
            "storage_request_timeout_s": "5",
            "gpu_queue": f"outage-gpu-{pid}",
            "cpu_queue": f"outage-cpu-{pid}",
            "progress_interval_s": "0.5",
            "lease_s": "3",
            "reaper_interval_s": "1",
        }
        gpu_env = service_env(data_dir=str(tmp_path / "gpu"), **common)
        gpu_env["FINETUNE_FAULTS"] = "step_delay=0.3"  # about 3 s an epoch
        port, gpu_log = free_port(), tmp_path / "gpu.log"
        with (
            running(["worker", "--queues", common["gpu_queue"]], gpu_env, gpu_log) as gpu,
            running(
                ["api", "--port", str(port)],
                service_env(data_dir=str(tmp_path / "api"), **common),
                tmp_path / "api.log",
            ) as api,
        ):
            wait_log(gpu_log, "ready.", gpu)
            wait_http(f"http://127.0.0.1:{port}/readyz", api, tmp_path / "api.log")
            client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
            dataset = upload(client, archive).raise_for_status().json()
            # MobileNetV3-Small: checkpoints of a few MB travel well within the timeouts
            spec = {"backbone": "mobilenet_v3_small", "weights": None, "epochs": 4}
            spec |= {"image_size": 32, "batch_size": 8}
            job_id = client.post(
                "/v1/jobs", json={"dataset_id": dataset["id"], "augment": False, **spec}
            ).json()["id"]

            def second_epoch_under_way() -> bool:
                job = client.get(f"/v1/jobs/{job_id}").json()
                return job["progress"]["epoch"] >= 1 and job["progress"]["step"] > 0

            wait_for(second_epoch_under_way, what="epoch 2 under way")
            os.kill(moto.pid, signal.SIGSTOP)  # its connections stay open; it answers nothing
            try:
                wait_for(
                    lambda: "storage unreachable" in gpu_log.read_text(errors="replace"),
                    timeout=120,
                    what="the worker giving up on the frozen store",
                )
                running_job = client.get(f"/v1/jobs/{job_id}").json()
            finally:
                os.kill(moto.pid, signal.SIGCONT)
            job = wait_job(client, job_id)
            events = client.get(f"/v1/jobs/{job_id}/events").json()["data"]
    assert running_job["status"] == "running", running_job  # not failed: its lease lapses
    assert job["status"] == "succeeded", job
    assert job["attempts"] == 2, job
    warnings = [e for e in events if e["type"] == "warning"]
    assert [w["data"]["reason"] for w in warnings] == ["storage_unavailable"], events
