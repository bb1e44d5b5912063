"""A budget lowered by a restart applies when the API or a worker starts, not at the next
download or decode (which may be days away on an idle host)."""

import os
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.core.config import Settings
from app.core.hostcache import STALE_SCRATCH_S
from app.core.storage import host_cache
from app.main import create_app
from tests.support.processes import running, service_env, wait_for

pytestmark = pytest.mark.integration

BUDGET = 150  # bytes: of three 100-byte entries only the newest fits


def overfull_cache(data_dir: Path) -> dict[str, Path]:
    """Three entries a larger budget let in, and a download a killed process left half-made."""
    cache = host_cache(Settings(data_dir=data_dir))
    paths = {}
    for used, name in enumerate(["oldest", "older", "newest"], start=1):
        paths[name] = cache.path(name)
        paths[name].parent.mkdir(parents=True, exist_ok=True)
        paths[name].write_bytes(b"x" * 100)
        os.utime(paths[name], (used, used))
    paths["half-made"] = cache.scratch("stored-x")
    paths["half-made"].write_bytes(b"x")
    stale = time.time() - STALE_SCRATCH_S - 60
    os.utime(paths["half-made"], (stale, stale))
    return paths


def assert_trimmed(paths: dict[str, Path]) -> None:
    assert paths["newest"].exists()
    assert not [name for name, path in paths.items() if name != "newest" and path.exists()]


def test_the_api_trims_the_host_cache_at_start_up(tmp_path: Path, pg_url: str) -> None:
    paths = overfull_cache(tmp_path / "var")
    settings = Settings(data_dir=tmp_path / "var", database_url=pg_url, cache_max_size=BUDGET)
    with TestClient(create_app(settings)) as client:
        assert_trimmed(paths)
        assert client.get("/livez").status_code == 200


def test_a_worker_trims_the_host_cache_at_start_up(
    tmp_path: Path, pg_url: str, redis_url: str
) -> None:
    paths = overfull_cache(tmp_path / "var")
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
            what="the worker's start-up trim",
        )
        assert proc.poll() is None, log.read_text()[-3000:]
        wait_for(lambda: not paths["half-made"].exists(), timeout=10, what="the sweep")
        assert_trimmed(paths)
    assert "cache entry oldest evicted" in log.read_text()
