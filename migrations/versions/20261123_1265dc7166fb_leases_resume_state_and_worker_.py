"""leases, resume state and worker heartbeats

Revision ID: 1265dc7166fb
Revises: eff0c4c3f8c6
Create Date: 2026-11-23 11:39:51.882604
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "1265dc7166fb"
down_revision: str | None = "eff0c4c3f8c6"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "worker",
        sa.Column("id", sa.String(length=200), nullable=False),
        sa.Column("queues", sa.String(length=200), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_worker")),
    )
    op.create_index(op.f("ix_worker_last_seen_at"), "worker", ["last_seen_at"], unique=False)
    op.add_column("checkpoint", sa.Column("resume_key", sa.String(length=300), nullable=True))
    op.add_column("job", sa.Column("released", sa.Integer(), server_default="0", nullable=False))
    op.add_column("job", sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("job", sa.Column("enqueued_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    op.drop_column("job", "enqueued_at")
    op.drop_column("job", "lease_expires_at")
    op.drop_column("job", "released")
    op.drop_column("checkpoint", "resume_key")
    op.drop_index(op.f("ix_worker_last_seen_at"), table_name="worker")
    op.drop_table("worker")
