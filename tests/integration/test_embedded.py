"""`finetune up` as a newcomer runs it: SQLite, the filesystem broker, one process tree."""

import httpx
import pytest
from safetensors.torch import load

from tests.support.client import upload, wait_exports, wait_job
from tests.support.images import digit_members, write_zip
from tests.support.processes import free_port, running, service_env, wait_http

pytestmark = pytest.mark.integration


def test_up_trains_and_predicts_without_any_server(tmp_path) -> None:  # type: ignore[no-untyped-def]
    data_dir = tmp_path / "var"
    env = service_env(data_dir=str(data_dir), progress_interval_s="0.5")
    port = free_port()
    log = tmp_path / "up.log"
    with running(["up", "--port", str(port)], env, log) as proc:
        wait_http(f"http://127.0.0.1:{port}/readyz", proc, log)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            members, held = digit_members(range(3), per_class=60, holdout=5, size=32)
            dataset = (
                upload(client, write_zip(tmp_path / "d.zip", members)).raise_for_status().json()
            )
            spec = {
                "dataset_id": dataset["id"],
                "weights": None,
                "epochs": 2,
                "image_size": 32,
                "augment": False,
            }
            job = wait_job(
                client, client.post("/v1/jobs", json=spec).raise_for_status().json()["id"]
            )
            assert job["status"] == "succeeded", (job, log.read_text()[-3000:])
            weights = client.get(f"/v1/models/{job['model_id']}/content").content
            assert load(weights)["fc.weight"].shape == (3, 512)
            files = [("files", (f"{label}.png", png, "image/png")) for png, label in held]
            predictions = client.post(f"/v1/models/{job['model_id']}/predict", files=files).json()[
                "predictions"
            ]
            assert len(predictions) == 15
            # Nobody asked for an export: `up`'s cpu-queue worker made them on its own.
            exports = wait_exports(client, job["model_id"])["exports"]
            assert all(record["max_abs_diff"] <= 1e-3 for record in exports.values())
    assert (data_dir / "finetune.db").exists()
    assert (data_dir / "broker").is_dir()
    # SIGTERM to the group: `up` stopped both workers and exited by itself (not SIGKILLed).
    assert proc.returncode == 0, log.read_text()[-3000:]
    # Idle pool children ended by the pool's warm shutdown, not by a forwarded SIGTERM that
    # can leave billiard waiting forever on a lock the killed child held.
    assert "exited with 'signal" not in log.read_text()
