"""The API's only touchpoint with Celery: send a training task by name."""

from functools import lru_cache

from celery import Celery

from app.core.config import Settings

TRAIN_TASK = "finetune.train"


def broker_options(settings: Settings) -> dict[str, object]:
    """Transport options shared by the API's producer and the worker."""
    if not settings.embedded_broker:
        return {}
    folder = settings.broker_dir
    for sub in ("queue", "control"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    return {
        "data_folder_in": str(folder / "queue"),
        "data_folder_out": str(folder / "queue"),
        "control_folder": str(folder / "control"),
        "store_processed": False,
    }


@lru_cache(maxsize=4)
def _producer(broker_url: str, queue: str, options: tuple[tuple[str, object], ...]) -> Celery:
    app = Celery("finetune-api", broker=broker_url, set_as_current=False)
    app.conf.update(
        broker_transport_options=dict(options),
        task_serializer="json",
        accept_content=["json"],
        task_default_queue=queue,
        broker_connection_retry_on_startup=True,
    )
    return app


def get_producer(settings: Settings) -> Celery:
    """A send-only Celery app (no task imports, so no torch in the API)."""
    options = tuple(sorted(broker_options(settings).items()))
    return _producer(settings.broker_url, settings.queue_name, options)


def enqueue(settings: Settings, job_id: str) -> None:
    """Wake a worker for `job_id`; the job row, not the message, is the truth."""
    get_producer(settings).send_task(TRAIN_TASK, args=[job_id], queue=settings.queue_name)


def broker_ok(settings: Settings) -> bool:
    """Whether the broker accepts connections (or, embedded, its folder is writable)."""
    if settings.embedded_broker:
        broker_options(settings)
        return settings.broker_dir.is_dir()
    with get_producer(settings).connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=2)
    return True
