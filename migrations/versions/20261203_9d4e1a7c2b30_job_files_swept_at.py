"""job.files_swept_at: when the sweep of stored files no row names last checked the job

Revision ID: 9d4e1a7c2b30
Revises: 5b2f0c9e7a11
Create Date: 2026-12-03 08:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "9d4e1a7c2b30"
down_revision: str | None = "5b2f0c9e7a11"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Null for every existing job: the first sweeps check the jobs that ended before it.
    op.add_column("job", sa.Column("files_swept_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("job") as batch:
        batch.drop_column("files_swept_at")
