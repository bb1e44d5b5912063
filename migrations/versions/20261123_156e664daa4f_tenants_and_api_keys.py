"""tenants and api keys

Revision ID: 156e664daa4f
Revises: 1265dc7166fb
Create Date: 2026-11-23 11:59:04.779036
"""

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

LOCAL_TENANT = "tn_local"
TENANT_TABLES = ("dataset", "job", "job_event", "checkpoint", "model")
JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")

revision: str = "156e664daa4f"
down_revision: str | None = "1265dc7166fb"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    tenant = op.create_table(
        "tenant",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tenant")),
        sa.UniqueConstraint("name", name=op.f("uq_tenant_name")),
    )
    # Everything that existed before tenants belongs to the implicit local tenant.
    op.bulk_insert(tenant, [{"id": LOCAL_TENANT, "name": "local", "created_at": datetime.now(UTC)}])
    op.create_table(
        "api_key",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("tenant_id", sa.String(length=40), nullable=False),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenant.id"],
            name=op.f("fk_api_key_tenant_id_tenant"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_key")),
        sa.UniqueConstraint("prefix", name=op.f("uq_api_key_prefix")),
    )
    op.create_index(op.f("ix_api_key_tenant_id"), "api_key", ["tenant_id"], unique=False)
    for table in TENANT_TABLES:
        with op.batch_alter_table(table) as batch:
            batch.add_column(
                sa.Column(
                    "tenant_id", sa.String(length=40), server_default=LOCAL_TENANT, nullable=False
                )
            )
            batch.create_index(op.f(f"ix_{table}_tenant_id"), ["tenant_id"], unique=False)
            batch.create_foreign_key(
                op.f(f"fk_{table}_tenant_id_tenant"),
                "tenant",
                ["tenant_id"],
                ["id"],
                ondelete="CASCADE",
            )
        with op.batch_alter_table(table) as batch:  # the default only backfilled existing rows
            batch.alter_column("tenant_id", server_default=None)
    with op.batch_alter_table("dataset") as batch:
        batch.add_column(sa.Column("report", JSON, server_default="{}", nullable=False))
    with op.batch_alter_table("job") as batch:
        batch.drop_constraint(op.f("uq_job_idempotency_key"), type_="unique")
        batch.create_unique_constraint(
            "uq_job_tenant_id_idempotency_key", ["tenant_id", "idempotency_key"]
        )


def downgrade() -> None:
    with op.batch_alter_table("job") as batch:
        batch.drop_constraint("uq_job_tenant_id_idempotency_key", type_="unique")
        batch.create_unique_constraint(op.f("uq_job_idempotency_key"), ["idempotency_key"])
    with op.batch_alter_table("dataset") as batch:
        batch.drop_column("report")
    for table in reversed(TENANT_TABLES):
        with op.batch_alter_table(table) as batch:
            batch.drop_constraint(op.f(f"fk_{table}_tenant_id_tenant"), type_="foreignkey")
            batch.drop_index(op.f(f"ix_{table}_tenant_id"))
            batch.drop_column("tenant_id")
    op.drop_index(op.f("ix_api_key_tenant_id"), table_name="api_key")
    op.drop_table("api_key")
    op.drop_table("tenant")
