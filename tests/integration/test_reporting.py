"""An epoch's commit by the job's reporter: idempotent across a lost answer, progress whole."""

from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from app.core.config import Settings
from app.core.ids import new_id
from app.core.models import LOCAL_TENANT, Checkpoint, Job, JobEvent
from app.core.storage import get_storage
from tests.support.factories import committed_job
from worker.lease import Lease
from worker.reporting import DatabaseReporter
from worker.runner import claim
from worker.training.spec import TrainSpec


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
        key = f"jobs/{job.id}/checkpoints/epoch-0001-a1.safetensors"
        reporter._commit(
            {
                "id": new_id("ckpt"),
                "job_id": job.id,
                "epoch": 1,
                "metrics": {"train_loss": 0.5},
                "size_bytes": 1,
                "sha256": "0" * 64,
                "storage_key": key,
                "resume_key": f"jobs/{job.id}/state/epoch-0001-a1.safetensors",
                "tenant_id": LOCAL_TENANT,
            }
        )
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
