"""Benchmarks through the running service: overhead, dispatch latency, API under load, predict.

The service runs as `finetune up` (SQLite + embedded broker) or as API + worker processes on
the local Postgres and Redis, exactly as users run it.
"""

import itertools
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import numpy as np

from app.core.config import Settings
from app.core.storage import get_storage, sha256_file
from app.models.inference import BatchPolicy, ModelCache
from benchmarks.common import (
    best_seconds,
    digits_imagefolder,
    peak_rss_mib,
    step_seconds,
    tree_cpu_seconds,
    worker_process,
)
from tests.support.client import upload, wait_exports, wait_job
from tests.support.images import write_zip
from tests.support.processes import (
    api_and_trainer,
    free_port,
    running,
    service_env,
    wait_http,
    wait_log,
)
from worker.jobspec import load_data
from worker.training.loop import fit
from worker.training.spec import TrainSpec

FAST_ENV = {"progress_interval_s": "2"}
# The API-latency target's load: a hundred clients polling their job once a second.
PACED_RATE = 100


@contextmanager
def embedded(root: Path, **settings: str) -> Iterator[tuple[httpx.Client, int]]:
    """`finetune up` on SQLite + the embedded broker: a client of it and its process id."""
    root.mkdir(parents=True, exist_ok=True)
    env = service_env(data_dir=str(root / "var"), **{**FAST_ENV, **settings})
    port = free_port()
    with running(["up", "--port", str(port)], env, root / "up.log") as proc:
        wait_http(f"http://127.0.0.1:{port}/readyz", proc, root / "up.log", timeout=120)
        wait_log(root / "up.log", "ready.", proc)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
            yield client, proc.pid


@contextmanager
def api_only(root: Path, **settings: str) -> Iterator[httpx.Client]:
    root.mkdir(parents=True, exist_ok=True)
    env = service_env(data_dir=str(root / "var"), **settings)
    port = free_port()
    with running(["api", "--port", str(port)], env, root / "api.log") as proc:
        wait_http(f"http://127.0.0.1:{port}/readyz", proc, root / "api.log", timeout=120)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
            yield client


@contextmanager
def with_redis(root: Path, database_url: str, redis_url: str) -> Iterator[httpx.Client]:
    root.mkdir(parents=True, exist_ok=True)
    env = service_env(
        data_dir=str(root / "var"),
        database_url=database_url,
        broker_url=redis_url,
        gpu_queue=f"bench-{root.name}",
        cpu_queue=f"bench-cpu-{root.name}",
        **FAST_ENV,
    )
    with api_and_trainer(env, root, timeout=120) as (client, _):
        yield client


def _archive(workdir: Path, size: int, per_class: int | None) -> Path:
    data = digits_imagefolder(workdir / f"imgs{size}", size, per_class)
    members = {
        str(p.relative_to(data.root / "train")): p.read_bytes()
        for p in (data.root / "train").rglob("*.png")
    }
    return write_zip(workdir / f"digits{size}.zip", members)


def _events(client: httpx.Client, job_id: str) -> list[dict[str, Any]]:
    return client.get(f"/v1/jobs/{job_id}/events", params={"limit": 1000}).json()["data"]


def _dispatch_seconds(client: httpx.Client, job_id: str) -> float:
    events = _events(client, job_id)
    queued = next(e for e in events if e["data"].get("status") == "queued")
    running_ = next(e for e in events if e["data"].get("status") == "running")
    return (
        datetime.fromisoformat(running_["created_at"])
        - datetime.fromisoformat(queued["created_at"])
    ).total_seconds()


def _dispatch(
    client: httpx.Client, dataset: dict[str, Any], spec: dict[str, Any], jobs: int, broker: str
) -> dict[str, Any]:
    """POST → running of `jobs` one-epoch jobs submitted to an idle worker, one at a time."""
    seconds = []
    for _ in range(jobs):
        body = {"dataset_id": dataset["id"], **spec, "epochs": 1}
        job = client.post("/v1/jobs", json=body).raise_for_status().json()
        wait_job(client, job["id"], timeout=600)
        seconds.append(_dispatch_seconds(client, job["id"]))
    return {
        "benchmark": "dispatch latency",
        "setting": f"POST → running, {broker}",
        "p50 ms": statistics.median(seconds) * 1000,
        "max ms": max(seconds) * 1000,
    }


def _job_run(
    client: httpx.Client, service_pid: int, body: dict[str, Any]
) -> tuple[float, float, list[dict[str, Any]]]:
    """Submit a job and wait for it: wall time, CPU seconds of the service, epoch metrics.

    The wall time runs from sending the POST to the `finished_at` the service recorded when
    the job succeeded (the client polls, and when it happens to look is not the service's
    time). The CPU seconds are those of every process of the service meanwhile (API, Celery
    parents and pool children, broker polling), read when the client sees the job succeed.
    """
    cpu = tree_cpu_seconds(service_pid)
    start = datetime.now(UTC)
    job = client.post("/v1/jobs", json=body).raise_for_status().json()
    job = wait_job(client, job["id"], timeout=1800)
    cpu = tree_cpu_seconds(service_pid) - cpu
    assert job["status"] == "succeeded", job
    wall = (datetime.fromisoformat(job["finished_at"]) - start).total_seconds()
    # The cpu queue exports the new model now; let it finish before anything else is timed.
    wait_exports(client, job["model_id"])
    return wall, cpu, [e["data"] for e in _events(client, job["id"]) if e["type"] == "epoch"]


def _core_run(
    work_dir: Path, service_dir: Path, dataset: dict[str, Any], spec_body: dict[str, Any]
) -> tuple[float, float, list[dict[str, Any]], int]:
    """The training core alone on the service's stored dataset: decode + split + fit.

    Its wall time, CPU seconds (all its threads), epoch metrics and training-set size.
    `work_dir` holds the core's own decode cache, which warms up as the service's does: the
    first run decodes the images, later runs on the same setting reuse them.
    """
    settings = Settings(data_dir=work_dir)
    storage = get_storage(Settings(data_dir=service_dir / "var"))
    row = SimpleNamespace(
        id=dataset["id"], classes=dataset["classes"], storage_key=f"datasets/{dataset['id']}"
    )
    keys = (
        "epochs",
        "batch_size",
        "learning_rate",
        "optimizer",
        "image_size",
        "augment",
        "lr_schedule",
    )
    spec = TrainSpec(
        backbone="resnet18",
        classes=tuple(dataset["classes"]),
        **{k: spec_body[k] for k in keys if k in spec_body},
    )
    start, cpu = time.perf_counter(), time.process_time()
    data = load_data(settings, storage, row, spec, 0.2)  # type: ignore[arg-type]
    result = fit(spec, data)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return wall, cpu, result.history, len(data.train)


def _overhead(
    client: httpx.Client,
    service_pid: int,
    root: Path,
    dataset: dict[str, Any],
    spec: dict[str, Any],
    pairs: int,
) -> dict[str, Any]:
    """A job's wall time against the core's own time on the same spec, in adjacent pairs.

    The machine's speed drifts by tens of percent within minutes, so each job is compared
    with a core run right beside it, the pairs alternate which runs first (job-core,
    core-job, ...) so a drift within a pair favours neither side, and the ratio is the
    median of the pairs' ratios. Each pair is also split using the epochs' own images/s:
    `steps ratio` compares the time inside training steps (is the pool child's step as fast
    as the bare core's?) and `service's own s` is the job's time outside its steps minus the
    core's (dispatch, checkpoints, events), which drift barely touches. `CPU ratio` compares
    the work done: CPU seconds of every process of the service during the job against the
    core's, a figure that a slower machine stretches far less than it stretches wall time.
    """
    walls, cores, ratios, steps, own, cpu_ratios = [], [], [], [], [], []
    body = {"dataset_id": dataset["id"], **spec}
    with worker_process() as call:  # long-lived, like the worker's pool child
        for pair in range(pairs):
            if pair % 2 == 0:
                wall, cpu, job_history = _job_run(client, service_pid, body)
                core, core_cpu, core_history, images = call(
                    _core_run, root / "core", root, dataset, spec
                )
            else:
                core, core_cpu, core_history, images = call(
                    _core_run, root / "core", root, dataset, spec
                )
                wall, cpu, job_history = _job_run(client, service_pid, body)
            job_steps = step_seconds(job_history, images, spec["batch_size"])
            core_steps = step_seconds(core_history, images, spec["batch_size"])
            walls.append(wall)
            cores.append(core)
            ratios.append(wall / core)
            steps.append(job_steps / core_steps)
            own.append((wall - job_steps) - (core - core_steps))
            cpu_ratios.append(cpu / core_cpu)
    return {
        "benchmark": "service overhead",
        "setting": f"resnet18 {spec['image_size']}px ×{spec['epochs']} ep, embedded, "
        f"median of {pairs} adjacent pairs",
        "reference s": statistics.median(cores),
        "service s": statistics.median(walls),
        "ratio": statistics.median(ratios),
        "pair ratios": " ".join(f"{r:.2f}" for r in ratios),
        "steps ratio": statistics.median(steps),
        "service's own s": statistics.median(own),
        "CPU ratio": statistics.median(cpu_ratios),
    }


def _in_threads(loops: list[Callable[[], None]]) -> float:
    """Run each loop in its own thread; the wall seconds until the last one ends."""
    start = time.perf_counter()
    workers = [threading.Thread(target=loop) for loop in loops]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return time.perf_counter() - start


def _summary(latencies: list[float], seconds: float) -> dict[str, float]:
    q = statistics.quantiles(latencies, n=100)
    return {"p50 ms": q[49] * 1000, "p99 ms": q[98] * 1000, "req/s": len(latencies) / seconds}


def _hammer(client: httpx.Client, path: str, seconds: float, threads: int) -> dict[str, float]:
    latencies: list[float] = []
    stop = time.monotonic() + seconds

    def loop() -> None:
        with httpx.Client(base_url=client.base_url, timeout=30) as own:
            while time.monotonic() < stop:
                t = time.perf_counter()
                own.get(path).raise_for_status()
                latencies.append(time.perf_counter() - t)

    _in_threads([loop] * threads)
    return _summary(latencies, seconds)


def _paced(
    client: httpx.Client, path: str, rate: float, seconds: float, threads: int = 8
) -> dict[str, float]:
    """Open-loop load: request i is due at start + i / rate, whatever the server does.

    A latency target only means something at a stated load: `_hammer`'s closed loop keeps
    the server saturated, so its latency is mostly its own queue (clients ÷ throughput).
    Here latency counts from each request's due time, so a server that stalls is charged
    for every request it held up (no coordinated omission), as long as `threads` exceeds
    rate × latency.
    """
    total = int(rate * seconds)
    due = itertools.count()
    latencies: list[float] = []
    # Clients are built and connected before the clock starts: built in the threads, eight
    # at once (an SSL context each), they made the first due requests go out late.
    owns = [httpx.Client(base_url=client.base_url, timeout=30) for _ in range(threads)]
    for own in owns:
        own.get(path).raise_for_status()
    start = time.perf_counter() + 0.05  # the threads start before the first request is due

    def loop(own: httpx.Client) -> None:
        while (i := next(due)) < total:
            at = start + i / rate
            time.sleep(max(0.0, at - time.perf_counter()))
            own.get(path).raise_for_status()
            latencies.append(time.perf_counter() - at)

    wall = _in_threads([partial(loop, own) for own in owns])
    for own in owns:
        own.close()
    return _summary(latencies, wall)


def _predict_load(
    client: httpx.Client, model_id: str, png: bytes, clients: int, per_client: int
) -> dict[str, float]:
    latencies: list[float] = []

    def loop() -> None:
        with httpx.Client(base_url=client.base_url, timeout=60) as own:
            for _ in range(per_client):
                t = time.perf_counter()
                own.post(
                    f"/v1/models/{model_id}/predict", files={"files": ("x.png", png)}
                ).raise_for_status()
                latencies.append(time.perf_counter() - t)

    return _summary(latencies, _in_threads([loop] * clients))


def _batching_ceiling(weights: Path, batch: int) -> float:
    """The model alone, as the API serves it: images/s of a `batch` forward ÷ a 1-image one.

    No HTTP, decoding or queueing: the most micro-batching can gain on this hardware.
    """
    cache = ModelCache(1, "auto", BatchPolicy(enabled=False), precision="auto")
    model = cache.get("ceiling", lambda: weights, sha256_file(weights))
    size = model.image_size
    rates = []
    for n in (1, batch):
        x = np.random.default_rng(0).standard_normal((n, 3, size, size)).astype(np.float32)
        rates.append(n / best_seconds(lambda x=x: model.probabilities(x), max(3, 64 // n)))
    return rates[1] / rates[0]


def run(
    workdir: Path, tiny: bool, database_url: str | None = None, redis_url: str | None = None
) -> list[dict[str, Any]]:
    # Overhead: short jobs in many adjacent pairs beat long ones in few (see _overhead).
    size, per_class, epochs, pairs = (16, 12, 1, 1) if tiny else (32, None, 4, 6)
    archive = _archive(workdir, size, per_class)
    spec = {
        "weights": None,
        "epochs": epochs,
        "image_size": size,
        "augment": False,
        "batch_size": 100,
        "learning_rate": 0.01,
        "optimizer": "sgd",
        "lr_schedule": "constant",
    }
    rows: list[dict[str, Any]] = []
    root = workdir / "embedded"
    with embedded(root) as (client, service_pid):
        dataset = upload(client, archive).raise_for_status().json()
        rows.append(_overhead(client, service_pid, root, dataset, spec, pairs))
        rows.append(_dispatch(client, dataset, spec, 3 if tiny else 5, "embedded broker"))
        seconds = 2 if tiny else 10
        done = client.get("/v1/jobs", params={"limit": 1}).json()["data"][0]  # a finished job
        idle = _hammer(client, f"/v1/jobs/{done['id']}", seconds, 8)
        idle_paced = _paced(client, f"/v1/jobs/{done['id']}", PACED_RATE, seconds)
        long = client.post(
            "/v1/jobs", json={"dataset_id": dataset["id"], **spec, "epochs": 1000, "image_size": 64}
        ).json()
        wait_job(client, long["id"], until={"running"}, timeout=120)
        time.sleep(2)
        busy_paced = _paced(client, f"/v1/jobs/{long['id']}", PACED_RATE, seconds)
        busy = _hammer(client, f"/v1/jobs/{long['id']}", seconds, 8)
        client.post(f"/v1/jobs/{long['id']}/cancel")
        wait_job(client, long["id"], timeout=60)
        for setting, during, before in (
            (f"{PACED_RATE} req/s offered (open loop)", busy_paced, idle_paced),
            ("8 clients flat out (saturated)", busy, idle),
        ):
            rows.append(
                {
                    "benchmark": "GET /v1/jobs/{id} while training",
                    "setting": f"{setting}, same 2 cores",
                    **during,
                    "idle p99 ms": before["p99 ms"],
                }
            )
        # Predict with a model at a realistic input size, where the forward pass matters.
        predict_size = size if tiny else 128
        served = client.post(
            "/v1/jobs",
            json={"dataset_id": dataset["id"], **spec, "epochs": 1, "image_size": predict_size},
        ).json()
        model_id = wait_job(client, served["id"], timeout=900)["model_id"]
        weights = workdir / f"{model_id}.safetensors"
        weights.write_bytes(client.get(f"/v1/models/{model_id}/content").content)
        png = (archive.parent / f"imgs{size}" / "test").rglob("*.png").__next__().read_bytes()
    for row in rows:  # the largest process of the service tree (waited for, so counted)
        row["peak RSS MiB"] = peak_rss_mib()
    results = {}
    for batching in ("true", "false"):
        with api_only(root, predict_batching=batching) as client:
            client.post(
                f"/v1/models/{model_id}/predict", files={"files": ("x.png", png)}
            ).raise_for_status()
            results[batching] = _predict_load(client, model_id, png, 32, 3 if tiny else 25)
    rows.append(
        {
            "benchmark": "predict, 32 concurrent clients",
            "setting": f"{predict_size}px model, micro-batching vs one forward each",
            "reference req/s": results["false"]["req/s"],
            "service req/s": results["true"]["req/s"],
            "ratio": results["true"]["req/s"] / results["false"]["req/s"],
            "p50 ms": results["true"]["p50 ms"],
            "p99 ms": results["true"]["p99 ms"],
            "reference p99 ms": results["false"]["p99 ms"],
            "forward ceiling ratio": _batching_ceiling(weights, 32),
        }
    )
    if database_url and redis_url:
        with with_redis(workdir / "redis", database_url, redis_url) as client:
            dataset = upload(client, archive).raise_for_status().json()
            rows.append(_dispatch(client, dataset, spec, 3 if tiny else 5, "Redis + Postgres"))
    return rows
