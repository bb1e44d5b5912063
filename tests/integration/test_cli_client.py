"""The `finetune` client commands against a running service, as a user types them."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.integration.conftest import Service
from tests.support.images import digit_members

pytestmark = pytest.mark.integration


def finetune(service: Service, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "FINETUNE_URL": str(service.client.base_url),
        "FINETUNE_LOG_FORMAT": "text",
    }
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_upload_a_folder_train_watch_download_predict(service: Service, tmp_path: Path) -> None:
    members, held = digit_members(range(3), per_class=40, holdout=2, size=32)
    folder = tmp_path / "three-digits"
    for name, data in members.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    upload = finetune(service, "datasets", "upload", str(folder))
    assert upload.returncode == 0, upload.stderr
    dataset = json.loads(upload.stdout)
    assert dataset["name"] == "three-digits" and dataset["num_images"] == 120

    created = finetune(
        service,
        "jobs",
        "create",
        "--dataset",
        dataset["id"],
        "--weights",
        "none",
        "--epochs",
        "2",
        "--image-size",
        "32",
        "--spec",
        '{"augment": false}',
    )
    assert created.returncode == 0, created.stderr
    job = json.loads(created.stdout)
    watched = finetune(service, "jobs", "watch", job["id"])
    assert watched.returncode == 0, watched.stderr
    assert f"{job['id']}: succeeded" in watched.stderr

    listed = finetune(service, "jobs", "list")
    assert job["id"] in listed.stdout and "succeeded" in listed.stdout
    model_id = service.client.get(f"/v1/jobs/{job['id']}").json()["model_id"]
    out = tmp_path / "model.safetensors"
    downloaded = finetune(service, "models", "download", model_id, "-o", str(out))
    assert downloaded.returncode == 0, downloaded.stderr
    assert load_file(out)["fc.weight"].shape == (3, 512)

    images = []
    for i, (png, _) in enumerate(held):
        images.append(tmp_path / f"held{i}.png")
        images[-1].write_bytes(png)
    predicted = finetune(service, "predict", model_id, *map(str, images), "--top-k", "2")
    assert predicted.returncode == 0, predicted.stderr
    lines = predicted.stdout.strip().splitlines()
    assert len(lines) == len(images) and "HTTP Request" not in predicted.stdout + predicted.stderr
    assert all(len(line.split("\t")) == 1 + 2 * 2 for line in lines)  # filename + top 2


def test_errors_print_the_problem_and_exit_1(service: Service) -> None:
    result = finetune(service, "jobs", "create", "--dataset", "ds_nope")
    assert result.returncode == 1 and "dataset_not_found" in result.stderr
