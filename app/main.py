"""create_app(): the FastAPI application with its routers and problem+json handlers."""

import gc
import logging
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session

from app.api import health, openapi, problems
from app.api.early import EarlyUploadRefusal
from app.api.head import HeadAsGet
from app.api.limits import BodySizeLimit
from app.api.metrics import Metrics, MetricsMiddleware
from app.api.metrics import router as metrics_router
from app.api.ratelimit import create_limiter
from app.core import registry
from app.core.config import Settings, get_settings
from app.core.db import session_scope
from app.core.logs import RequestIdMiddleware
from app.core.reaper import reap
from app.core.storage import Storage, forget_deleted_datasets, get_storage, tidy_host
from app.datasets.router import router as datasets_router
from app.datasets.service import sweep_orphans
from app.jobs.router import router as jobs_router
from app.jobs.service import sweep_files
from app.models.exporter import ExportBuilds
from app.models.inference import BatchPolicy, ModelCache
from app.models.router import router as models_router
from app.web.router import router as web_router

log = logging.getLogger(__name__)
# How often the API looks for stored files no row names; they only need to be an hour old.
SWEEP_INTERVAL_S = 3600.0
DESCRIPTION = """
Upload image datasets, fine-tune torchvision backbones on them (full, linear probe or
partial unfreezing), follow the job, download the weights and classify images.
Every error is `application/problem+json` with a stable `code`.
"""


def _reap_once(settings: Settings) -> None:
    """Recover jobs orphaned while no worker ran (see app.core.reaper)."""
    try:
        with session_scope(settings.database_url) as session:
            reap(session, settings)
    except Exception:  # a missing database shows in /readyz; startup goes on
        log.warning("startup reaper round failed", exc_info=True)


def _sweep_stored_files(settings: Settings, storage: Storage, stop: threading.Event) -> None:
    """Free the space of stored files that no row names: datasets (app.datasets.service.
    sweep_orphans) and ended jobs' checkpoints (app.jobs.service.sweep_files), and this
    host's cached copies of datasets deleted through another host (app.core.storage.
    forget_deleted_datasets), at start-up and then every `SWEEP_INTERVAL_S`. In a thread of
    its own: a slow or silent store must delay neither start-up nor requests; what it could
    not reach waits for the next round."""
    sweeps: dict[str, Callable[[Session, Storage], list[str]]] = {
        "datasets": sweep_orphans,
        "job files": sweep_files,
        "cached copies of deleted datasets": lambda s, _: forget_deleted_datasets(s, settings),
    }
    while True:
        for what, sweep in sweeps.items():
            try:
                with session_scope(settings.database_url) as session:
                    removed = sweep(session, storage)
            except Exception:
                log.warning("could not sweep stored %s that no row names", what, exc_info=True)
                continue
            if removed:
                log.info("removed %d stored %s no row named: %s", len(removed), what, removed)
        if stop.wait(SWEEP_INTERVAL_S):
            return


def _warm_up() -> None:
    """Import torchvision's registry, then move every object alive into gc's permanent set.

    With torch imported the process holds ~400k objects, and each full collection scanned
    them all: a pause of ~170 ms on a small CPU during which no request moved, the API's
    worst tail latency. Frozen, they are never scanned again; what requests create later
    is collected as usual. The collect first keeps today's garbage out of the frozen set.
    """
    registry.backbone_names()
    gc.collect()
    gc.freeze()


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; `settings` (tests) replaces the environment-read settings."""
    resolved = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        resolved.work_dir.mkdir(parents=True, exist_ok=True)
        # Off the event loop, instead of in the first POST /v1/jobs (about two seconds on a
        # small CPU).
        app.state.warm_up = threading.Thread(target=_warm_up, name="warm-up", daemon=True)
        app.state.warm_up.start()
        await run_in_threadpool(_reap_once, resolved)
        await run_in_threadpool(tidy_host, resolved)
        stop_sweeping = threading.Event()
        threading.Thread(
            target=_sweep_stored_files,
            args=(resolved, app.state.storage, stop_sweeping),
            name="sweep-stored-files",
            daemon=True,
        ).start()
        yield
        stop_sweeping.set()

    app = FastAPI(
        title="Fine-tuning service",
        version="1.0.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        responses={500: {"model": problems.Problem, "description": "Internal error"}},
    )
    # Built here, not in the lifespan: clients that skip lifespan events still get them.
    batching = BatchPolicy(
        enabled=resolved.predict_batching,
        max_batch=resolved.predict_max_batch,
        max_wait_s=resolved.predict_max_wait_ms / 1000,
        queue_size=resolved.predict_queue_size,
    )
    app.state.settings = resolved
    app.state.storage = get_storage(resolved)
    app.state.model_cache = ModelCache(
        resolved.model_cache_size, resolved.device, batching, resolved.predict_precision
    )
    app.state.export_builds = ExportBuilds(resolved.database_url, app.state.storage)
    app.state.rate_limiter = create_limiter(resolved)
    app.state.metrics = Metrics(resolved)
    problems.install(app)
    openapi.install(app)
    app.add_middleware(HeadAsGet)  # innermost: the request metrics still say HEAD
    app.add_middleware(BodySizeLimit, settings=lambda: app.state.settings)
    app.add_middleware(EarlyUploadRefusal)  # a 401 or 429 before an upload's body is read
    app.add_middleware(problems.CatchUnhandled)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    app.add_middleware(RequestIdMiddleware)
    routers = (health.router, metrics_router, datasets_router, jobs_router, models_router)
    for router in (*routers, web_router):
        app.include_router(router)
    return app
