"""A real S3-compatible server for storage tests: moto in server mode, in its own process."""

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.processes import free_port, wait_http

CREDENTIALS = {"key": "testing", "secret": "testing"}


@dataclass
class S3:
    endpoint: str
    bucket: str

    @property
    def options(self) -> dict[str, Any]:
        """fsspec/s3fs options for FINETUNE_STORAGE_OPTIONS."""
        return {
            "endpoint_url": self.endpoint,
            **CREDENTIALS,
            "client_kwargs": {"region_name": "us-east-1"},
        }

    def options_json(self) -> str:
        return json.dumps(self.options)

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=CREDENTIALS["key"],
            aws_secret_access_key=CREDENTIALS["secret"],
            region_name="us-east-1",
        )

    def keys(self, prefix: str = "") -> list[str]:
        pages = (
            self.client()
            .get_paginator("list_objects_v2")
            .paginate(Bucket=self.bucket, Prefix=prefix)
        )
        return [obj["Key"] for page in pages for obj in page.get("Contents", [])]


@contextmanager
def moto_server(
    logs: Path, bucket: str = "finetune-test"
) -> Iterator[tuple[S3, subprocess.Popen[bytes]]]:
    """moto's S3 server on a free port, with one empty bucket, and its process."""
    port = free_port()
    log = logs / "moto.log"
    server = Path(sys.executable).parent / "moto_server"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(server), "-H", "127.0.0.1", "-p", str(port)], stdout=out, stderr=subprocess.STDOUT
        )
    try:
        endpoint = f"http://127.0.0.1:{port}"
        wait_http(f"{endpoint}/moto-api/", proc, log)
        store = S3(endpoint, bucket)
        store.client().create_bucket(Bucket=store.bucket)
        yield store, proc
    finally:
        proc.send_signal(signal.SIGCONT)  # a test may have frozen it
        proc.terminate()
        proc.wait(timeout=20)


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3]:
    """The session's S3 server, shared by the storage tests."""
    with moto_server(tmp_path_factory.mktemp("moto")) as (store, _):
        yield store
