"""Tables of the recording store (migration 0004_recordings).

No foreign key points from the audit, deletion or plan tables to ``recordings``: those rows
must outlive the recordings they are about. Transcripts are deleted with their recording
(ON DELETE CASCADE, and explicitly by the purge).
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import (BigInteger, Boolean, Float, ForeignKey, Index, Integer, LargeBinary, String,
                        UniqueConstraint)
from sqlalchemy.orm import Mapped, mapped_column

from provisioning.db import Base, UTCDateTime

_ID = BigInteger().with_variant(Integer(), "sqlite")

STATUSES = (
    "pending",    # claimed by a finalizer; the archive is not written (or not confirmed) yet
    "archived",   # encrypted archive in place, sha256 and key id known
    "missing",    # the row exists but no audio survives (flagged by reconcile)
    "damaged",    # the archive fails verification (flagged by reconcile)
    "deleting",   # a purge removes it (reconcile finishes an interrupted deletion)
)
ROLES = ("admin", "supervisor", "operator")
DIRECTIONS = ("in", "out")


class Recording(Base):
    __tablename__ = "recordings"
    __table_args__ = (Index("ix_recordings_started_at", "started_at"), Index("ix_recordings_status", "status"))

    id: Mapped[int] = mapped_column(_ID, primary_key=True)
    reception_no: Mapped[str] = mapped_column(String(20), unique=True)    # 受付番号 YYYYMMDD-NNNNNN
    call_id: Mapped[str] = mapped_column(String(64), unique=True)         # PBX uniqueid
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    duration: Mapped[float | None] = mapped_column(Float())               # seconds of audio
    operators: Mapped[str | None] = mapped_column(String(255))            # "op1001,op1002"
    queue: Mapped[str | None] = mapped_column(String(32))
    direction: Mapped[str] = mapped_column(String(8))                     # in | out
    language: Mapped[str | None] = mapped_column(String(8))
    retention_class: Mapped[str] = mapped_column(String(32))
    sha256: Mapped[str | None] = mapped_column(String(64))                # of the archived (plain) WAV
    key_id: Mapped[str | None] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(String(255))                        # relative to the archive folder
    size: Mapped[int | None] = mapped_column(BigInteger())                # archive bytes
    status: Mapped[str] = mapped_column(String(16))
    legal_hold: Mapped[bool] = mapped_column(Boolean(), default=False)
    hold_reason: Mapped[str | None] = mapped_column(String(255))
    note: Mapped[str | None] = mapped_column(String(255))                 # reconcile flags
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    archived_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class ReceptionCounter(Base):
    """Last reception number handed out per site-local day."""
    __tablename__ = "reception_counters"

    day: Mapped[str] = mapped_column(String(8), primary_key=True)        # YYYYMMDD
    last: Mapped[int] = mapped_column(Integer())


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(_ID, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))                         # admin | supervisor | operator
    enabled: Mapped[bool] = mapped_column(Boolean(), default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    created_by: Mapped[str | None] = mapped_column(String(64))


class RecordingAccess(Base):
    """The audit trail: every search result, playback, export, purge step, refused or not."""
    __tablename__ = "recording_access"
    __table_args__ = (Index("ix_recording_access_at", "at"),)

    id: Mapped[int] = mapped_column(_ID, primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    user: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(16))
    reception_no: Mapped[str | None] = mapped_column(String(20))
    allowed: Mapped[bool] = mapped_column(Boolean())
    detail: Mapped[str | None] = mapped_column(String(255))


class PurgePlan(Base):
    __tablename__ = "purge_plans"

    id: Mapped[int] = mapped_column(_ID, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    created_by: Mapped[str] = mapped_column(String(64))
    as_of: Mapped[datetime] = mapped_column(UTCDateTime())                # the clock the plan was made with
    approvers_needed: Mapped[int] = mapped_column(Integer())
    status: Mapped[str] = mapped_column(String(16))                      # open | executed
    executed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class PurgePlanItem(Base):
    __tablename__ = "purge_plan_items"
    __table_args__ = (UniqueConstraint("plan_id", "reception_no", name="uq_purge_plan_items"),)

    id: Mapped[int] = mapped_column(_ID, primary_key=True)
    plan_id: Mapped[int] = mapped_column(_ID, ForeignKey("purge_plans.id", ondelete="CASCADE"))
    reception_no: Mapped[str] = mapped_column(String(20))
    call_id: Mapped[str] = mapped_column(String(64))
    due_at: Mapped[datetime] = mapped_column(UTCDateTime())
    outcome: Mapped[str | None] = mapped_column(String(16))              # deleted | held | gone | not-due


class PurgeApproval(Base):
    __tablename__ = "purge_approvals"
    __table_args__ = (UniqueConstraint("plan_id", "approved_by", name="uq_purge_approvals"),)

    id: Mapped[int] = mapped_column(_ID, primary_key=True)
    plan_id: Mapped[int] = mapped_column(_ID, ForeignKey("purge_plans.id", ondelete="CASCADE"))
    approved_by: Mapped[str] = mapped_column(String(64))
    approved_at: Mapped[datetime] = mapped_column(UTCDateTime())


class RecordingDeletion(Base):
    """One row per deleted recording (kept after the recording is gone)."""
    __tablename__ = "recording_deletions"

    id: Mapped[int] = mapped_column(_ID, primary_key=True)
    deleted_at: Mapped[datetime] = mapped_column(UTCDateTime())
    reception_no: Mapped[str] = mapped_column(String(20))
    call_id: Mapped[str] = mapped_column(String(64))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    sha256: Mapped[str | None] = mapped_column(String(64))
    plan_id: Mapped[int | None] = mapped_column(_ID)
    approved_by: Mapped[str] = mapped_column(String(255))
    reason: Mapped[str] = mapped_column(String(64))


class RecordingTranscript(Base):
    """Transcript text, encrypted with the recording key ring (same chunked format as the audio)."""
    __tablename__ = "recording_transcripts"

    recording_id: Mapped[int] = mapped_column(_ID, ForeignKey("recordings.id", ondelete="CASCADE"),
                                              primary_key=True)
    key_id: Mapped[str] = mapped_column(String(64))
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary())
    model: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
