"""mode_changes: service mode switches (who, when, why)

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "mode_changes",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("kind", sa.String(16), nullable=False),        # mode | congestion
        sa.Column("value", sa.String(16), nullable=False),       # normal|emergency|disaster | on|off
        sa.Column("set_by", sa.String(64), nullable=False),
        sa.Column("set_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reason", sa.String(255), nullable=True),
    )
    op.create_index("ix_mode_changes_kind_id", "mode_changes", ["kind", "id"])


def downgrade() -> None:
    op.drop_index("ix_mode_changes_kind_id", table_name="mode_changes")
    op.drop_table("mode_changes")
