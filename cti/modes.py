"""The service-mode log: every switch (who, when, why), and the current state derived from it.

Switching happens from the CLI (or the supervisor page later) in another process; the FastAGI
server re-reads the log at the start of each call (``refresh``), so a switch applies from the
next call on, with no restart.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import BigInteger, Index, Integer, String, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Mapped, mapped_column

from dialplan.modes import MODES, ServiceState
from provisioning.db import Base, UTCDateTime, session_factory

REFRESH_SECONDS = 1.0   # calls within this of the last read reuse it


class ModeChange(Base):
    __tablename__ = "mode_changes"
    __table_args__ = (Index("ix_mode_changes_kind_id", "kind", "id"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))       # mode | congestion
    value: Mapped[str] = mapped_column(String(16))      # normal|emergency|disaster | on|off
    set_by: Mapped[str] = mapped_column(String(64))
    set_at: Mapped[datetime] = mapped_column(UTCDateTime())
    reason: Mapped[str | None] = mapped_column(String(255), nullable=True)


@dataclass(frozen=True)
class ModeRecord:
    kind: str
    value: str
    set_by: str
    set_at: datetime
    reason: str | None


class ModeLog:
    def __init__(self, engine: Engine, clock=lambda: datetime.now(timezone.utc)):
        self._sessions = session_factory(engine)
        self._clock = clock
        self._lock = threading.Lock()
        self._state = ServiceState()
        self._read_at: float | None = None

    def set_mode(self, mode: str, *, by: str, reason: str | None = None, at: datetime | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}")
        self._add("mode", mode, by, reason, at)

    def set_congestion(self, on: bool, *, by: str, reason: str | None = None, at: datetime | None = None) -> None:
        self._add("congestion", "on" if on else "off", by, reason, at)

    def _add(self, kind, value, by, reason, at) -> None:
        if not by or len(by) > 64:
            raise ValueError("who made the change is required (1-64 characters)")
        if reason is not None and len(reason) > 255:
            raise ValueError("reason is limited to 255 characters")
        with self._sessions.begin() as s:
            s.add(ModeChange(kind=kind, value=value, set_by=by, set_at=at or self._clock(), reason=reason))
        self.refresh(force=True)

    def refresh(self, force: bool = False) -> ServiceState:
        """Re-read the current state (cheap: two indexed rows)."""
        import time
        now = time.monotonic()
        with self._lock:
            if not force and self._read_at is not None and now - self._read_at < REFRESH_SECONDS:
                return self._state
        with self._sessions() as s:
            last = {}
            for kind in ("mode", "congestion"):
                last[kind] = s.scalars(select(ModeChange).where(ModeChange.kind == kind)
                                       .order_by(ModeChange.id.desc()).limit(1)).one_or_none()
        mode = last["mode"].value if last["mode"] else "normal"
        state = ServiceState(mode=mode, congestion=bool(last["congestion"] and last["congestion"].value == "on"),
                             disaster_since=last["mode"].set_at if mode == "disaster" else None)
        with self._lock:
            self._state, self._read_at = state, now
        return state

    def state(self) -> ServiceState:
        return self._state

    def history(self, limit: int = 50) -> list[ModeRecord]:
        with self._sessions() as s:
            rows = s.scalars(select(ModeChange).order_by(ModeChange.id.desc()).limit(limit)).all()
            return [ModeRecord(r.kind, r.value, r.set_by, r.set_at, r.reason) for r in rows]
