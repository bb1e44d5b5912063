"""The only touchpoint of the API with Celery: send tasks by name, see what is pending.

Two queues: `gpu` carries training (workers on GPU hosts), `cpu` carries light work that
should not wait behind hours of training nor hold a GPU (model exports). A single worker
may consume both (`finetune worker` without `--queues`); `finetune up` starts one per queue.
"""

import re
from functools import lru_cache
from pathlib import Path

from celery import Celery

from app.core.config import EMBEDDED_BROKER, Settings
from app.core.filebroker import TRANSPORT as FILE_TRANSPORT

TRAIN_TASK = "finetune.train"
EXPORT_TASK = "finetune.export"
_JOB_ID = re.compile(r"job_[0-9a-f]{22}")


def broker_options(settings: Settings) -> dict[str, object]:
    """Transport options shared by the API's producer and the worker."""
    if not settings.embedded_broker:
        # Early ack makes redelivery moot; a long timeout keeps Redis from even trying.
        return {"visibility_timeout": settings.visibility_timeout_s}
    folder = settings.broker_dir
    for sub in ("queue", "control"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    return {
        "data_folder_in": str(folder / "queue"),
        "data_folder_out": str(folder / "queue"),
        "control_folder": str(folder / "control"),
        "store_processed": False,
    }


def broker_transport(broker_url: str) -> str | None:
    """The kombu transport class for `broker_url`: ours for the embedded broker, else kombu's."""
    return FILE_TRANSPORT if broker_url == EMBEDDED_BROKER else None


@lru_cache(maxsize=4)
def _producer(broker_url: str, queue: str, options: tuple[tuple[str, object], ...]) -> Celery:
    app = Celery("finetune-api", broker=broker_url, set_as_current=False)
    app.conf.update(
        broker_transport=broker_transport(broker_url),
        broker_transport_options=dict(options),
        task_serializer="json",
        accept_content=["json"],
        task_default_queue=queue,
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=2,
        # Fail fast when the broker is down: the job row is safe and the reaper re-sends it.
        task_publish_retry_policy={"max_retries": 1, "interval_start": 0.2, "interval_step": 0.2},
    )
    return app


def get_producer(settings: Settings) -> Celery:
    """A send-only Celery app (no task imports, so no torch in the API).

    Every send and broker read of the service goes through it: the API's submits, retries
    and /readyz, the reaper's re-sends, the workers' export requests. Redis paused or cut off
    without closing its connections answers nothing, and redis-py, with no socket timeout,
    waits for its reply forever: each submit or probe would hold one of the API's threads
    until none was left, and the reaper would stop. With `broker_timeout_s` a send fails as
    it does when Redis is down, which the job rows already survive.
    """
    options = broker_options(settings)
    if not settings.embedded_broker:
        options |= redis_timeouts(settings)
    return _producer(settings.broker_url, settings.gpu_queue, tuple(sorted(options.items())))


def redis_timeouts(settings: Settings) -> dict[str, float]:
    """redis-py's timeouts for every client of the broker's Redis (producer, rate limiter)."""
    timeout = settings.broker_timeout_s
    return {"socket_timeout": timeout, "socket_connect_timeout": timeout}


def enqueue(settings: Settings, job_id: str) -> None:
    """Wake a worker for `job_id`; the job row, not the message, is the truth."""
    get_producer(settings).send_task(TRAIN_TASK, args=[job_id], queue=settings.gpu_queue)


def enqueue_exports(settings: Settings, model_id: str) -> None:
    """Have a `cpu` worker make the model's ONNX and TorchScript exports ahead of demand."""
    get_producer(settings).send_task(EXPORT_TASK, args=[model_id], queue=settings.cpu_queue)


def pending_job_ids(settings: Settings) -> set[str]:
    """Job ids of every training message the broker still holds (queued or reserved)."""
    if settings.embedded_broker:
        folder = settings.broker_dir / "queue"
        texts = [p.read_text(errors="replace") for p in _files(folder, settings.gpu_queue)]
    else:
        with get_producer(settings).connection_for_read() as conn:
            client = conn.default_channel.client
            keys = [k for k in client.scan_iter(match=f"{settings.gpu_queue}*", count=100)]
            texts = []
            for key in keys:
                if client.type(key) in (b"list", "list"):
                    texts += [_text(m) for m in client.lrange(key, 0, -1)]
            texts += [_text(m) for m in client.hvals("unacked")]
    return {job_id for text in texts for job_id in _JOB_ID.findall(text)}


def _files(folder: Path, queue: str) -> list[Path]:
    try:
        return [p for p in folder.iterdir() if p.name.endswith(f".{queue}.msg")]
    except FileNotFoundError:
        return []


def _text(raw: bytes | str) -> str:
    # The body is base64, but kombu keeps the task's args readable in the `argsrepr` header.
    return raw.decode(errors="replace") if isinstance(raw, bytes) else raw


def broker_ok(settings: Settings) -> bool:
    """Whether the broker accepts connections (or, embedded, its folder is writable)."""
    if settings.embedded_broker:
        broker_options(settings)
        return settings.broker_dir.is_dir()
    with get_producer(settings).connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=2)
    return True
