"""Real service processes for integration tests: the `finetune` CLI in subprocesses."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import httpx

from app.cli import terminate_with_parent

T = TypeVar("T")

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def service_env(**settings: str) -> dict[str, str]:
    """The current environment plus FINETUNE_* settings for a child process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FINETUNE_")}
    env.update({f"FINETUNE_{k.upper()}": v for k, v in settings.items() if k != "torch_home"})
    if "torch_home" in settings:
        env["TORCH_HOME"] = settings["torch_home"]
    env["PYTHONUNBUFFERED"] = "1"
    return env


@contextmanager
def running(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Run `finetune ARGS` in its own process group; stop it (and its children) after.

    The child also gets SIGTERM if this process dies without getting to `stop` (a test
    or benchmark killed on timeout), so it cannot outlive the run that started it.
    """
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", *args],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=terminate_with_parent(),
        )
        try:
            yield proc
        finally:
            stop(proc)


def stop(proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    """SIGTERM the process group, then SIGKILL whatever of it is left (children included)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=timeout)
    # A child that outlived its parent (a worker finishing a task) must not outlive the test.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def wait_for(predicate: Callable[[], T], timeout: float = 60, what: str = "condition") -> T:
    """Poll `predicate` until it returns something truthy, and return that."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.1)
    raise TimeoutError(what)


def wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    """Wait until `url` answers 200, failing early (with the log) if the process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} not ready after {timeout}s:\n{log.read_text()[-3000:]}")


def wait_log(log: Path, text: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    """Wait until the process has printed `text` (e.g. Celery's 'ready.')."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in log.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            raise RuntimeError(f"process exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    raise TimeoutError(f"{text!r} not in log after {timeout}s:\n{log.read_text()[-3000:]}")


@contextmanager
def api_and_trainer(
    env: dict[str, str], root: Path, timeout: float = 60
) -> Iterator[tuple[httpx.Client, Path]]:
    """An API on a free port and a worker on the gpu queue only; its client and worker log.

    Training only: exports after every finished job would slow two cores for nothing in
    tests and benchmarks that do not look at them (storage/test_s3_fleet.py does).
    """
    port = free_port()
    worker_log = root / "worker.log"
    with (
        running(["worker", "--queues", env["FINETUNE_GPU_QUEUE"]], env, worker_log) as worker,
        running(["api", "--port", str(port)], env, root / "api.log") as api,
    ):
        wait_log(worker_log, "ready.", worker, timeout)
        wait_http(f"http://127.0.0.1:{port}/readyz", api, root / "api.log", timeout)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=timeout) as client:
            yield client, worker_log
