"""Business calendars (``calendar.toml``): opening hours in the site's time zone.

National and substitute holidays come from ``jpholiday`` (maintained upstream; ``holidays`` agrees
through 2030), so nobody has to type next year's table. The site adds local closures and one-off
overrides as periods. Hours are judged in the site's zone (Asia/Tokyo) whatever the server's.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from zoneinfo import ZoneInfo

import jpholiday

from .problems import REQUIRED, TABLES, Problem, Reporter, read_toml, take
from .values import ID, TimeRange, parse_day, parse_time_range

DAY_TYPES = ("weekday", "saturday", "sunday", "holiday")


@dataclass(frozen=True)
class Period:
    name: str
    start: date | tuple[int, int]     # a date (one-off) or (month, day) (every year)
    end: date | tuple[int, int]
    hours: TimeRange | None           # None = closed

    def covers(self, day: date) -> bool:
        if isinstance(self.start, date):
            return self.start <= day <= self.end
        md = (day.month, day.day)
        if self.start <= self.end:
            return self.start <= md <= self.end
        return md >= self.start or md <= self.end      # wraps the new year (12-29 .. 01-03)


@dataclass(frozen=True)
class Calendar:
    id: str
    timezone: str
    hours: dict[str, TimeRange | None]
    national_holidays: bool
    extra_holidays: frozenset[date]
    working_days: frozenset[date]      # library holidays the city works anyway
    periods: tuple[Period, ...]

    def is_holiday(self, day: date) -> bool:
        if day in self.working_days:
            return False
        return day in self.extra_holidays or (self.national_holidays and jpholiday.is_holiday(day))

    def hours_on(self, day: date) -> TimeRange | None:
        """Periods (latest listed wins) beat holidays, holidays beat the day of the week."""
        for p in reversed(self.periods):
            if p.covers(day):
                return p.hours
        if self.is_holiday(day):
            return self.hours["holiday"]
        return self.hours[(("weekday",) * 5 + ("saturday", "sunday"))[day.weekday()]]

    def is_open(self, when: datetime) -> bool:
        if when.tzinfo is None:
            raise ValueError("is_open needs an aware datetime")
        local = when.astimezone(ZoneInfo(self.timezone))
        hours = self.hours_on(local.date())
        return hours is not None and local.time() in hours


def load_calendars(path, problems: list[Problem], timezone: str) -> dict[str, Calendar]:
    data, rep = read_toml(path, problems)
    if data is None:
        return {}
    top = take(rep, data, (), {"holidays": (dict, {}), "calendars": (dict, REQUIRED)})
    hol = take(rep, top["holidays"] or {}, ("holidays",),
               {"national": (bool, True), "extra": (list, []), "working": (list, [])})
    extra = _dates(rep, ("holidays", "extra"), hol["extra"] or [])
    working = _dates(rep, ("holidays", "working"), hol["working"] or [])
    out = {}
    for cid, raw in (top["calendars"] or {}).items():
        p = ("calendars", cid)
        if not ID.match(cid):
            rep.add(p, "calendar id must match [a-z][a-z0-9_-]{0,31}")
            continue
        c = take(rep, raw, p, {**{k: (str, REQUIRED) for k in DAY_TYPES}, "periods": (TABLES, [])})
        hours = {k: _hours(rep, p + (k,), c[k]) for k in DAY_TYPES}
        periods = [x for i, r in enumerate(c["periods"] or []) if (x := _period(rep, p + ("periods", i), r))]
        if all(v is not False for v in hours.values()) and len(periods) == len(c["periods"] or []):
            out[cid] = Calendar(cid, timezone, hours, bool(hol["national"]), frozenset(extra), frozenset(working),
                                tuple(periods))
    return out


def _dates(rep: Reporter, path: tuple, values) -> set[date]:
    out = set()
    for v in values:
        try:
            out.add(date.fromisoformat(v))
        except ValueError:
            rep.add(path, f"{v!r} is not a date (YYYY-MM-DD)", value=v)
    return out


def _period(rep: Reporter, p: tuple, raw) -> Period | None:
    x = take(rep, raw, p, {"name": (str, REQUIRED), "from": (str, REQUIRED), "to": (str, REQUIRED),
                           "hours": (str, REQUIRED)})
    ends = []
    for k in ("from", "to"):
        try:
            ends.append(parse_day(x[k]) if x[k] is not None else None)
        except ValueError as e:
            rep.add(p + (k,), str(e))
            ends.append(None)
    if None in ends or x["name"] is None:
        return None
    if type(ends[0]) is not type(ends[1]):
        rep.add(p + ("to",), "'from' and 'to' must both be YYYY-MM-DD or both MM-DD")
        return None
    if isinstance(ends[0], date) and ends[0] > ends[1]:
        rep.add(p + ("to",), "ends before it starts")
        return None
    hours = _hours(rep, p + ("hours",), x["hours"])
    return None if hours is False else Period(x["name"], ends[0], ends[1], hours)


def _hours(rep: Reporter, path: tuple, text: str | None):
    """TimeRange, None for 'closed', or False when invalid."""
    if text is None:
        return False
    if text == "closed":
        return None
    try:
        return parse_time_range(text)
    except ValueError as e:
        rep.add(path, f"{e} (or \"closed\")")
        return False
