"""recordings: full-call recording store, users and roles, access audit, purge plans, transcripts

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24
"""
import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def _id():
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "recordings",
        sa.Column("id", _id(), primary_key=True, autoincrement=True),
        sa.Column("reception_no", sa.String(20), nullable=False),
        sa.Column("call_id", sa.String(64), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("duration", sa.Float(), nullable=True),
        sa.Column("operators", sa.String(255), nullable=True),
        sa.Column("queue", sa.String(32), nullable=True),
        sa.Column("direction", sa.String(8), nullable=False),
        sa.Column("language", sa.String(8), nullable=True),
        sa.Column("retention_class", sa.String(32), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=True),
        sa.Column("key_id", sa.String(64), nullable=True),
        sa.Column("path", sa.String(255), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("legal_hold", sa.Boolean(), nullable=False),
        sa.Column("hold_reason", sa.String(255), nullable=True),
        sa.Column("note", sa.String(255), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("archived_at", sa.DateTime(timezone=True), nullable=True),
        sa.UniqueConstraint("reception_no", name="uq_recordings_reception_no"),
        sa.UniqueConstraint("call_id", name="uq_recordings_call_id"),
    )
    op.create_index("ix_recordings_started_at", "recordings", ["started_at"])
    op.create_index("ix_recordings_status", "recordings", ["status"])
    op.create_table(
        "reception_counters",
        sa.Column("day", sa.String(8), primary_key=True),
        sa.Column("last", sa.Integer(), nullable=False),
    )
    op.create_table(
        "users",
        sa.Column("id", _id(), primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(64), nullable=True),
        sa.UniqueConstraint("name", name="uq_users_name"),
    )
    op.create_table(
        "recording_access",
        sa.Column("id", _id(), primary_key=True, autoincrement=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("user", sa.String(64), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("reception_no", sa.String(20), nullable=True),
        sa.Column("allowed", sa.Boolean(), nullable=False),
        sa.Column("detail", sa.String(255), nullable=True),
    )
    op.create_index("ix_recording_access_at", "recording_access", ["at"])
    op.create_table(
        "purge_plans",
        sa.Column("id", _id(), primary_key=True, autoincrement=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(64), nullable=False),
        sa.Column("as_of", sa.DateTime(timezone=True), nullable=False),
        sa.Column("approvers_needed", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("executed_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_table(
        "purge_plan_items",
        sa.Column("id", _id(), primary_key=True, autoincrement=True),
        sa.Column("plan_id", _id(), sa.ForeignKey("purge_plans.id", ondelete="CASCADE"), nullable=False),
        sa.Column("reception_no", sa.String(20), nullable=False),
        sa.Column("call_id", sa.String(64), nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=True),
        sa.UniqueConstraint("plan_id", "reception_no", name="uq_purge_plan_items"),
    )
    op.create_table(
        "purge_approvals",
        sa.Column("id", _id(), primary_key=True, autoincrement=True),
        sa.Column("plan_id", _id(), sa.ForeignKey("purge_plans.id", ondelete="CASCADE"), nullable=False),
        sa.Column("approved_by", sa.String(64), nullable=False),
        sa.Column("approved_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("plan_id", "approved_by", name="uq_purge_approvals"),
    )
    op.create_table(
        "recording_deletions",
        sa.Column("id", _id(), primary_key=True, autoincrement=True),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reception_no", sa.String(20), nullable=False),
        sa.Column("call_id", sa.String(64), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=True),
        sa.Column("plan_id", _id(), nullable=True),
        sa.Column("approved_by", sa.String(255), nullable=False),
        sa.Column("reason", sa.String(64), nullable=False),
    )
    op.create_table(
        "recording_transcripts",
        sa.Column("recording_id", _id(), sa.ForeignKey("recordings.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("key_id", sa.String(64), nullable=False),
        sa.Column("ciphertext", sa.LargeBinary(), nullable=False),
        sa.Column("model", sa.String(255), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("recording_transcripts")
    op.drop_table("recording_deletions")
    op.drop_table("purge_approvals")
    op.drop_table("purge_plan_items")
    op.drop_table("purge_plans")
    op.drop_index("ix_recording_access_at", table_name="recording_access")
    op.drop_table("recording_access")
    op.drop_table("users")
    op.drop_table("reception_counters")
    op.drop_index("ix_recordings_status", table_name="recordings")
    op.drop_index("ix_recordings_started_at", table_name="recordings")
    op.drop_table("recordings")
