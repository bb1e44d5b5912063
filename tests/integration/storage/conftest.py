"""A real S3-compatible server for storage tests: moto in server mode, in its own process."""

import json
import sys
from collections.abc import Iterator
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


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3]:
    """moto's S3 server on a free port, with one empty bucket."""
    import subprocess

    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    server = Path(sys.executable).parent / "moto_server"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(server), "-H", "127.0.0.1", "-p", str(port)], stdout=out, stderr=subprocess.STDOUT
        )
    try:
        endpoint = f"http://127.0.0.1:{port}"
        wait_http(f"{endpoint}/moto-api/", proc, log)
        store = S3(endpoint, "finetune-test")
        store.client().create_bucket(Bucket=store.bucket)
        yield store
    finally:
        proc.terminate()
        proc.wait(timeout=20)
