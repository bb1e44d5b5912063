"""An S3 store that accepts connections and answers nothing fails calls, in bounded time.

Before app.core.objectstore an upload to such a store waited forever (botocore's
`Expect: 100-continue` left aiohttp with no timer running) and an `exists` ~6.5 min.
"""

import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from app.core.config import Settings
from app.core.db import session_scope
from app.core.objectstore import s3_options
from app.core.storage import Storage, get_storage
from app.main import create_app
from tests.integration.conftest import Digits
from tests.integration.storage.conftest import CREDENTIALS, S3
from tests.support.client import upload
from tests.support.factories import make_dataset_row

pytestmark = pytest.mark.integration


@pytest.fixture
def silent_endpoint() -> Iterator[str]:
    """An HTTP endpoint whose kernel accepts connections that nobody ever reads or answers."""
    with socket.create_server(("127.0.0.1", 0), backlog=128) as silent:
        yield f"http://127.0.0.1:{silent.getsockname()[1]}"


def silent_settings(tmp_path: Path, endpoint: str, **extra: Any) -> Settings:
    return Settings(
        data_dir=tmp_path,
        **extra,
        storage_url="s3://silent-bucket/prefix",
        storage_options={
            "endpoint_url": endpoint,
            **CREDENTIALS,
            "client_kwargs": {"region_name": "us-east-1"},
        },
        storage_timeout_s=0.5,
        storage_request_timeout_s=1.5,
    )


def failure_within(seconds: float, call: Callable[[], object]) -> str:
    """The name of the exception `call` raised, failing the test if it takes longer.

    Run aside so that a call which never returns fails the test instead of hanging it."""
    failures: list[str] = []

    def attempt() -> None:
        try:
            call()
        except Exception as exc:
            failures.append(type(exc).__name__)
        else:
            failures.append("nothing raised")

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(seconds)
    assert failures, f"still waiting on the silent store after {seconds} s"
    return failures[0]


def test_readyz_reports_a_store_that_answers_nothing(tmp_path: Path, silent_endpoint: str) -> None:
    settings = silent_settings(tmp_path, silent_endpoint)
    answers: list[httpx.Response] = []
    with TestClient(create_app(settings)) as client:
        probe = threading.Thread(target=lambda: answers.append(client.get("/readyz")), daemon=True)
        started = time.monotonic()
        probe.start()
        probe.join(60)
        assert answers, "/readyz still waiting on the silent store after 60 s"
    assert time.monotonic() - started < 10  # the probe's bound is storage_timeout_s a call
    assert answers[0].status_code == 503
    assert answers[0].json()["checks"]["storage"].startswith("failing")


@pytest.mark.parametrize("size", [5_000, 12 << 20], ids=["small", "beyond-socket-buffers"])
def test_an_upload_to_a_silent_store_fails_and_keeps_its_file(
    tmp_path: Path, silent_endpoint: str, size: int
) -> None:
    """The small body waits for an answer, the large one for a reader: both are bounded."""
    storage = get_storage(silent_settings(tmp_path, silent_endpoint))
    src = tmp_path / "weights.bin"
    src.write_bytes(b"\1" * size)
    assert "Timeout" in failure_within(60, lambda: storage.put_file(src, "models/m1/weights.bin"))
    assert src.read_bytes() == b"\1" * size  # nothing lost: the caller can try again


def test_an_upload_the_store_does_not_take_is_a_503_and_records_nothing(
    tmp_path: Path, silent_endpoint: str, pg_url: str, digits10: Digits
) -> None:
    settings = silent_settings(tmp_path, silent_endpoint, database_url=pg_url)
    with TestClient(create_app(settings)) as client:
        before = client.get("/v1/datasets").json()["data"]
        response = upload(client, digits10.archive)
        assert response.status_code == 503, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["code"] == "storage_unavailable"
        assert client.get("/v1/datasets").json()["data"] == before
    assert not list(settings.uploads_dir.iterdir())  # the staged archive is gone too


def test_a_dataset_deleted_while_the_store_is_silent_is_gone(
    tmp_path: Path, silent_endpoint: str, pg_url: str
) -> None:
    """Its row goes at once; its files wait for the sweep (app.datasets.service)."""
    with session_scope(pg_url) as session:
        dataset_id = make_dataset_row(session).id
        session.commit()
    settings = silent_settings(tmp_path, silent_endpoint, database_url=pg_url)
    with TestClient(create_app(settings)) as client:
        assert client.delete(f"/v1/datasets/{dataset_id}").status_code == 204
        assert client.get(f"/v1/datasets/{dataset_id}").status_code == 404


def test_a_read_from_a_silent_store_fails(tmp_path: Path, silent_endpoint: str) -> None:
    storage = get_storage(silent_settings(tmp_path, silent_endpoint))
    assert "Timeout" in failure_within(60, lambda: storage.local("datasets/d1/manifest.json"))
    cached = list(storage.cache.root.iterdir()) if storage.cache.root.exists() else []
    assert cached == []  # no half-downloaded copy left behind


def test_bounded_uploads_reach_a_real_store_whole(tmp_path: Path, s3: S3) -> None:
    """Without `Expect: 100-continue`, single and multipart uploads still arrive intact."""

    def host(name: str) -> Storage:
        return get_storage(
            Settings(
                data_dir=tmp_path / name,
                storage_url=f"s3://{s3.bucket}/bounded",
                storage_options=s3.options,
            )
        )

    writer, reader = host("writer"), host("reader")
    assert writer.writable()
    # 60 MiB is more than one 50 MiB part: a multipart upload
    payloads = {"small.bin": b"x" * 1000, "parts.bin": bytes(range(256)) * (60 << 12)}
    for name, payload in payloads.items():
        src = tmp_path / name
        src.write_bytes(payload)
        writer.put_file(src, f"m/{name}")
    for name, payload in payloads.items():
        assert reader.local(f"m/{name}").read_bytes() == payload


def test_the_operators_own_s3_settings_win(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, storage_timeout_s=7)
    config = s3_options({"config_kwargs": {"read_timeout": 120}, "anon": True}, settings)
    assert config["anon"] is True
    kwargs = config["config_kwargs"]
    assert (kwargs["read_timeout"], kwargs["connect_timeout"]) == (120, 7)
    assert kwargs["http_session_cls"].request_deadline_s == settings.storage_request_timeout_s


def test_each_process_reuses_one_filesystem_per_setting(tmp_path: Path, s3: S3) -> None:
    """fsspec caches filesystems by their printed arguments: the same settings share one,
    another request deadline gets its own."""

    def storage(deadline_s: float) -> Storage:
        return get_storage(
            Settings(
                data_dir=tmp_path,
                storage_url=f"s3://{s3.bucket}/reuse",
                storage_options=s3.options,
                storage_request_timeout_s=deadline_s,
            )
        )

    first, again, other = storage(600), storage(600), storage(30)
    assert first.fs is again.fs  # type: ignore[attr-defined]
    assert other.fs is not first.fs  # type: ignore[attr-defined]
