"""The worker's Celery app, configured from Settings.

Acknowledgement policy: *early ack* with prefetch 1. A training task runs for minutes to
hours; with late ack the broker would redeliver it whenever Redis' visibility timeout
passes or a worker restarts, and the job could train twice. Here the message is only a
wake-up call: the job row in the database decides whether anything runs (a conditional
queued → running claim), so a redelivered or duplicated message is harmless and a lost
one is re-sent from the database.
"""

from celery import Celery

from app.core.config import Settings, get_settings
from app.core.queue import EXPORT_TASK, TRAIN_TASK, broker_options, broker_transport


def create_celery(settings: Settings) -> Celery:
    """A Celery app for `settings`; the tasks module registers its tasks on it."""
    app = Celery(
        "finetune", broker=settings.broker_url, include=["worker.tasks", "worker.lifecycle"]
    )
    options = broker_options(settings)
    if settings.embedded_broker:
        options["polling_interval"] = 0.2  # the filesystem transport polls its folder
    app.conf.update(
        broker_transport=broker_transport(settings.broker_url),
        broker_transport_options=options,
        broker_connection_retry_on_startup=True,
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        result_backend=None,
        task_acks_late=False,
        worker_prefetch_multiplier=1,
        task_default_queue=settings.gpu_queue,
        task_routes={
            TRAIN_TASK: {"queue": settings.gpu_queue},
            EXPORT_TASK: {"queue": settings.cpu_queue},
        },
        # With recycling, one job per child process: GPU memory and allocator state start
        # clean every job, at the price of a fork before the next (see README, Speed).
        worker_max_tasks_per_child=1 if settings.worker_recycle else None,
        worker_hijack_root_logger=False,
        # The filesystem transport has no broadcast channel for remote control.
        worker_enable_remote_control=not settings.embedded_broker,
    )
    return app


app = create_celery(get_settings())
