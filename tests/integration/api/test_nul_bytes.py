"""Text Postgres cannot store (a NUL byte) is a 404 or a 422 naming the field, never a 500.

Postgres refuses NUL in text and JSON, so such a value must be stopped before any query or
insert; these run against the real Postgres, where the bug showed.
"""

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.core.config import Settings
from app.core.models import Dataset


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("/v1/jobs/job_%00x", "job_not_found"),
        ("/v1/jobs/job_%00x/events", "job_not_found"),
        ("/v1/jobs/job_%00x/checkpoints", "job_not_found"),
        ("/v1/jobs/job_x/checkpoints/ckpt_%00x/content", "checkpoint_not_found"),
        ("/v1/jobs/job_%00x/plots/curves.png", "job_not_found"),
        ("/v1/datasets/ds_%00x", "dataset_not_found"),
        ("/v1/models/mdl_%00x", "model_not_found"),
        ("/v1/models/mdl_%00x/content", "model_not_found"),
    ],
)
def test_a_path_id_with_a_nul_byte_is_a_missing_resource(
    client: TestClient, path: str, code: str
) -> None:
    response = client.get(path)
    assert response.status_code == 404, response.text
    assert response.json()["code"] == code


@pytest.mark.parametrize(
    ("spec", "field", "code"),
    [
        ({"dataset_id": "ds_\x00x"}, "body.dataset_id", "dataset_not_found"),
        ({"weights": {"model_id": "mdl_\x00x"}}, "body.weights.model_id", "model_not_found"),
    ],
)
def test_a_body_id_with_a_nul_byte_is_refused_by_name(
    client: TestClient, dataset: dict, spec: dict, field: str, code: str
) -> None:
    response = client.post("/v1/jobs", json={"dataset_id": dataset["id"], **spec})
    assert response.status_code == 422, response.text
    assert response.json()["code"] == code
    assert [e["field"] for e in response.json()["errors"]] == [field]


def test_a_cursor_that_is_no_id_is_refused_by_name(client: TestClient) -> None:
    response = client.get("/v1/datasets", params={"after": "G\x00x"})
    assert response.status_code == 422
    assert "after" in response.text


def test_a_dataset_name_with_a_nul_byte_is_refused_and_nothing_is_kept(
    client: TestClient, digits_zip: Path, settings: Settings, db_session: Session
) -> None:
    with digits_zip.open("rb") as fh:
        response = client.post(
            "/v1/datasets", files={"file": ("d.zip", fh)}, data={"name": "two\x00digits"}
        )
    assert response.status_code == 422, response.text
    assert "name" in response.text
    assert db_session.scalar(select(func.count()).select_from(Dataset)) == 0
    assert not (settings.work_dir / "uploads").exists() or not any(
        (settings.work_dir / "uploads").iterdir()
    )


def test_control_characters_in_the_file_name_are_left_out_of_the_default_name(
    client: TestClient, digits_zip: Path
) -> None:
    """A raw multipart body: httpx would percent-encode the NUL in a file name."""
    boundary = "nulboundary"
    head = (
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="file"; filename="two\x00\x07digits.zip"\r\n'
        "Content-Type: application/zip\r\n\r\n"
    ).encode()
    body = head + digits_zip.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    response = client.post(
        "/v1/datasets",
        content=body,
        headers={"content-type": f"multipart/form-data; boundary={boundary}"},
    )
    assert response.status_code == 201, response.text
    assert response.json()["name"] == "twodigits"
