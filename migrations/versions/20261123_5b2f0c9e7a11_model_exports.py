"""model exports (ONNX, TorchScript) and their equivalence checks

Revision ID: 5b2f0c9e7a11
Revises: 156e664daa4f
Create Date: 2026-11-23 13:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "5b2f0c9e7a11"
down_revision: str | None = "156e664daa4f"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("model") as batch:
        batch.add_column(sa.Column("exports", JSON, server_default="{}", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("model") as batch:
        batch.drop_column("exports")
