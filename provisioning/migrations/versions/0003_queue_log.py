"""queue_log and agent_states: the ACD's event log and agent states across restarts

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "queue_log",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("call_id", sa.String(64), nullable=True),
        sa.Column("queue", sa.String(32), nullable=True),
        sa.Column("agent", sa.String(32), nullable=True),
        sa.Column("event", sa.String(32), nullable=False),      # ENTERQUEUE, CONNECT, ABANDON, PAUSE, ...
        sa.Column("data1", sa.String(255), nullable=True),
        sa.Column("data2", sa.String(255), nullable=True),
        sa.Column("data3", sa.String(255), nullable=True),
        sa.Column("data4", sa.String(255), nullable=True),
        sa.Column("data5", sa.String(255), nullable=True),
    )
    op.create_index("ix_queue_log_time", "queue_log", ["time"])
    op.create_index("ix_queue_log_call_id", "queue_log", ["call_id"])
    op.create_index("ix_queue_log_queue_time", "queue_log", ["queue", "time"])
    op.create_index("ix_queue_log_agent_time", "queue_log", ["agent", "time"])
    op.create_table(
        "agent_states",
        sa.Column("agent_id", sa.String(32), primary_key=True),
        sa.Column("state", sa.String(16), nullable=False),      # logged_out|available|ringing|on_call|wrap_up|break
        sa.Column("reason", sa.String(64), nullable=True),      # break reason, or the queue of the last call
        sa.Column("since", sa.DateTime(timezone=True), nullable=False),
        sa.Column("missed", sa.Integer(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("agent_states")
    for name in ("ix_queue_log_agent_time", "ix_queue_log_queue_time", "ix_queue_log_call_id", "ix_queue_log_time"):
        op.drop_index(name, table_name="queue_log")
    op.drop_table("queue_log")
