"""Celery tasks: thin adapters from a message (an id) to the code that does the work."""

from app.core.config import get_settings
from app.core.queue import EXPORT_TASK, TRAIN_TASK
from worker.celery_app import app
from worker.exporting import export_model
from worker.runner import run_job


@app.task(name=TRAIN_TASK, ignore_result=True)
def train(job_id: str) -> None:
    """Train job `job_id` if it is still queued; the database decides, not the message."""
    run_job(get_settings(), job_id)


@app.task(name=EXPORT_TASK, ignore_result=True)
def export(model_id: str) -> None:
    """Make the ONNX and TorchScript exports of `model_id` (a `cpu` queue task)."""
    export_model(get_settings(), model_id)
