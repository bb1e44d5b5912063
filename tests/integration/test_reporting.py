"""An epoch's commit and the job's success: idempotent across a lost answer, progress whole."""

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from app.core.config import Settings
from app.core.ids import new_id
from app.core.models import LOCAL_TENANT, Checkpoint, Job, JobEvent, Model
from app.core.storage import get_storage
from tests.support.factories import committed_job
from worker import outcomes, runner
from worker.lease import Lease
from worker.reporting import DatabaseReporter
from worker.runner import claim
from worker.training.loop import FitResult
from worker.training.spec import TrainSpec


def _row(job_id: str, epoch: int, *, resume: bool) -> dict[str, Any]:
    """An epoch's checkpoint row as the reporter writes it (its files are not needed here)."""
    tag = f"epoch-{epoch:04d}-a1.safetensors"
    return {
        "id": new_id("ckpt"),
        "job_id": job_id,
        "epoch": epoch,
        "metrics": {"train_loss": 0.5},
        "size_bytes": 1,
        "sha256": "0" * 64,
        "storage_key": f"jobs/{job_id}/checkpoints/{tag}",
        "resume_key": f"jobs/{job_id}/state/{tag}" if resume else None,
        "tenant_id": LOCAL_TENANT,
    }


class _LostAnswer(DatabaseReporter):
    """Every write runs twice, as when a COMMIT lands but its answer is lost and
    `retrying` runs the transaction again."""

    def write(self, change: Any) -> None:
        super().write(change)
        super().write(change)


def test_an_epoch_commit_retried_after_a_lost_answer_lands_once(
    pg_url: str, tmp_path: Path
) -> None:
    settings = Settings(data_dir=tmp_path, database_url=pg_url)
    with committed_job(pg_url) as (sessions, job):
        with sessions() as session:
            assert claim(session, settings, job.id) == 1
        spec = TrainSpec(backbone="resnet18", classes=("a", "b"), epochs=3)
        lease = Lease(sessions, job.id, 1, settings.lease_s)
        reporter = _LostAnswer(sessions, get_storage(settings), lease, spec, 60, 60)
        reporter.on_step(1, 7, 7)  # the epoch's last step; no progress write yet (60 s)
        reporter._commit(_row(job.id, 1, resume=True))
        with sessions() as session:
            count = select(func.count()).select_from(Checkpoint).where(Checkpoint.job_id == job.id)
            assert session.scalar(count) == 1
            types = session.scalars(
                select(JobEvent.type).where(JobEvent.job_id == job.id, JobEvent.type != "status")
            )
            assert sorted(types) == ["checkpoint", "epoch"]
            row = session.get(Job, job.id)
            assert row is not None
            # After the epoch: its steps are all done, not reset to 0 of 0.
            assert row.progress == {
                "epoch": 1,
                "epochs": 3,
                "step": 7,
                "steps": 7,
                "fraction": round(1 / 3, 4),
            }


def test_a_success_retried_after_a_lost_answer_keeps_its_one_model(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(data_dir=tmp_path, database_url=pg_url)
    storage = get_storage(settings)
    with committed_job(pg_url) as (sessions, job):
        with sessions() as session:
            assert claim(session, settings, job.id) == 1
        spec = TrainSpec(backbone="resnet18", classes=("a", "b"), epochs=1)
        lease = Lease(sessions, job.id, 1, settings.lease_s)
        reporter = DatabaseReporter(sessions, storage, lease, spec, 60, 60)
        reporter.final = _row(job.id, 1, resume=False)  # written, committed with the success
        metrics = {"epoch": 1, "train_loss": 0.5, "val_accuracy": 0.9}
        result = FitResult(best_epoch=1, best_metrics=metrics, history=[metrics])
        # The COMMIT lands, its answer is lost, and `retrying` runs the transaction again.
        monkeypatch.setattr(runner, "retrying", lambda write: [write(), write()][-1])
        model_id = outcomes.record_success(lease, storage, spec, result, reporter)
        with sessions() as session:
            ended = session.get(Job, job.id)
            assert ended is not None and ended.status == "succeeded"
            assert model_id is not None and ended.model_id == model_id
            models = select(func.count()).select_from(Model).where(Model.job_id == job.id)
            assert session.scalar(models) == 1
