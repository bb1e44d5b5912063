"""Integration fixtures: a real API process and a real Celery worker on Postgres + Redis."""

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import torch
from sqlalchemy.orm import Session
from torchvision import models

from app.core.db import get_engine
from tests.support.images import digit_members, write_zip
from tests.support.processes import api_and_trainer, service_env


@pytest.fixture
def db_session(pg_url: str) -> Iterator[Session]:
    """Everything a test writes, commits included (as savepoints), is rolled back."""
    connection = get_engine(pg_url).connect()
    outer = connection.begin()
    session = Session(
        bind=connection, join_transaction_mode="create_savepoint", expire_on_commit=False
    )
    try:
        yield session
    finally:
        session.close()
        outer.rollback()
        connection.close()


@dataclass
class Service:
    client: httpx.Client
    data_dir: Path
    torch_home: Path
    worker_log: Path


def fake_pretrained(torch_home: Path) -> None:
    """ResNet18's DEFAULT weights file under TORCH_HOME: the real name and format, our numbers."""
    path = torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.save(models.get_model("resnet18", weights=None).state_dict(), path)


@pytest.fixture(scope="session")
def service(
    tmp_path_factory: pytest.TempPathFactory, pg_url: str, redis_url: str
) -> Iterator[Service]:
    root = tmp_path_factory.mktemp("service")
    torch_home = root / "torch"
    fake_pretrained(torch_home)
    env = service_env(
        data_dir=str(root / "var"),
        database_url=pg_url,
        broker_url=redis_url,
        torch_home=str(torch_home),
        gpu_queue=f"training-test-{os.getpid()}",
        cpu_queue=f"cpu-test-{os.getpid()}",
        progress_interval_s="0.5",
        cancel_poll_interval_s="0.25",
    )
    with api_and_trainer(env, root) as (client, worker_log):
        yield Service(client, root / "var", torch_home, worker_log)


@dataclass
class Digits:
    archive: Path
    held_out: list[tuple[bytes, int]]


@pytest.fixture(scope="session")
def digits10(tmp_path_factory: pytest.TempPathFactory) -> Digits:
    """All ten digit classes, 32 px, with 10 images per class held out of the archive."""
    members, held = digit_members(range(10), holdout=10, size=32)
    return Digits(write_zip(tmp_path_factory.mktemp("digits") / "digits.zip", members), held)
