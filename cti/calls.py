"""The call log: one row per inbound call, written by the AGI/AMI side.

The caller's number is personal data that the city wants kept to a minimum (requirements
§1.15, [000:L860]; the reception number is not the phone number [001:No.112]), so it is never
stored: only an HMAC with a site key, which still lets later code spot repeat callers.
"""
from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass, fields as dc_fields
from datetime import datetime, timezone

from sqlalchemy import BigInteger, DateTime, Index, Integer, String, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, mapped_column

from provisioning.db import Base, UTCDateTime, session_factory

# How a call ended. dialplan.flow produces only these; the store refuses anything else.
OUTCOMES = (
    "answered",      # an operator took the call
    "abandoned",     # the caller hung up before being served (menu, queue or ringing)
    "unanswered",    # no operator within the queue's max_wait
    "message",       # an information message was played, then the call ended
    "transferred",   # connected to a city department over the OD trunk
    "failed",        # a transfer or the PBX failed
    "closed",        # outside opening hours
    "misrouted",     # a number this site does not publish
    "no_input",      # the caller never chose a valid option
    "completed",     # the caller chose to end the call
    "suspended",     # emergency stop: the service-suspended message was played
)


class Call(Base):
    __tablename__ = "calls"
    __table_args__ = (Index("ix_calls_started_at", "started_at"), Index("ix_calls_caller_hash", "caller_hash"))

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"), primary_key=True)
    call_id: Mapped[str] = mapped_column(String(64), unique=True)     # PBX uniqueid
    channel: Mapped[str] = mapped_column(String(128))
    dialed: Mapped[str] = mapped_column(String(16))                   # published number
    caller_hash: Mapped[str | None] = mapped_column(String(64))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    answered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    ivr_path: Mapped[str | None] = mapped_column(String(255))         # main>1>general
    language: Mapped[str | None] = mapped_column(String(8))
    queue: Mapped[str | None] = mapped_column(String(32))
    agent: Mapped[str | None] = mapped_column(String(32))
    outcome: Mapped[str | None] = mapped_column(String(16))
    hangup_cause: Mapped[str | None] = mapped_column(String(64))


@dataclass(frozen=True)
class CallRecord:
    """A read-only snapshot of a row (ORM objects would silently accept edits that go nowhere)."""
    id: int
    call_id: str
    channel: str
    dialed: str
    caller_hash: str | None
    started_at: datetime
    answered_at: datetime | None
    ended_at: datetime | None
    ivr_path: str | None
    language: str | None
    queue: str | None
    agent: str | None
    outcome: str | None
    hangup_cause: str | None

    @classmethod
    def of(cls, row: Call) -> "CallRecord":
        return cls(**{f.name: getattr(row, f.name) for f in dc_fields(cls)})


_UPDATABLE = {"channel", "answered_at", "ended_at", "ivr_path", "language", "queue", "agent", "outcome",
              "hangup_cause"}
_TIMES = {"started_at", "answered_at", "ended_at"}


def _check(name: str, value):
    if value is None:
        return
    if name in _TIMES:
        if not isinstance(value, datetime) or value.tzinfo is None:
            raise ValueError(f"{name} must be a timezone-aware datetime")
        return
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string")
    limit = Call.__table__.c[name].type.length
    if len(value) > limit:
        raise ValueError(f"{name} is longer than {limit} characters")
    if name == "outcome" and value not in OUTCOMES:
        raise ValueError(f"outcome must be one of {', '.join(OUTCOMES)}")


def _now() -> datetime:
    return datetime.now(timezone.utc)


class CallStore:
    def __init__(self, engine: Engine, caller_key: bytes | None = None):
        if caller_key is not None and len(caller_key) < 16:
            raise ValueError("caller_key must be at least 16 bytes")
        self._sessions = session_factory(engine)
        self._key = caller_key

    def caller_hash(self, caller: str | None) -> str | None:
        """HMAC-SHA256 of the normalised number; None without a key or for anonymous callers."""
        if self._key is None or not caller:
            return None
        digits = re.sub(r"\D", "", caller)
        if caller.strip().startswith("+81"):
            digits = "0" + digits[2:]
        if not digits:            # "anonymous", "unknown", withheld
            return None
        return hmac.new(self._key, digits.encode(), hashlib.sha256).hexdigest()

    def start(self, call_id: str, dialed: str, channel: str, caller: str | None = None,
              started_at: datetime | None = None) -> CallRecord:
        values = {"call_id": call_id, "dialed": dialed, "channel": channel, "started_at": started_at or _now()}
        for k, v in values.items():
            if v is None or v == "":
                raise ValueError(f"{k} is required")
            _check(k, v)
        row = Call(caller_hash=self.caller_hash(caller), **values)
        try:
            with self._sessions.begin() as s:
                s.add(row)
        except IntegrityError:
            raise ValueError(f"call {call_id!r} already exists") from None
        return CallRecord.of(row)

    def update(self, call_id: str, **fields) -> CallRecord:
        unknown = set(fields) - _UPDATABLE
        if unknown:
            raise TypeError(f"cannot update {', '.join(sorted(unknown))}")
        for k, v in fields.items():
            _check(k, v)
        with self._sessions.begin() as s:
            row = s.scalars(select(Call).where(Call.call_id == call_id).with_for_update()).one_or_none()
            if row is None:
                raise KeyError(call_id)
            for k, v in fields.items():
                setattr(row, k, v)
        return CallRecord.of(row)

    def finish(self, call_id: str, outcome: str, hangup_cause: str | None = None,
               ended_at: datetime | None = None) -> CallRecord:
        return self.update(call_id, outcome=outcome, hangup_cause=hangup_cause, ended_at=ended_at or _now())

    def get(self, call_id: str) -> CallRecord | None:
        with self._sessions() as s:
            row = s.scalars(select(Call).where(Call.call_id == call_id)).one_or_none()
            return CallRecord.of(row) if row else None

    def list(self, limit: int = 100) -> list[CallRecord]:
        """Newest first."""
        if not 0 < limit <= 10_000:
            raise ValueError("limit must be 1-10000")
        with self._sessions() as s:
            rows = s.scalars(select(Call).order_by(Call.started_at.desc(), Call.id.desc()).limit(limit))
            return [CallRecord.of(r) for r in rows]
