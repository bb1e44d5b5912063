"""Fault-injection fixtures: a private Redis, one API, worker processes started per test.

Settings are shortened (2 s leases, reaper every 0.5 s) so crashes resolve in seconds.
"""

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import redis
from sqlalchemy.orm import Session

from app.core.db import get_sessionmaker
from app.core.models import Job
from tests.support.client import upload
from tests.support.images import digit_members, write_zip
from tests.support.processes import free_port, running, service_env, wait_http, wait_log

FAST = {
    "lease_s": "2",
    "reaper_interval_s": "0.5",
    "requeue_grace_s": "1",
    "progress_interval_s": "0.2",
    "cancel_poll_interval_s": "0.2",
}


class PrivateRedis:
    """A redis-server of the test's own, so it can be flushed, stopped and restarted."""

    def __init__(self, root: Path) -> None:
        self.port, self.root = free_port(), root
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.root),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url)
        for _ in range(100):
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise TimeoutError("private redis did not start")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=10)

    def flushall(self) -> None:
        redis.Redis.from_url(self.url).flushall()

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Redis frozen (SIGSTOP): connections stay open and nothing answers, as in a partition."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)
        try:
            yield
        finally:
            self.proc.send_signal(signal.SIGCONT)


@dataclass
class Cluster:
    client: httpx.Client
    env: dict[str, str]
    root: Path
    redis: PrivateRedis
    sessions: Callable[[], Session]
    dataset: dict
    held_out: list[tuple[bytes, int]]
    _stack: ExitStack = field(default_factory=ExitStack)
    _count: int = 0

    def worker(self, **settings: str) -> subprocess.Popen[bytes]:
        """Start a worker (extra FINETUNE_* settings, `faults=` for FINETUNE_FAULTS)."""
        self._count += 1
        env = dict(self.env)
        if "faults" in settings:
            env["FINETUNE_FAULTS"] = settings.pop("faults")
        env.update({f"FINETUNE_{k.upper()}": v for k, v in settings.items()})
        log = self.root / f"worker{self._count}.log"
        proc = self._stack.enter_context(
            running(["worker", "--queues", env["FINETUNE_GPU_QUEUE"]], env, log)
        )
        wait_log(log, "ready.", proc)
        return proc

    @property
    def last_worker_log(self) -> Path:
        """The log file of the worker started last."""
        return self.root / f"worker{self._count}.log"

    def lease_log(self, job_id: str) -> str:
        """The workers' log lines on this job's leases: why an attempt was handed on."""
        return "\n".join(
            line
            for log in sorted(self.root.glob("worker*.log"))
            for line in log.read_text(errors="replace").splitlines()
            if job_id in line and "lease" in line
        )

    def job_row(self, job_id: str) -> Job:
        with self.sessions() as session:
            job = session.get(Job, job_id)
            assert job is not None
            return job


@pytest.fixture(scope="module")
def cluster_base(tmp_path_factory: pytest.TempPathFactory, pg_url: str) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("durability")
    private = PrivateRedis(root)
    private.start()
    env = service_env(
        data_dir=str(root / "var"),
        database_url=pg_url,
        broker_url=private.url,
        gpu_queue=f"durability-{os.getpid()}",
        cpu_queue=f"durability-cpu-{os.getpid()}",
        **FAST,
    )
    port = free_port()
    with running(["api", "--port", str(port)], env, root / "api.log") as api:
        wait_http(f"http://127.0.0.1:{port}/livez", api, root / "api.log")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            members, held = digit_members(range(3), per_class=60, holdout=8, size=32)
            archive = write_zip(root / "three.zip", members)
            dataset = upload(client, archive).raise_for_status().json()
            yield Cluster(client, env, root, private, get_sessionmaker(pg_url), dataset, held)
    private.stop()


@pytest.fixture
def cluster(cluster_base: Cluster) -> Iterator[Cluster]:
    """The shared cluster; the workers a test starts are stopped when it ends."""
    if cluster_base.redis.proc is None or cluster_base.redis.proc.poll() is not None:
        cluster_base.redis.start()
    with cluster_base._stack:
        yield cluster_base
    cluster_base._stack = ExitStack()
