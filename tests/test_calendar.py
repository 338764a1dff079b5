"""Calendars of other cities from the requirements, judged in Asia/Tokyo whatever the server's zone."""
from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from provisioning.calendar import load_calendars

JST = ZoneInfo("Asia/Tokyo")

CALENDARS = """
[holidays]
national = true
extra = ["2026-07-01"]          # a local closure
working = ["2026-11-03"]        # the city works on 文化の日 this year

# Toshima switchboard: weekdays 08:30-17:15 except holidays
[calendars.toshima]
weekday = "08:30-17:15"
saturday = "closed"
sunday = "closed"
holiday = "closed"

# Kawasaki reservation center: 09:00-16:45, closed weekends, holidays and 12/29-1/3
[calendars.kawasaki]
weekday = "09:00-16:45"
saturday = "closed"
sunday = "closed"
holiday = "closed"

[[calendars.kawasaki.periods]]
name = "年末年始"
from = "12-29"
to = "01-03"
hours = "closed"

[[calendars.kawasaki.periods]]
name = "system maintenance"     # a one-off override, later periods win
from = "2026-12-01"
to = "2026-12-01"
hours = "13:00-16:45"
"""


@pytest.fixture(scope="module")
def cals(tmp_path_factory):
    path = tmp_path_factory.mktemp("cal") / "calendar.toml"
    path.write_text(CALENDARS)
    problems = []
    out = load_calendars(path, problems, "Asia/Tokyo")
    assert problems == []
    return out


@pytest.mark.parametrize("cal, when, is_open", [
    ("toshima", datetime(2026, 11, 24, 8, 29), False),
    ("toshima", datetime(2026, 11, 24, 8, 30), True),
    ("toshima", datetime(2026, 11, 24, 17, 15), False),     # the end is exclusive
    ("toshima", datetime(2026, 11, 23, 10, 0), False),      # 勤労感謝の日 (Monday)
    ("toshima", datetime(2026, 5, 6, 10, 0), False),        # 振替休日
    ("toshima", datetime(2026, 7, 1, 10, 0), False),        # local closure
    ("toshima", datetime(2026, 11, 3, 10, 0), True),        # a holiday the city works
    ("kawasaki", datetime(2026, 12, 28, 16, 44), True),
    ("kawasaki", datetime(2026, 12, 29, 10, 0), False),     # year-end closure, a Tuesday
    ("kawasaki", datetime(2027, 1, 4, 9, 0), True),
    ("kawasaki", datetime(2026, 12, 1, 10, 0), False),      # the one-off override
    ("kawasaki", datetime(2026, 12, 1, 13, 0), True),
    ("kawasaki", datetime(2026, 11, 28, 10, 0), False),     # Saturday
])
def test_city_calendars(cals, cal, when, is_open):
    assert cals[cal].is_open(when.replace(tzinfo=JST)) is is_open


def test_server_time_zone_does_not_matter(cals, monkeypatch):
    import time
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        # 09:00 JST is 19:00 the day before in New York
        assert cals["kawasaki"].is_open(datetime(2026, 11, 24, 0, 0, tzinfo=ZoneInfo("UTC")))
    finally:
        monkeypatch.undo()
        time.tzset()
