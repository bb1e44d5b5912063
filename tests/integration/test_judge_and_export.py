"""Judge a trained model (evaluation report, plots, TensorBoard) and take it away (exports)."""

import io
import json
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from tests.integration.conftest import Service
from tests.support.client import upload, wait_job
from tests.support.images import digit_members, write_tar

pytestmark = pytest.mark.integration
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def trained(service: Service, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A job on a dataset with train/ and test/ splits, trained to success."""
    members, _ = digit_members(range(4), per_class=45, size=32)
    split = {}
    for i, (name, data) in enumerate(members.items()):
        split[f"{'test' if i % 5 == 0 else 'train'}/{name}"] = data
    archive = write_tar(tmp_path_factory.mktemp("judge") / "four.tar.gz", split)
    dataset = upload(service.client, archive).raise_for_status().json()
    spec = {
        "dataset_id": dataset["id"],
        "weights": None,
        "epochs": 3,
        "image_size": 32,
        "augment": False,
    }
    job = wait_job(service.client, service.client.post("/v1/jobs", json=spec).json()["id"])
    assert job["status"] == "succeeded", job
    return job


def test_evaluation_report_on_the_test_split(service: Service, trained: dict) -> None:
    report = trained["metrics"]["evaluation"]
    assert report["split"] == "test" and len(report["confusion_matrix"]) == 4
    assert sum(map(sum, report["confusion_matrix"])) == sum(
        c["support"] for c in report["per_class"].values()
    )
    assert set(report["per_class"]) == {"digit_0", "digit_1", "digit_2", "digit_3"}
    assert 0 <= report["macro_f1"] <= 1 and report["top5_accuracy"] == 1.0
    model = service.client.get(f"/v1/models/{trained['model_id']}").json()
    assert model["metrics"]["evaluation"]["confusion_matrix"] == report["confusion_matrix"]


@pytest.mark.parametrize("name", ["curves", "confusion"])
def test_plots_are_png_images(service: Service, trained: dict, name: str) -> None:
    response = service.client.get(f"/v1/jobs/{trained['id']}/plots/{name}.png")
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert response.content.startswith(PNG_MAGIC)
    assert Image.open(io.BytesIO(response.content)).size[0] > 300
    assert service.client.get(f"/v1/jobs/{trained['id']}/plots/other.png").status_code == 422


def _tfevents(path) -> list:  # type: ignore[no-untyped-def]
    """Events of a TFRecord file: length, crc, Event protobuf, crc per record."""
    from tensorboardX.proto.event_pb2 import Event

    data, events, at = path.read_bytes(), [], 0
    while at < len(data):
        length = int.from_bytes(data[at : at + 8], "little")
        events.append(Event.FromString(data[at + 12 : at + 12 + length]))
        at += 12 + length + 4
    return events


def test_tensorboard_event_files_are_among_the_artifacts(service: Service, trained: dict) -> None:
    folder = service.data_dir / "artifacts" / "jobs" / trained["id"] / "tensorboard"
    files = list(folder.glob("events.out.tfevents.*"))
    assert files, f"no event file in {folder}"
    scalars: dict[str, list[int]] = {}
    for event in (e for f in files for e in _tfevents(f)):
        for value in event.summary.value:
            scalars.setdefault(value.tag, []).append(event.step)
    assert scalars["val/accuracy"] == [1, 2, 3] and "train/loss" in scalars


def _held_out() -> torch.Tensor:
    _, held = digit_members(range(4), per_class=0, holdout=2, size=32)
    arrays = [
        np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float32) / 255
        for png, _ in held
    ]
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
    mean, std = (
        torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1),
        torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1),
    )
    return (x - mean) / std


def test_exports_are_checked_and_agree_with_the_weights(service: Service, trained: dict) -> None:
    import onnxruntime
    from safetensors.torch import load
    from torchvision import models

    model_id = trained["model_id"]
    client = service.client
    weights = load(client.get(f"/v1/models/{model_id}/content").content)
    net = models.get_model("resnet18", weights=None, num_classes=4)
    net.load_state_dict(weights)
    x = _held_out()
    with torch.inference_mode():
        expected = net.eval()(x).numpy()

    onnx = client.get(f"/v1/models/{model_id}/content", params={"format": "onnx"}, timeout=300)
    assert onnx.status_code == 200, onnx.text[:500]
    session = onnxruntime.InferenceSession(onnx.content, providers=["CPUExecutionProvider"])
    assert np.abs(session.run(None, {"image": x.numpy()})[0] - expected).max() < 1e-3
    labels = json.loads(session.get_modelmeta().custom_metadata_map["labels.json"])
    assert labels["classes"] == ["digit_0", "digit_1", "digit_2", "digit_3"]

    script = client.get(
        f"/v1/models/{model_id}/content", params={"format": "torchscript"}, timeout=300
    )
    assert script.status_code == 200, script.text[:500]
    extra = {"labels.json": ""}
    loaded = torch.jit.load(io.BytesIO(script.content), _extra_files=extra)
    assert np.abs(loaded(x).detach().numpy() - expected).max() < 1e-3
    assert json.loads(extra["labels.json"])["image_size"] == 32

    recorded = client.get(f"/v1/models/{model_id}").json()["exports"]
    assert set(recorded) == {"onnx", "torchscript"}
    assert all(e["max_abs_diff"] < e["tolerance"] for e in recorded.values())
    assert not any("storage_key" in e for e in recorded.values())  # storage stays private
    again = client.get(f"/v1/models/{model_id}/content", params={"format": "onnx"})
    assert again.headers["etag"] == f'"{recorded["onnx"]["sha256"]}"'
    assert (
        client.get(f"/v1/models/{model_id}/content", params={"format": "pickle"}).status_code == 422
    )
    assert not zipfile.is_zipfile(io.BytesIO(onnx.content))
