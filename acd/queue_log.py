"""Where the ACD's queue events and agent states are kept (SQLite or PostgreSQL).

``queue_log`` follows Asterisk's queue_log: one row per event (``ENTERQUEUE``, ``CONNECT``,
``ABANDON``, ``PAUSE``, ...), with up to five data fields as text (their meaning per event is in
``acd/engine.py``). ``agent_states`` holds one row per agent so logins, breaks and wrap-ups
survive a restart: ``AgentStateStore.save(acd.snapshot())`` and
``acd.restore(AgentStateStore.load(), now)``.

The engine's times are float seconds; the stores read them as Unix time (pass ``to_datetime``
/ ``from_datetime`` for another clock).
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable, Iterable

from sqlalchemy import BigInteger, Index, Integer, String, delete, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Mapped, mapped_column

from provisioning.db import Base, UTCDateTime, session_factory

from .engine import AgentStateRow, QueueEvent

__all__ = ["QueueLogEntry", "AgentStateRecord", "QueueLogRecord", "QueueLogStore", "AgentStateStore"]

DATA_FIELDS = 5
DATA_LENGTH = 255


def epoch_to_datetime(t: float) -> datetime:
    return datetime.fromtimestamp(t, timezone.utc)


def datetime_to_epoch(d: datetime) -> float:
    return d.timestamp()


class QueueLogEntry(Base):
    __tablename__ = "queue_log"
    __table_args__ = (Index("ix_queue_log_time", "time"), Index("ix_queue_log_call_id", "call_id"),
                      Index("ix_queue_log_queue_time", "queue", "time"), Index("ix_queue_log_agent_time", "agent", "time"))

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"), primary_key=True)
    time: Mapped[datetime] = mapped_column(UTCDateTime())
    call_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    queue: Mapped[str | None] = mapped_column(String(32), nullable=True)
    agent: Mapped[str | None] = mapped_column(String(32), nullable=True)
    event: Mapped[str] = mapped_column(String(32))
    data1: Mapped[str | None] = mapped_column(String(DATA_LENGTH), nullable=True)
    data2: Mapped[str | None] = mapped_column(String(DATA_LENGTH), nullable=True)
    data3: Mapped[str | None] = mapped_column(String(DATA_LENGTH), nullable=True)
    data4: Mapped[str | None] = mapped_column(String(DATA_LENGTH), nullable=True)
    data5: Mapped[str | None] = mapped_column(String(DATA_LENGTH), nullable=True)


class AgentStateRecord(Base):
    __tablename__ = "agent_states"

    agent_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    state: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(String(64), nullable=True)
    since: Mapped[datetime] = mapped_column(UTCDateTime())
    missed: Mapped[int] = mapped_column(Integer(), default=0)


@dataclass(frozen=True)
class QueueLogRecord:
    id: int
    time: datetime
    call_id: str | None
    queue: str | None
    agent: str | None
    event: str
    data: tuple[str, ...]       # data1..data5, trailing empty fields dropped


def _text(value) -> str:
    if isinstance(value, float):
        text = f"{value:.3f}".rstrip("0").rstrip(".")
        return text or "0"
    return "" if value is None else str(value)


class QueueLogStore:
    def __init__(self, engine: Engine, to_datetime: Callable[[float], datetime] = epoch_to_datetime):
        self._sessions = session_factory(engine)
        self._to_datetime = to_datetime

    def append(self, events: Iterable[QueueEvent]) -> int:
        """Write events (``acd.drain_events()``) in one transaction; returns how many."""
        rows = []
        for e in events:
            data = [_text(v)[:DATA_LENGTH] for v in e.data[:DATA_FIELDS]]
            data += [None] * (DATA_FIELDS - len(data))
            rows.append(QueueLogEntry(time=self._to_datetime(e.time), call_id=e.call_id, queue=e.queue,
                                      agent=e.agent, event=e.event, data1=data[0], data2=data[1], data3=data[2],
                                      data4=data[3], data5=data[4]))
        if rows:
            with self._sessions.begin() as s:
                s.add_all(rows)
        return len(rows)

    def list(self, *, call_id: str | None = None, queue: str | None = None, agent: str | None = None,
             event: str | None = None, since: datetime | None = None, until: datetime | None = None,
             limit: int | None = 1000) -> list[QueueLogRecord]:
        """Entries in the order they were written (oldest first), filtered."""
        q = select(QueueLogEntry)
        for column, value in ((QueueLogEntry.call_id, call_id), (QueueLogEntry.queue, queue),
                              (QueueLogEntry.agent, agent), (QueueLogEntry.event, event)):
            if value is not None:
                q = q.where(column == value)
        if since is not None:
            q = q.where(QueueLogEntry.time >= since)
        if until is not None:
            q = q.where(QueueLogEntry.time < until)
        q = q.order_by(QueueLogEntry.id)
        if limit is not None:
            q = q.limit(limit)
        with self._sessions() as s:
            return [self._record(r) for r in s.scalars(q)]

    @staticmethod
    def _record(r: QueueLogEntry) -> QueueLogRecord:
        data = [r.data1, r.data2, r.data3, r.data4, r.data5]
        while data and data[-1] is None:
            data.pop()
        return QueueLogRecord(r.id, r.time, r.call_id, r.queue, r.agent, r.event, tuple(d or "" for d in data))


class AgentStateStore:
    def __init__(self, engine: Engine, to_datetime: Callable[[float], datetime] = epoch_to_datetime,
                 from_datetime: Callable[[datetime], float] = datetime_to_epoch):
        self._sessions = session_factory(engine)
        self._to_datetime, self._from_datetime = to_datetime, from_datetime

    def save(self, rows: Iterable[AgentStateRow]) -> None:
        """Replace the stored states with ``rows`` (``acd.snapshot()``)."""
        with self._sessions.begin() as s:
            s.execute(delete(AgentStateRecord))
            s.add_all(AgentStateRecord(agent_id=r.agent_id, state=r.state, reason=r.reason,
                                       since=self._to_datetime(r.since), missed=r.missed) for r in rows)

    def load(self) -> list[AgentStateRow]:
        with self._sessions() as s:
            return [AgentStateRow(r.agent_id, r.state, r.reason, self._from_datetime(r.since), r.missed)
                    for r in s.scalars(select(AgentStateRecord).order_by(AgentStateRecord.agent_id))]
