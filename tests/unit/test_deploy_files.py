"""The deploy files (Dockerfile, docker-compose.yml, .dockerignore) agree with the code."""

import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.core.config import Settings

ROOT = Path(__file__).resolve().parents[2]
APP_SERVICES = ("migrate", "api", "worker-gpu", "worker-cpu")
WORKERS = ("worker-gpu", "worker-cpu")
# Compose's `${VAR:-default}`: the default ends at the first `}` (braces do not nest).
DEFAULTED = re.compile(r"\$\{(\w+):-([^}]*)\}")
STORAGE_VOLUME = "artifacts"
TORCH_VOLUME = "torch-cache"
WORK_VOLUME = "work"


def _command(value: str | list[str]) -> str:
    """A compose/Dockerfile command, list or string form, as one shell-like string."""
    return value if isinstance(value, str) else shlex.join(value)


def _env(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment as a dict, whichever compose syntax it uses."""
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: _default(str(value)) for key, value in env.items()}


def _default(value: str, given: dict[str, str] | None = None) -> str:
    """What compose makes of `${VAR:-default}`: VAR from `given` if set and not empty, else
    the default (a fresh checkout sets nothing)."""
    return DEFAULTED.sub(lambda m: (given or {}).get(m[1]) or m[2], value)


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """A service's volume mounts as {source: target}, short or long syntax."""
    mounts = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
        else:
            source, target = volume["source"], volume["target"]
        mounts[source] = target
    return mounts


def _instructions(text: str) -> list[tuple[str, str]]:
    """Dockerfile instructions as (KEYWORD, arguments), continuation lines joined."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        instructions.append((keyword.upper(), args.strip()))
        pending = ""
    assert not pending, "Dockerfile ends inside a continued line"
    return instructions


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    return _instructions((ROOT / "Dockerfile").read_text())


def _args(dockerfile: list[tuple[str, str]], keyword: str) -> list[str]:
    return [args for kw, args in dockerfile if kw == keyword]


# docker-compose.yml


def test_compose_has_every_service(services: dict[str, Any]) -> None:
    assert {"postgres", "redis", *APP_SERVICES} <= set(services)
    assert services["postgres"]["image"].startswith("postgres:16")
    assert services["redis"]["image"].startswith("redis:7")


def test_app_services_share_one_image_and_the_env_anchor(compose: dict[str, Any]) -> None:
    anchor = compose["x-finetune-env"]
    images = set()
    for name in APP_SERVICES:
        service = compose["services"][name]
        assert _env(service) == {key: _default(str(value)) for key, value in anchor.items()}, name
        images.add(service["image"])
    assert len(images) == 1


def test_compose_env_points_at_postgres_and_redis(services: dict[str, Any]) -> None:
    for name in APP_SERVICES:
        env = _env(services[name])
        assert env["FINETUNE_DATABASE_URL"].startswith("postgresql+psycopg://"), name
        assert "@postgres:5432/" in env["FINETUNE_DATABASE_URL"], name
        assert env["FINETUNE_BROKER_URL"].startswith("redis://redis:6379/"), name
        assert env["FINETUNE_AUTH_REQUIRED"].lower() == "true", name
        assert env["FINETUNE_DEVICE"] == "auto", name


def test_api_and_worker_share_storage_and_torch_cache(
    compose: dict[str, Any], services: dict[str, Any]
) -> None:
    for name in ("api", *WORKERS):
        env, mounts = _env(services[name]), _mounts(services[name])
        assert mounts.get(STORAGE_VOLUME) == env["FINETUNE_STORAGE_URL"], name
        assert mounts.get(TORCH_VOLUME) == env["TORCH_HOME"], name
    assert {STORAGE_VOLUME, TORCH_VOLUME} <= set(compose["volumes"])


def test_migrate_runs_once_before_api_and_worker(services: dict[str, Any]) -> None:
    migrate = services["migrate"]
    assert "finetune db upgrade" in _command(migrate["command"])
    assert migrate["restart"] == "no"
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("api", *WORKERS):
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
        assert depends["redis"]["condition"] == "service_healthy", name
        # MinIO only runs with `--profile s3`: the dependency must be optional.
        assert depends["minio-bucket"] == {
            "condition": "service_completed_successfully",
            "required": False,
        }, name


def test_api_serves_port_8000_and_checks_readiness(services: dict[str, Any]) -> None:
    api = services["api"]
    assert "8000:8000" in [str(port) for port in api["ports"]]
    assert "/readyz" in _command(api["healthcheck"]["test"])


def test_gpu_worker_trains_one_job_per_gpu_and_stops_gracefully(services: dict[str, Any]) -> None:
    """It sees the host's GPUs and runs one training process per GPU (FINETUNE_GPUS, default 1):
    pool child k trains on GPU k (worker.lifecycle). A `count: 1` reservation per replica put
    every replica of `--scale` on the host's first GPU."""
    worker = services["worker-gpu"]
    command = _command(worker["command"])
    assert "finetune worker --queues gpu --concurrency '${FINETUNE_GPUS:-1}'" in command
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    assert worker["stop_grace_period"] == "2m"
    # No DataLoader worker processes (decoding runs in threads): no /dev/shm to enlarge.
    assert "shm_size" not in worker
    assert worker["healthcheck"] == {"disable": True}


def test_cpu_worker_takes_the_light_queue_without_a_gpu(services: dict[str, Any]) -> None:
    queues = {name: Settings.model_fields[name].default for name in ("gpu_queue", "cpu_queue")}
    worker = services["worker-cpu"]
    assert f"--queues {queues['cpu_queue']} " in _command(worker["command"])
    assert "deploy" not in worker
    assert f"--queues {queues['gpu_queue']} " in _command(services["worker-gpu"]["command"])


def test_the_s3_profile_serves_a_bucket_for_shared_storage(
    services: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert services["minio"]["profiles"] == ["s3"] and services["minio-bucket"]["profiles"] == [
        "s3"
    ]
    assert "mc mb --ignore-existing local/finetune" in _command(services["minio-bucket"]["command"])
    env = services["api"]["environment"]
    assert env["FINETUNE_STORAGE_URL"] == "${FINETUNE_STORAGE_URL:-/data/artifacts}"
    # Unset (a fresh checkout) or set as the file's header says, the settings must parse it.
    minio = {"endpoint_url": "http://minio:9000"}
    for given, expected in (({}, {}), ({"FINETUNE_STORAGE_OPTIONS": json.dumps(minio)}, minio)):
        value = _default(env["FINETUNE_STORAGE_OPTIONS"], given)
        monkeypatch.setenv("FINETUNE_STORAGE_OPTIONS", value)
        assert Settings().storage_options == expected, value


def test_every_container_bounds_the_host_cache_they_share(
    compose: dict[str, Any], services: dict[str, Any], dockerfile: list[tuple[str, str]]
) -> None:
    for name in ("api", "worker-gpu", "worker-cpu"):
        env = _env(services[name])
        assert Settings(cache_max_size=env["FINETUNE_CACHE_MAX_SIZE"]).cache_max_size == 50 * 2**30
        work = Settings(data_dir=env["FINETUNE_DATA_DIR"]).work_dir.as_posix()
        assert _mounts(services[name]).get(WORK_VOLUME) == work, name
    assert WORK_VOLUME in compose["volumes"]
    made = " ".join(args for keyword, args in dockerfile if keyword == "RUN")
    assert re.search(rf"mkdir -p [^&]*{work}( |\\)", made), "a volume copies its folder's owner"
    # Uploads spool to TMPDIR while they stream in: on the work volume, not the writable layer.
    env = " ".join(args for keyword, args in dockerfile if keyword == "ENV")
    assert f"TMPDIR={work}/tmp" in env and re.search(rf"mkdir -p [^&]*{work}/tmp( |\\)", made)


def test_backing_services_have_healthchecks_and_durable_data(services: dict[str, Any]) -> None:
    assert "pg_isready" in _command(services["postgres"]["healthcheck"]["test"])
    assert "/var/lib/postgresql/data" in _mounts(services["postgres"]).values()
    redis = services["redis"]
    assert "--appendonly yes" in _command(redis["command"])
    assert "redis-cli ping" in _command(redis["healthcheck"]["test"])
    assert "/data" in _mounts(redis).values()


# Dockerfile


def test_dockerfile_builds_on_python_311(dockerfile: list[tuple[str, str]]) -> None:
    stages: set[str] = set()
    for args in _args(dockerfile, "FROM"):
        words = args.split()
        assert words[0] in stages or words[0].startswith("python:3.11"), args
        if len(words) == 3 and words[1].upper() == "AS":
            stages.add(words[2])
    assert len(stages) >= 2, "expected a multi-stage build"


def test_dockerfile_runs_as_non_root(dockerfile: list[tuple[str, str]]) -> None:
    users = _args(dockerfile, "USER")
    assert users, "no USER instruction"
    assert users[-1].split(":")[0] not in {"root", "0"}


def test_dockerfile_serves_the_api_by_default(dockerfile: list[tuple[str, str]]) -> None:
    cmd = json.loads(_args(dockerfile, "CMD")[-1])
    assert cmd[:2] == ["finetune", "api"]
    assert "8000" in _args(dockerfile, "EXPOSE")[-1].split()
    healthcheck = _args(dockerfile, "HEALTHCHECK")
    assert healthcheck and "/livez" in healthcheck[-1] and "urllib" in healthcheck[-1]


def test_dockerfile_installs_cuda_torch_before_the_package(
    dockerfile: list[tuple[str, str]],
) -> None:
    args = _args(dockerfile, "ARG")
    assert any(a.startswith("TORCH_INDEX_URL=https://download.pytorch.org/whl/cu") for a in args)
    runs = [run for run in _args(dockerfile, "RUN") if "pip install" in run]
    assert all("--no-cache-dir" in run for run in runs)
    torch_at = next(i for i, run in enumerate(runs) if "TORCH_INDEX_URL" in run)
    package_at = next(i for i, run in enumerate(runs) if run.rstrip().endswith(" ."))
    assert torch_at < package_at
    env = " ".join(_args(dockerfile, "ENV"))
    assert "PYTHONDONTWRITEBYTECODE=1" in env and "PYTHONUNBUFFERED=1" in env


def test_dockerfile_copies_only_what_exists(dockerfile: list[tuple[str, str]]) -> None:
    copied: set[str] = set()
    for args in _args(dockerfile, "COPY"):
        words = args.split()
        if any(word.startswith("--from=") for word in words):
            continue
        sources = [word for word in words if not word.startswith("--")][:-1]
        copied.update(source.rstrip("/") for source in sources)
    for source in sorted(copied):
        assert (ROOT / source).exists(), f"Dockerfile copies missing path {source}"
    expected = {"app", "worker", "migrations", "pyproject.toml", "README.md", "alembic.ini"}
    assert expected <= copied


# .dockerignore


def test_dockerignore_keeps_local_state_out() -> None:
    patterns = {
        line.strip().rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".venv", "var", ".git"} <= patterns
