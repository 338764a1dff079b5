"""Callers waiting for an operator, sans I/O: who is next, and how long the queues are.

Order: higher priority first (disaster-line calls in disaster mode), then first come, first
served. The congestion monitor reads ``stats()``.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(order=True)
class Waiter:
    sort_key: tuple = field(init=False, repr=False)
    call_id: str = field(compare=False)
    skills: frozenset[str] = field(compare=False)
    priority: int = field(compare=False)
    since: float = field(compare=False)

    def __post_init__(self):
        self.sort_key = (-self.priority, self.since, self.call_id)


@dataclass
class WaitingList:
    waiters: dict[str, Waiter] = field(default_factory=dict)

    def add(self, call_id: str, skills, priority: int, since: float) -> None:
        self.waiters[call_id] = Waiter(call_id, frozenset(skills), priority, since)

    def remove(self, call_id: str) -> None:
        self.waiters.pop(call_id, None)

    def is_next(self, call_id: str, agent_skills: frozenset[str]) -> bool:
        """True when no caller that this operator could serve is ahead of ``call_id``."""
        me = self.waiters[call_id]
        return not any(w.sort_key < me.sort_key and w.skills <= agent_skills for w in self.waiters.values())

    def stats(self, now: float) -> tuple[int, float]:
        """(callers waiting, longest wait in seconds)."""
        if not self.waiters:
            return 0, 0.0
        return len(self.waiters), now - min(w.since for w in self.waiters.values())
