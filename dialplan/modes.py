"""Service modes, sans I/O: what the center is doing right now and what that means for a call.

* ``normal``
* ``emergency``: service stopped; every caller hears the suspension message [000:L414-420].
* ``disaster``: disaster calls go first; 24-hour service for the first 72 hours after
  activation, then the normal hours again [000:L1513-1552].
* congestion is a flag on top of any mode: callers hear the congestion message before they
  queue. It is switched by hand or by ``CongestionMonitor`` when the queues pass a threshold.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

MODES = ("normal", "emergency", "disaster")
DISASTER_ROUND_THE_CLOCK = timedelta(hours=72)


@dataclass(frozen=True)
class ServiceState:
    mode: str = "normal"
    congestion: bool = False
    disaster_since: datetime | None = None

    def round_the_clock(self, now: datetime) -> bool:
        """Disaster mode's first 72 hours: open whatever the calendar says."""
        return (self.mode == "disaster" and self.disaster_since is not None
                and now - self.disaster_since < DISASTER_ROUND_THE_CLOCK)


@dataclass
class CongestionMonitor:
    """Enter congestion when the waiting callers or the oldest wait pass a threshold; leave only
    when both are back under half of it, so the message does not flap on every call."""

    max_waiting: int = 10
    max_oldest_wait: float = 120.0
    congested: bool = False

    def observe(self, waiting: int, oldest_wait: float) -> bool | None:
        """The new congestion state when it changes, else None."""
        if not self.congested and (waiting >= self.max_waiting or oldest_wait >= self.max_oldest_wait):
            self.congested = True
            return True
        if self.congested and waiting <= self.max_waiting / 2 and oldest_wait <= self.max_oldest_wait / 2:
            self.congested = False
            return False
        return None
