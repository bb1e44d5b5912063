"""Model routes over HTTP: read, download with ETag, predict, cache, backbones."""

import json
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import load
from sqlalchemy.orm import Session
from torchvision import models

from app.core import exports
from app.core.config import Settings
from app.core.db import get_sessionmaker
from app.core.migrate import upgrade
from app.core.models import Model
from app.core.storage import get_storage
from app.main import create_app
from app.models import inference
from app.models.inference import LoadedModel
from tests.support.factories import make_dataset_row, make_model
from tests.support.images import digit_members


@pytest.fixture
def model(client: TestClient, dataset: dict, db_session, settings: Settings) -> dict:  # type: ignore[no-untyped-def]
    row = make_model(db_session, get_storage(settings), dataset)
    return client.get(f"/v1/models/{row.id}").json()


def test_model_reads_and_lists(client: TestClient, model: dict, dataset: dict) -> None:
    assert model["backbone"] == "resnet18" and model["classes"] == dataset["classes"]
    assert model["image_size"] == 16
    assert model["id"] in [m["id"] for m in client.get("/v1/models").json()["data"]]
    assert client.get("/v1/models/mdl_nope").status_code == 404


def test_download_loads_into_plain_torchvision_and_honours_etag(
    client: TestClient, model: dict
) -> None:
    response = client.get(f"/v1/models/{model['id']}/content")
    assert response.status_code == 200
    etag = response.headers["etag"]
    net = models.get_model("resnet18", weights=None, num_classes=3)
    net.load_state_dict(load(response.content), strict=True)
    for held in (etag, "*"):
        headers = {"If-None-Match": held}
        assert client.get(f"/v1/models/{model['id']}/content", headers=headers).status_code == 304
    header = json.loads(response.content[8 : 8 + int.from_bytes(response.content[:8], "little")])
    meta = header["__metadata__"]
    assert json.loads(meta["classes"]) == model["classes"] and meta["backbone"] == "resnet18"
    assert meta["job_id"] == model["job_id"] and meta["epoch"] == "1" and meta["image_size"] == "16"


def test_a_download_serves_ranges_and_refuses_bad_ones_as_problems(
    client: TestClient, model: dict
) -> None:
    url = f"/v1/models/{model['id']}/content"
    whole = client.get(url)
    size, etag = len(whole.content), whole.headers["etag"]
    part = client.get(url, headers={"Range": "bytes=8-15"})
    assert part.status_code == 206 and part.content == whole.content[8:16]
    assert part.headers["content-range"] == f"bytes 8-15/{size}"
    beyond = client.get(url, headers={"Range": f"bytes={size}-"})
    assert beyond.status_code == 416 and beyond.headers["content-range"] == f"bytes */{size}"
    malformed = client.get(url, headers={"Range": "items=0-1"})
    assert malformed.status_code == 400
    for refused, code in ((beyond, "range_not_satisfiable"), (malformed, "range_invalid")):
        assert refused.headers["content-type"] == "application/problem+json"  # was text/plain
        assert refused.json()["code"] == code
    # If-Range naming another version: the Range is moot and the whole file comes back.
    stale = client.get(url, headers={"Range": f"bytes={size}-", "If-Range": '"other"'})
    assert stale.status_code == 200 and stale.content == whole.content
    fresh = client.get(url, headers={"Range": "bytes=0-7", "If-Range": etag})
    assert fresh.status_code == 206 and fresh.content == whole.content[:8]
    # An If-Range date: the Range applies when it is the Last-Modified, else it is moot.
    dated = {"If-Range": whole.headers["last-modified"]}
    refused = client.get(url, headers={"Range": f"bytes={size}-", **dated})
    assert refused.status_code == 416 and refused.json()["code"] == "range_not_satisfiable"
    malformed = client.get(url, headers={"Range": "items=0-1", **dated})
    assert malformed.json()["code"] == "range_invalid"  # was text/plain
    old = client.get(
        url, headers={"Range": "items=0-1", "If-Range": "Thu, 01 Jan 1970 00:00:00 GMT"}
    )
    assert old.status_code == 200 and old.content == whole.content
    head = client.head(url, headers={"Range": f"bytes={size}-"})
    assert head.status_code == 416  # as its GET


def test_head_answers_every_get_route_with_its_headers(
    client: TestClient, model: dict, settings: Settings
) -> None:
    """RFC 9110 requires HEAD wherever GET works: a download's size and ETag, unfetched."""
    download = f"/v1/models/{model['id']}/content"
    for path in (download, f"/v1/models/{model['id']}", "/livez"):
        got, head = client.get(path), client.head(path)
        assert head.status_code == got.status_code == 200, path
        for name in ("content-type", "content-length", "etag", "content-disposition"):
            assert head.headers.get(name) == got.headers.get(name), (path, name)
    expected = client.head(download).headers
    files = list((settings.data_dir / "artifacts" / "jobs").rglob("*.safetensors"))
    for stored in files:
        stored.unlink()  # the HEAD answers from the model's row: the file is not even read
    head = client.head(download)
    assert files and head.status_code == 200
    for name in ("content-type", "content-length", "etag", "content-disposition"):
        assert head.headers[name] == expected[name], name
    assert client.head("/v1/models/mdl_missing").status_code == 404
    assert client.head("/v1/datasets").status_code == 200  # beside POST on the same path
    paths = client.get("/openapi.json").json()["paths"]
    assert not [p for p, ops in paths.items() if "head" in ops]  # documented once, as GET


def test_predict_top_k_caps_at_class_count_and_reuses_the_loaded_model(
    client: TestClient, model: dict
) -> None:
    _, held = digit_members(range(2), per_class=0, holdout=1, size=24)
    files = [("files", (f"{label}.png", png, "image/png")) for png, label in held]
    response = client.post(f"/v1/models/{model['id']}/predict", files=files, params={"top_k": 10})
    assert response.status_code == 200, response.text
    body = response.json()
    assert [p["filename"] for p in body["predictions"]] == ["0.png", "1.png"]
    for p in body["predictions"]:
        assert len(p["top_k"]) == 3 and p["label"] == p["top_k"][0]["label"]
        assert sum(s["score"] for s in p["top_k"]) == pytest.approx(1.0, abs=1e-4)
    client.post(f"/v1/models/{model['id']}/predict", files=files[:1])
    assert client.app.state.model_cache.loads == 1  # type: ignore[attr-defined]


def test_predict_hands_its_connection_back_before_the_forward(
    client: TestClient, model: dict, db_session: Session, settings: Settings
) -> None:
    """A request waiting for its micro-batch must not hold a pooled connection meanwhile."""
    _, held = digit_members(range(1), per_class=0, holdout=1, size=24)
    files = [("files", ("0.png", held[0][0], "image/png"))]
    url = f"/v1/models/{model['id']}/predict"
    assert client.post(url, files=files).status_code == 200
    row = db_session.get(Model, model["id"])
    cache = client.app.state.model_cache  # type: ignore[attr-defined]
    loaded = cache.get(row.id, lambda: get_storage(settings).local(row.storage_key), row.sha256)
    forward, seen = loaded.probabilities, []

    def watched(x):  # type: ignore[no-untyped-def]
        seen.append(db_session.in_transaction())
        return forward(x)

    loaded.probabilities = watched
    if loaded.batcher is not None:
        loaded.batcher.forward = watched
    assert client.post(url, files=files).status_code == 200
    assert seen == [False]


def test_requests_for_a_model_still_loading_wait_without_holding_the_thread_pool(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first request for a model loads it (a download can take a minute); the others
    wait for that load on the event loop. (They used to wait in the thread pool: 40 of
    them stalled every route until the load ended.)"""
    gate, loading = threading.Event(), threading.Event()
    load = inference._load

    def slow_load(*args, **kwargs):  # type: ignore[no-untyped-def]
        loading.set()
        assert gate.wait(30)
        return load(*args, **kwargs)

    monkeypatch.setattr(inference, "_load", slow_load)
    tuned, row, files = _served_model(tmp_path)
    url = f"/v1/models/{row.id}/predict"
    with TestClient(create_app(tuned)) as client:
        answered = _while_held(client, row, gate, loading, lambda: client.post(url, files=files))
    assert {r.status_code for r in answered} == {200}
    assert client.app.state.model_cache.loads == 1  # type: ignore[attr-defined]


def _while_held(
    client: TestClient,
    row: Model,
    gate: threading.Event,
    held: threading.Event,
    send: Callable[[], httpx.Response],
) -> list[httpx.Response]:
    """50 requests `send`, more than the pool's 40 threads, all held up by work that waits
    for `gate` once `held` is set: another route must be answered meanwhile. Their answers."""
    sent = 50
    with ThreadPoolExecutor(sent + 1) as pool:
        try:
            pending = [pool.submit(send) for _ in range(sent)]
            assert held.wait(30)
            threading.Event().wait(1)  # every request has reached its wait
            other = pool.submit(client.get, f"/v1/models/{row.id}")
            assert other.result(10).status_code == 200 and not gate.is_set()
        finally:
            gate.set()
        return [f.result(60) for f in pending]


def test_requests_waiting_for_an_export_hold_no_thread_and_share_its_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An export is made on its first request (seconds to minutes); the requests that wait
    for it wait on the event loop and share that one build. (They used to wait in the
    thread pool, one build after another: 40 of them stalled every route.)"""
    gate, building, builds = threading.Event(), threading.Event(), []
    build = exports._build

    def slow_build(*args, **kwargs):  # type: ignore[no-untyped-def]
        builds.append(args[2])
        building.set()
        assert gate.wait(30)
        return build(*args, **kwargs)

    monkeypatch.setattr(exports, "_build", slow_build)
    tuned, row, _ = _served_model(tmp_path)
    url = f"/v1/models/{row.id}/content"
    with TestClient(create_app(tuned)) as client:
        answered = _while_held(
            client, row, gate, building, lambda: client.get(url, params={"format": "torchscript"})
        )
        assert {r.status_code for r in answered} == {200}
        assert len({r.content for r in answered}) == 1 and builds == ["torchscript"]
        etag = client.get(f"/v1/models/{row.id}").json()["exports"]["torchscript"]["sha256"]
        assert answered[0].headers["etag"] == f'"{etag}"'


def test_predict_names_the_unreadable_file(client: TestClient, model: dict) -> None:
    _, held = digit_members([0], per_class=0, holdout=1)
    files = [
        ("files", ("ok.png", held[0][0], "image/png")),
        ("files", ("notes.jpg", b"text", "image/jpeg")),
    ]
    response = client.post(f"/v1/models/{model['id']}/predict", files=files)
    assert response.status_code == 422
    problem = response.json()
    assert problem["code"] == "image_invalid" and problem["errors"][0]["file"] == "notes.jpg"


def test_backbones_lists_torchvision_models_and_file_presence(client: TestClient) -> None:
    data = client.get("/v1/backbones").json()["data"]
    names = {b["name"] for b in data}
    assert {"resnet18", "resnet50", "efficientnet_b0", "mobilenet_v3_small", "vit_b_16"} <= names
    resnet18 = next(b for b in data if b["name"] == "resnet18")
    assert any(w["default"] for w in resnet18["weights"])
    assert all(isinstance(w["present"], bool) for w in resnet18["weights"])
    assert torch.hub.get_dir() in resnet18["weights"][0]["file"]


def _served_model(tmp_path: Path, **settings: Any) -> tuple[Settings, Model, list]:
    """Settings of an app on its own SQLite database, with a committed model in it, and a
    predict request's files: the rows are committed and each request has its own session,
    so concurrent requests run at once (the `client` fixture shares one rolled-back one)."""
    tuned = Settings(
        data_dir=tmp_path / "var", database_url=f"sqlite:///{tmp_path}/db.sqlite", **settings
    )
    upgrade(tuned.database_url)
    with get_sessionmaker(tuned.database_url)() as session:
        dataset = make_dataset_row(session)
        row = make_model(session, get_storage(tuned), {"id": dataset.id, "classes": ["a", "b"]})
    _, held = digit_members(range(1), per_class=0, holdout=1, size=24)
    return tuned, row, [("files", ("0.png", held[0][0], "image/png"))]


@pytest.mark.parametrize("batching", [True, False])
def test_waiting_predictions_fill_their_queue_not_the_thread_pool(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, batching: bool
) -> None:
    """Requests wait for their batch on the event loop: the queue's bound answers 503 when
    reached, and other routes keep being served meanwhile. (They used to wait in the thread
    pool: at most 40 ever reached the queue, the 503 never came, and every route stalled;
    with batching off, there was no bound at all.)"""
    gate = threading.Event()

    def gated(self: LoadedModel, x: np.ndarray) -> np.ndarray:
        assert gate.wait(30)
        return np.full((len(x), len(self.classes)), 1 / len(self.classes), np.float32)

    monkeypatch.setattr(LoadedModel, "probabilities", gated)
    decoded: list[str] = []
    decode = inference.decode

    def counted(data: bytes, filename: str, *args: Any) -> np.ndarray:
        decoded.append(filename)
        return decode(data, filename, *args)

    monkeypatch.setattr(inference, "decode", counted)
    queued = 45  # above the pool's 40 threads
    tuned, row, files = _served_model(
        tmp_path,
        predict_batching=batching,
        predict_max_batch=1,
        predict_max_wait_ms=0,
        predict_queue_size=queued,
    )
    url = f"/v1/models/{row.id}/predict"
    sent = queued + 15
    with (
        TestClient(create_app(tuned)) as client,
        ThreadPoolExecutor(sent) as pool,
    ):
        pending = [pool.submit(client.post, url, files=files) for _ in range(sent)]
        refused = []
        for future in as_completed(pending, timeout=60):
            refused.append(future.result())
            if len(refused) == sent - queued - 1:  # one in the forward pass, `queued` waiting
                break
        assert {r.status_code for r in refused} == {503}
        assert refused[0].json()["code"] == "overloaded" and refused[0].headers["retry-after"]
        assert client.get(f"/v1/models/{row.id}").status_code == 200
        gate.set()
        answers = [f.result(60) for f in pending]
    answered = [r for r in answers if r.status_code == 200]
    # One in the forward pass and `queued` waiting, or one fewer: a request being decoded
    # when the first forward began held its place in the queue.
    assert len(answered) in (queued, queued + 1)
    assert {r.status_code for r in answers if r not in answered} == {503}
    # A refused request never read its uploads: the bound holds what is being decoded too.
    assert len(decoded) == len(answered)  # one file each
