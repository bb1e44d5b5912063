"""Dataset routes over HTTP: upload, list, get, delete, and refusals that keep nothing."""

import io
import zipfile
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.core.config import Settings
from app.core.hostcache import decoded_entry
from app.core.models import Dataset
from app.core.storage import host_cache
from tests.support.images import digit_members, write_tar


def _files_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def test_upload_answers_the_dataset_and_stores_it(
    client: TestClient, dataset: dict, settings: Settings
) -> None:
    assert dataset["classes"] == ["digit_0", "digit_1", "digit_2"]
    assert dataset["class_counts"] == {"digit_0": 12, "digit_1": 12, "digit_2": 12}
    assert dataset["splits"] == {"train": 36, "val": 0, "test": 0}
    assert dataset["num_images"] == 36 and len(dataset["sha256"]) == 64
    got = client.get(f"/v1/datasets/{dataset['id']}")
    assert got.status_code == 200 and got.json() == dataset
    stored = Path(settings.storage_url) / "datasets" / dataset["id"]
    assert (stored / "manifest.json").exists() and len(list((stored / "images").iterdir())) == 36
    assert not any((settings.work_dir / "uploads").iterdir())


def test_split_tarball_with_junk_is_accepted_with_warnings(
    client: TestClient, tmp_path: Path
) -> None:
    members, _ = digit_members(range(2), per_class=6, size=16)
    split = {}
    for i, (name, data) in enumerate(members.items()):
        split[f"{'val' if i % 3 == 0 else 'train'}/{name}"] = data
    split["__MACOSX/train/._x.png"] = b"junk"
    split["train/.DS_Store"] = b"junk"
    archive = write_tar(tmp_path / "d.tar.gz", split)
    with archive.open("rb") as fh:
        response = client.post(
            "/v1/datasets", files={"file": ("d.tar.gz", fh)}, data={"name": "two digits"}
        )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["name"] == "two digits"
    assert body["splits"]["val"] == 4 and body["splits"]["train"] == 8
    assert {w["code"] for w in body["warnings"]} == {"junk_skipped", "tiny_image"}  # 16 px digits
    assert response.headers["location"] == f"/v1/datasets/{body['id']}"
    with archive.open("rb") as fh:  # a name too long is refused, not cut short
        response = client.post(
            "/v1/datasets", files={"file": ("d.tar.gz", fh)}, data={"name": "x" * 201}
        )
    assert response.status_code == 422 and response.json()["errors"][0]["field"] == "body.name"


def test_bad_archive_is_refused_naming_every_bad_file_and_keeps_nothing(
    client: TestClient, settings: Settings, db_session: Session
) -> None:
    members, _ = digit_members(range(2), per_class=3, size=16)
    members["digit_0/notes.jpg"] = b"this is text"
    members["digit_1/cut.png"] = members[
        "digit_1/" + next(n.split("/")[1] for n in members if n.startswith("digit_1"))
    ][:40]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    before = db_session.scalar(select(func.count()).select_from(Dataset))
    response = client.post("/v1/datasets", files={"file": ("bad.zip", buf.getvalue())})
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["code"] == "image_invalid"
    named = {e["field"] for e in problem["errors"]}
    assert {"digit_0/notes.jpg", "digit_1/cut.png"} <= named
    assert db_session.scalar(select(func.count()).select_from(Dataset)) == before
    assert _files_under(Path(settings.storage_url)) == []
    assert _files_under(settings.work_dir / "uploads") == []


def test_not_an_archive_and_one_class_are_refused(client: TestClient) -> None:
    response = client.post("/v1/datasets", files={"file": ("x.zip", b"not an archive at all")})
    assert response.status_code == 422 and response.json()["code"] == "archive_invalid"
    members, _ = digit_members([7], per_class=3, size=16)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    response = client.post("/v1/datasets", files={"file": ("one.zip", buf.getvalue())})
    assert response.status_code == 422 and response.json()["code"] == "dataset_too_few_classes"


def test_an_upload_repeating_a_part_is_refused_and_keeps_nothing(
    client: TestClient, digits_zip: Path, settings: Settings, db_session: Session
) -> None:
    """Two archives in one request: FastAPI would keep the last and drop the first unseen."""
    before = db_session.scalar(select(func.count()).select_from(Dataset))
    archive = digits_zip.read_bytes()
    response = client.post(
        "/v1/datasets", files=[("file", ("a.zip", archive)), ("file", ("b.zip", archive))]
    )
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert [e["field"] for e in response.json()["errors"]] == ["body.file"]
    response = client.post(
        "/v1/datasets",
        files=[("file", ("a.zip", archive)), ("name", (None, "one")), ("name", (None, "two"))],
    )
    assert response.status_code == 422 and response.json()["errors"][0]["field"] == "body.name"
    assert db_session.scalar(select(func.count()).select_from(Dataset)) == before
    assert _files_under(Path(settings.storage_url)) == []
    assert _files_under(settings.work_dir / "uploads") == []


def test_list_pages_newest_first(client: TestClient, digits_zip: Path) -> None:
    ids = []
    for _ in range(3):
        with digits_zip.open("rb") as fh:
            ids.append(client.post("/v1/datasets", files={"file": ("d.zip", fh)}).json()["id"])
    first = client.get("/v1/datasets", params={"limit": 2}).json()
    assert [d["id"] for d in first["data"]] == ids[::-1][:2] and first["has_more"]
    second = client.get("/v1/datasets", params={"limit": 2, "after": first["next_cursor"]}).json()
    assert second["data"][0]["id"] == ids[0]
    # A cursor of another list (or none of ours) read as a position: the whole list, or none.
    for wrong in ("job_0192f3a1b2c3d4e5f6a7b8", "zzz"):
        response = client.get("/v1/datasets", params={"after": wrong})
        assert response.status_code == 422, response.text
        assert response.json()["errors"][0]["field"] == "query.after"


def test_delete_removes_row_and_files(
    client: TestClient, dataset: dict, settings: Settings
) -> None:
    # Images a worker on this host decoded, at two sizes, and another dataset's.
    cache = host_cache(settings)
    cache.root.mkdir(parents=True, exist_ok=True)
    for owner, size in ((dataset["id"], 32), (dataset["id"], 224), ("ds_other", 32)):
        cache.path(decoded_entry(owner, size)).write_bytes(b"pixels")
    assert client.delete(f"/v1/datasets/{dataset['id']}").status_code == 204
    assert client.get(f"/v1/datasets/{dataset['id']}").json()["code"] == "dataset_not_found"
    assert not (Path(settings.storage_url) / "datasets" / dataset["id"]).exists()
    assert [name for _, _, name in cache.entries()] == [decoded_entry("ds_other", 32)]
    assert client.delete(f"/v1/datasets/{dataset['id']}").status_code == 404


def test_delete_is_refused_while_a_job_needs_the_dataset(client: TestClient, dataset: dict) -> None:
    job = client.post("/v1/jobs", json={"dataset_id": dataset["id"], "weights": None})
    assert job.status_code == 202, job.text
    response = client.delete(f"/v1/datasets/{dataset['id']}")
    assert response.status_code == 409 and response.json()["code"] == "dataset_in_use"
    assert client.post(f"/v1/jobs/{job.json()['id']}/cancel").status_code == 202
    assert client.delete(f"/v1/datasets/{dataset['id']}").status_code == 204
