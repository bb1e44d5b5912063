"""Prometheus metrics: HTTP traffic and predict latency of this API process, plus job and
worker gauges read from the database at scrape time (so they agree across API processes).
"""

import time
from collections.abc import Iterator
from datetime import timedelta

from fastapi import APIRouter, Request, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric, SummaryMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.config import Settings
from app.core.db import get_sessionmaker
from app.core.models import Job, JobStatus, Worker, utcnow

router = APIRouter(tags=["operations"])


class Metrics:
    """The metrics of one app (one registry per app keeps tests independent)."""

    def __init__(self, settings: Settings) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "finetune_http_requests_total",
            "HTTP requests",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "finetune_http_request_duration_seconds",
            "HTTP request latency",
            ["method", "route"],
            registry=self.registry,
        )
        self.predict = Histogram(
            "finetune_predict_duration_seconds",
            "Predict latency per request",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=self.registry,
        )
        self.registry.register(JobCollector(settings))


class JobCollector(Collector):
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def collect(self) -> Iterator[Metric]:
        with get_sessionmaker(self.settings.database_url)() as session:
            rows = session.execute(select(Job.status, func.count()).group_by(Job.status)).all()
            counts = {status: count for status, count in rows}
            alive_since = utcnow() - timedelta(seconds=3 * self.settings.reaper_interval_s)
            workers = session.scalar(
                select(func.count()).select_from(Worker).where(Worker.last_seen_at >= alive_since)
            )
            running = session.scalars(
                select(Job.metrics).where(Job.status == JobStatus.running)
            ).all()
            finished = session.execute(
                select(Job.started_at, Job.finished_at)
                .where(Job.status == JobStatus.succeeded, Job.started_at.is_not(None))
                .order_by(Job.id.desc())
                .limit(1000)
            ).all()
        jobs = GaugeMetricFamily("finetune_jobs", "Jobs by status", labels=["status"])
        for status in JobStatus:
            jobs.add_metric([status.value], counts.get(status.value, 0))
        yield jobs
        yield GaugeMetricFamily(
            "finetune_queue_depth", "Queued jobs", value=counts.get("queued", 0)
        )
        yield GaugeMetricFamily(
            "finetune_workers_alive", "Workers with a recent heartbeat", value=workers or 0
        )
        speed = sum((m or {}).get("images_per_second") or 0 for m in running)
        yield GaugeMetricFamily(
            "finetune_training_images_per_second",
            "Training throughput of running jobs (last epoch)",
            value=speed,
        )
        durations = [(end - start).total_seconds() for start, end in finished if end and start]
        summary = SummaryMetricFamily(
            "finetune_job_duration_seconds", "Run time of the last 1000 succeeded jobs"
        )
        summary.add_metric([], count_value=len(durations), sum_value=sum(durations))
        yield summary
        yield from _gpu_memory()


def _gpu_memory() -> Iterator[Metric]:
    import sys

    torch = sys.modules.get("torch")  # only report when this process already uses torch
    # ...and has finished importing it: the start-up warm-up imports torch in a thread, and
    # a scrape meanwhile saw a half-built module (AttributeError: no torch.cuda, a 500).
    if torch is None or getattr(torch.__spec__, "_initializing", False):
        return
    if torch.cuda.is_available():
        gauge = GaugeMetricFamily(
            "finetune_gpu_memory_bytes", "GPU memory allocated by predict", labels=["device"]
        )
        for i in range(torch.cuda.device_count()):
            gauge.add_metric([str(i)], torch.cuda.memory_allocated(i))
        yield gauge


class MetricsMiddleware:
    """Counts and times every request by its route template (not its raw path)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        start = time.perf_counter()

        async def capture(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(scope["method"], route, str(status)).inc()
            self.metrics.latency.labels(scope["method"], route).observe(time.perf_counter() - start)


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}},
)
def metrics(request: Request) -> Response:
    """Prometheus text format: HTTP requests and latency by route template, predict
    latency, jobs by status, queue depth, live workers, training images/s and job
    durations.
    """
    return Response(
        generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST
    )
