"""Value types and strict parsers shared by the site loader and the dialplan renderer.

Ids and numbers end up inside Asterisk dialplan and file names, so they are held to narrow
patterns here; anything else is free text that never reaches the PBX configuration.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, time

ID = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")              # menus, queues, agents, directory, site
PROMPT_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")    # prompt file stem
LANG = re.compile(r"^[a-z]{2,3}$")                        # ISO 639-1/-3
DIGITS = re.compile(r"^[0-9]{2,16}$")                     # extension / OD trunk digits
ENDPOINT = re.compile(r"^PJSIP/([a-z0-9][a-z0-9_-]{0,39})$")
NATIONAL = re.compile(r"^0[1-9][0-9]{8,9}$")              # Japanese national number, 10-11 digits



def normalize_number(text: str) -> str | None:
    """'022-398-4894', '0223984894', '+81223984894' -> '0223984894'; None if not a JP number."""
    s = re.sub(r"[\s-]", "", text)
    if s.startswith("+81"):
        s = "0" + s[3:]
    return s if NATIONAL.match(s) else None


def e164(national: str) -> str:
    return "+81" + national[1:]


@dataclass(frozen=True)
class TimeRange:
    """Opening window within one day, in minutes since midnight (end may be 24:00)."""
    start: int
    end: int

    def __contains__(self, t: time) -> bool:
        return self.start <= t.hour * 60 + t.minute < self.end

    def __str__(self) -> str:
        return f"{self.start // 60:02d}:{self.start % 60:02d}-{self.end // 60:02d}:{self.end % 60:02d}"


_HHMM = re.compile(r"^([01][0-9]|2[0-4]):([0-5][0-9])$")


def parse_time_range(text: str) -> TimeRange:
    """'08:00-20:00' -> TimeRange; raises ValueError for anything malformed or empty."""
    parts = text.split("-")
    if len(parts) != 2:
        raise ValueError(f"expected HH:MM-HH:MM, got {text!r}")
    mins = []
    for p in parts:
        m = _HHMM.match(p.strip())
        if not m or (m.group(1) == "24" and m.group(2) != "00"):
            raise ValueError(f"bad time {p.strip()!r} in {text!r} (HH:MM, 00:00-24:00)")
        mins.append(int(m.group(1)) * 60 + int(m.group(2)))
    if mins[0] >= mins[1]:
        raise ValueError(f"{text!r} ends before it starts")
    return TimeRange(*mins)


def parse_day(text: str) -> date | tuple[int, int]:
    """'2025-12-29' -> date (one-off); '12-29' -> (12, 29) (every year)."""
    if re.match(r"^\d{4}-\d{2}-\d{2}$", text):
        return date.fromisoformat(text)
    m = re.match(r"^(\d{2})-(\d{2})$", text)
    if m:
        month, day = int(m.group(1)), int(m.group(2))
        date(2024, month, day)  # leap year: validates 02-29 too
        return (month, day)
    raise ValueError(f"expected YYYY-MM-DD or MM-DD, got {text!r}")
