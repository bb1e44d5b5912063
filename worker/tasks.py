"""Celery tasks: thin adapters from a message (a job id) to the runner."""

from app.core.config import get_settings
from app.core.queue import TRAIN_TASK
from worker.celery_app import app
from worker.runner import run_job


@app.task(name=TRAIN_TASK, ignore_result=True)
def train(job_id: str) -> None:
    """Train job `job_id` if it is still queued; the database decides, not the message."""
    run_job(get_settings(), job_id)
