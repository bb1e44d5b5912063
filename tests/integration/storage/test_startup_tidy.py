"""What the API and workers tidy when they start: a host cache over a budget a restart
lowered (else it would wait for the next download or decode, days away on an idle host),
and what processes killed mid-write left: half-made cache entries, uploads, staged files."""

import os
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.core.config import Settings
from app.core.hostcache import STALE_SCRATCH_S
from app.core.storage import get_storage, host_cache, tidy_host
from app.main import create_app
from tests.support.processes import running, service_env, wait_for

pytestmark = pytest.mark.integration

BUDGET = 150  # bytes: of three 100-byte entries only the newest fits


def left(path: Path, *, stale: bool = True) -> Path:
    """A file a writer left at `path`, untouched (if `stale`) for longer than a live
    writer ever leaves one; its folder too."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"half written")
    if stale:
        then = time.time() - STALE_SCRATCH_S - 60
        for each in (path, path.parent):
            os.utime(each, (then, then))
    return path


def untidy_host(data_dir: Path) -> dict[str, Path]:
    """Three cache entries a larger budget let in, and what killed processes left."""
    settings = Settings(data_dir=data_dir)
    cache = host_cache(settings)
    paths = {}
    for used, name in enumerate(["oldest", "older", "newest"], start=1):
        paths[name] = cache.path(name)
        paths[name].parent.mkdir(parents=True, exist_ok=True)
        paths[name].write_bytes(b"x" * 100)
        os.utime(paths[name], (used, used))
    # A download killed mid-way (in the cache), the API killed while receiving an upload,
    # a training child killed while writing a checkpoint (staged for storage).
    paths["half-made"] = left(cache.scratch("stored-x") / "0.png").parent
    paths["upload"] = left(settings.work_dir / "uploads" / "ds_killed" / "upload").parent
    paths["staged"] = left(get_storage(settings).staging() / "job_x-epoch-0001-a1.safetensors")
    # An upload still arriving is left alone.
    paths["live upload"] = left(settings.work_dir / "uploads" / "ds_live" / "upload", stale=False)
    return paths


def assert_tidy(paths: dict[str, Path]) -> None:
    kept = {"newest", "live upload"}
    assert all(paths[name].exists() for name in kept)
    assert not [name for name, path in paths.items() if name not in kept and path.exists()]


def test_the_api_tidies_the_host_at_start_up(tmp_path: Path, pg_url: str) -> None:
    paths = untidy_host(tmp_path / "var")
    settings = Settings(data_dir=tmp_path / "var", database_url=pg_url, cache_max_size=BUDGET)
    with TestClient(create_app(settings)) as client:
        assert_tidy(paths)
        assert client.get("/livez").status_code == 200


def test_a_worker_tidies_the_host_at_start_up(tmp_path: Path, pg_url: str, redis_url: str) -> None:
    paths = untidy_host(tmp_path / "var")
    env = service_env(
        data_dir=str(tmp_path / "var"),
        database_url=pg_url,
        broker_url=redis_url,
        cache_max_size=str(BUDGET),
        gpu_queue=f"trim-{tmp_path.name}",
        cpu_queue=f"trim-cpu-{tmp_path.name}",
    )
    log = tmp_path / "worker.log"
    with running(["worker"], env, log) as proc:
        wait_for(
            lambda: proc.poll() is not None or not paths["oldest"].exists(),
            timeout=60,
            what="the worker's start-up tidying",
        )
        assert proc.poll() is None, log.read_text()[-3000:]
        wait_for(lambda: not paths["staged"].exists(), timeout=10, what="the sweep")
        assert_tidy(paths)
    assert "cache entry oldest evicted" in log.read_text()


def test_tidying_that_fails_is_logged_and_start_up_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(data_dir=tmp_path / "var")
    (settings.work_dir).mkdir(parents=True)
    (settings.work_dir / "uploads").write_bytes(b"not a folder")  # scandir raises
    tidy_host(settings)
    assert "could not tidy this host's scratch space" in caplog.text
