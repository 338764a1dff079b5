"""Retention classes around month ends and leap years; the two-step purge with a controllable clock."""
from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from recorder.cli import recordings
from recorder.retention import PolicyError, add_months, due_at, keep_until, load_policy
from tests.test_recorder_store import KEYS, make_spool, migrated

JST = ZoneInfo("Asia/Tokyo")
SENDAI = Path(__file__).resolve().parents[1] / "lab" / "sites" / "sendai"


def jst(*a):
    return datetime(*a, tzinfo=JST)


@pytest.mark.parametrize("start,cls,last", [
    # Sendai 翌月末まで: the end of the month after the recording month
    (jst(2024, 1, 31, 12), "end-of-next-month", date(2024, 2, 29)),     # leap year
    (jst(2025, 1, 31, 12), "end-of-next-month", date(2025, 2, 28)),     # non-leap year
    (jst(2025, 1, 1, 0, 0), "end-of-next-month", date(2025, 2, 28)),
    (jst(2025, 12, 1, 9), "end-of-next-month", date(2026, 1, 31)),      # December -> January next year
    (jst(2025, 12, 31, 23, 59), "end-of-next-month", date(2026, 1, 31)),
    (jst(2025, 11, 30, 10), "end-of-next-month", date(2025, 12, 31)),
    # Kawasaki 6ヶ月: same day six months later, clipped to the month's end
    (jst(2025, 8, 31, 10), "6-months", date(2026, 2, 28)),
    (jst(2023, 8, 31, 10), "6-months", date(2024, 2, 29)),
    (jst(2025, 8, 30, 10), "6-months", date(2026, 2, 28)),
    (jst(2025, 3, 31, 10), "6-months", date(2025, 9, 30)),
    (jst(2025, 7, 15, 10), "6-months", date(2026, 1, 15)),              # across the year
    (jst(2024, 2, 29, 10), "30-days", date(2024, 3, 30)),
])
def test_keep_until(start, cls, last):
    assert keep_until(start, cls, JST) == last
    due = due_at(start, cls, JST)
    assert due == datetime.combine(last + timedelta(days=1), datetime.min.time(), JST)
    assert due.tzinfo == timezone.utc


def test_site_local_day_decides_the_month():
    # 2025-01-31 15:30 UTC is already 1 February in Japan: kept to the end of March
    assert keep_until(datetime(2025, 1, 31, 15, 30, tzinfo=timezone.utc), "end-of-next-month", JST) == date(2025, 3, 31)
    assert keep_until(jst(2025, 1, 1), "keep", JST) is None
    assert add_months(date(2024, 1, 31), 1) == date(2024, 2, 29) and add_months(date(2025, 11, 30), 3) == date(2026, 2, 28)
    with pytest.raises(ValueError):
        keep_until(jst(2025, 1, 1), "forever", JST)


def test_policy_file(tmp_path):
    p = load_policy(SENDAI)
    assert (p.retention, p.approvers, p.yearly_calls, p.timezone, p.site_id) == \
        ("end-of-next-month", 1, 60000, "Asia/Tokyo", "sendai")
    assert load_policy(tmp_path).retention == "keep"          # no file: nothing ever becomes due
    (tmp_path / "recording.toml").write_text('retention = "6-month"\napprovers = 3\ncolour = "red"\n')
    with pytest.raises(PolicyError) as e:
        load_policy(tmp_path)
    got = sorted(str(x) for x in e.value.problems)
    assert any("recording.toml:1: retention: must be" in g for g in got)
    assert any("recording.toml:2: approvers: must be 1 or 2" in g for g in got)
    assert any("colour: unknown key" in g for g in got)


# ------------------------------------------------------------------ purge through the CLI

class Site:
    """A config + site folder + users + recordings at chosen start times, driven through the CLI."""

    def __init__(self, tmp_path, monkeypatch, approvers=1, retention="end-of-next-month"):
        from recorder.store import recorder_from_config
        from provisioning.config import load_config
        monkeypatch.setenv("MADOGUCHI_RECORDING_KEYS", KEYS)
        monkeypatch.delenv("MADOGUCHI_USER", raising=False)
        site = tmp_path / "site"
        site.mkdir()
        self.site = site
        (site / "recording.toml").write_text(f'retention = "{retention}"\napprovers = {approvers}\n')
        self.config = tmp_path / "madoguchi.toml"
        self.config.write_text(f'[storage]\ndata_dir = "var"\n[site]\ndir = "{site}"\n')
        migrated(f"sqlite:///{tmp_path / 'var' / 'madoguchi.sqlite3'}").dispose()
        self.rec = recorder_from_config(load_config(self.config))
        self.runner = CliRunner()
        self.n = 0
        assert self.cli("users", "add", "admin1", "--role", "admin").exit_code == 0
        for name, role in (("admin2", "admin"), ("sv1", "supervisor"), ("op1001", "operator")):
            assert self.cli("users", "add", name, "--role", role, "--user", "admin1").exit_code == 0

    def cli(self, *args, input=None):
        return self.runner.invoke(recordings, [*args, "--config", str(self.config)], input=input,
                                  catch_exceptions=False)

    def record(self, started_at) -> str:
        from recorder.store import RecordingMeta
        self.n += 1
        call_id = f"1700000000.{self.n}"
        make_spool(self.rec, call_id, 0.5)
        return self.rec.finalize_sync(call_id, RecordingMeta(started_at=started_at, operators=("op1001",))).reception_no


def deletions(rec):
    from recorder.models import RecordingDeletion
    with rec.sessions() as s:
        return [(d.reception_no, d.approved_by, d.plan_id) for d in s.scalars(select(RecordingDeletion))]


def test_purge_plan_then_approve_around_leap_february(tmp_path, monkeypatch):
    s = Site(tmp_path, monkeypatch)
    jan31 = s.record(jst(2024, 1, 31, 16))
    feb29 = s.record(jst(2024, 2, 29, 9))
    dec31 = s.record(jst(2023, 12, 31, 23, 30))
    # the last minute of February: nothing from January is due yet; December's call is (due Feb 1)
    r = s.cli("purge", "--plan", "--now", "2024-02-29T23:59", "--user", "admin1")
    assert r.exit_code == 0 and "plan 1: open, 1 recording(s)" in r.output and dec31 in r.output
    assert jan31 not in r.output
    r = s.cli("purge", "--plan", "--now", "2024-03-01T00:00", "--user", "admin1")
    assert "plan 2: open, 2 recording(s)" in r.output and jan31 in r.output and feb29 not in r.output
    # the plan alone deletes nothing
    assert s.rec.get(jan31) is not None and deletions(s.rec) == []
    r = s.cli("purge", "--approve", "2", "--by", "admin1", "--now", "2024-03-01T00:00")
    assert r.exit_code == 0 and "plan 2: executed" in r.output and "deleted" in r.output
    assert s.rec.get(jan31) is None and s.rec.get(dec31) is None and s.rec.get(feb29) is not None
    assert sorted(deletions(s.rec)) == sorted([(jan31, "admin1", 2), (dec31, "admin1", 2)])
    assert not list(s.rec.recordings_dir.rglob("20240131-*"))
    # plan 1 is stale now: its only recording is gone
    r = s.cli("purge", "--approve", "1", "--by", "admin1", "--now", "2024-03-01T00:00")
    assert "gone" in r.output
    r = s.cli("purge", "--plan", "--now", "2024-03-31T23:59", "--user", "admin1")
    assert "nothing is due" in r.output                     # Feb 29 -> kept through March 31
    r = s.cli("purge", "--plan", "--now", "2024-04-01", "--user", "admin1")
    assert feb29 in r.output


def test_december_rolls_into_next_year_and_legal_hold_blocks(tmp_path, monkeypatch):
    s = Site(tmp_path, monkeypatch)
    dec = s.record(jst(2025, 12, 15, 10))
    held = s.record(jst(2025, 12, 16, 10))
    late_hold = s.record(jst(2025, 12, 17, 10))
    assert "nothing is due" in s.cli("purge", "--plan", "--now", "2026-01-31T23:59:59", "--user", "admin1").output
    assert s.cli("hold", held, "--reason", "information disclosure request", "--user", "admin1").exit_code == 0
    r = s.cli("purge", "--plan", "--now", "2026-02-01", "--user", "admin1")
    assert dec in r.output and late_hold in r.output and held not in r.output
    # a hold placed after the plan still wins at execution time
    assert s.cli("hold", late_hold, "--reason", "complaint", "--user", "admin1").exit_code == 0
    r = s.cli("purge", "--approve", "1", "--by", "admin1", "--now", "2026-02-01")
    assert f"{late_hold}" in r.output and "held" in r.output
    assert s.rec.get(dec) is None and s.rec.get(held) and s.rec.get(late_hold)
    assert s.cli("release", held, "--user", "admin1").exit_code == 0
    assert held in s.cli("purge", "--plan", "--now", "2026-02-01", "--user", "admin1").output


def test_two_distinct_admins_must_approve(tmp_path, monkeypatch):
    s = Site(tmp_path, monkeypatch, approvers=2, retention="6-months")
    aug31 = s.record(jst(2025, 8, 31, 10))
    assert "nothing is due" in s.cli("purge", "--plan", "--now", "2026-02-28T23:00", "--user", "admin1").output
    r = s.cli("purge", "--plan", "--now", "2026-03-01", "--user", "admin1")
    assert aug31 in r.output and "approvals 0/2" in r.output
    r = s.cli("purge", "--approve", "1", "--by", "admin1", "--now", "2026-03-01")
    assert r.exit_code == 0 and "approvals 1/2" in r.output and s.rec.get(aug31) is not None
    r = s.cli("purge", "--approve", "1", "--by", "admin1", "--now", "2026-03-01")
    assert r.exit_code == 1 and "already approved by admin1" in r.output
    r = s.cli("purge", "--approve", "1", "--by", "sv1", "--now", "2026-03-01")
    assert r.exit_code == 3 and "refused" in r.output and s.rec.get(aug31) is not None
    r = s.cli("purge", "--approve", "1", "--by", "admin2", "--now", "2026-03-01")
    assert r.exit_code == 0 and "executed" in r.output and s.rec.get(aug31) is None
    assert deletions(s.rec) == [(aug31, "admin1,admin2", 1)]
    audit = s.cli("audit", "--user", "admin1", "--limit", "100").output
    assert "delete" in audit and aug31 in audit and "REFUSED" in audit and "sv1" in audit


def test_operator_cannot_plan(tmp_path, monkeypatch):
    s = Site(tmp_path, monkeypatch)
    r = s.cli("purge", "--plan", "--user", "op1001")
    assert r.exit_code == 3 and "refused: purge needs role admin" in r.output
