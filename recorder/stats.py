"""Capacity: storage used now and projected from the site's yearly call volume."""
from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select

from . import archive as ar
from .models import Recording
from .retention import RecordingPolicy
from .store import Recorder

# archive bytes per second of audio: 16,000 B/s of PCM + 20 bytes per 1 MiB chunk (length + tag)
BYTES_PER_SECOND = ar.RATE * ar.WIDTH * (1 + 20 / (1 << 20))


@dataclass(frozen=True)
class Stats:
    recordings: int
    bytes_used: int
    seconds: float
    average_seconds: float
    average_from: str               # "stored recordings" | "recording.toml" | "default"
    yearly_calls: int | None
    yearly_bytes: int | None
    retention: str
    retained_months: float | None   # how many months of recordings are kept at once
    steady_state_bytes: int | None

    def lines(self) -> list[str]:
        gb = lambda b: f"{b / 1e9:,.2f} GB"   # noqa: E731
        out = [f"recordings: {self.recordings:,} ({self.seconds / 3600:,.1f} h of audio)",
               f"storage used: {gb(self.bytes_used)}",
               f"average call: {self.average_seconds:,.0f} s ({self.average_from})",
               f"retention: {self.retention}"]
        if self.yearly_calls is not None:
            out.append(f"projection: {self.yearly_calls:,} calls/year -> {gb(self.yearly_bytes)} per year")
            if self.steady_state_bytes is not None:
                out.append(f"kept at once (about {self.retained_months:g} months): {gb(self.steady_state_bytes)}")
        else:
            out.append("projection: set yearly_calls in <site>/recording.toml")
        return out


def retained_months(retention: str) -> float | None:
    """Average age span of the kept recordings under a retention class (upper bound)."""
    if retention == "end-of-next-month":
        return 2.0              # up to ~2 months (a recording from the 1st is kept ~2 months)
    if retention.endswith("-months"):
        return float(retention.split("-")[0])
    if retention.endswith("-days"):
        return int(retention.split("-")[0]) / 30.44
    return None


def compute_stats(recorder: Recorder, policy: RecordingPolicy | None = None) -> Stats:
    policy = policy or recorder.policy
    with recorder.sessions() as s:
        n, size, secs = s.execute(select(func.count(), func.coalesce(func.sum(Recording.size), 0),
                                         func.coalesce(func.sum(Recording.duration), 0.0))
                                  .where(Recording.status == "archived")).one()
    if n:
        avg, src = float(secs) / n, "stored recordings"
    else:
        avg, src = policy.average_call_seconds, "recording.toml or default"
    yearly = policy.yearly_calls
    ybytes = int(yearly * avg * BYTES_PER_SECOND) if yearly is not None else None
    months = retained_months(policy.retention)
    steady = int(ybytes * months / 12) if ybytes is not None and months is not None else None
    return Stats(int(n), int(size), float(secs), avg, src, yearly, ybytes, policy.retention, months, steady)
