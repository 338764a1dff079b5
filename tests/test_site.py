import shutil
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pytest

from provisioning.site import SiteError, load_site
from provisioning.values import normalize_number, parse_time_range

SENDAI = Path(__file__).resolve().parents[1] / "lab" / "sites" / "sendai"
JST = timezone(timedelta(hours=9))


@pytest.fixture(scope="module")
def sendai():
    return load_site(SENDAI)


def test_sendai_numbers(sendai):
    assert [(n.number, n.mode, n.flow, n.recorded) for n in sendai.numbers] == [
        ("0223984894", "normal", "main", True), ("0223985905", "disaster", "disaster", True)]
    for form in ("0223984894", "022-398-4894", "+81223984894", "+81 22 398 4894"):
        assert sendai.number(form).flow == "main"
    assert sendai.number("0223985070") is None  # fax, not an IVR number
    assert sendai.number("") is None and sendai.number("anonymous") is None


def test_sendai_flows_queues_agents(sendai):
    menu = sendai.flows["main"].nodes["menu"]
    assert menu.options == {"1": "general", "2": "faq", "9": "language"} and menu.fallback == "general"
    assert sendai.flows["main"].nodes["general"].queue == "general"
    lang = sendai.flows["main"].nodes["language"]
    assert sorted(lang.options.values()) == sorted(sendai.languages)
    assert sendai.languages == ("ja", "en", "zh", "ko", "vi", "ne")
    assert set(sendai.queues) == {"general", "disaster", "interpreter"}
    assert len(sendai.agents) == 8 and all(a.endpoint.startswith("PJSIP/") for a in sendai.agents)
    for lang in sendai.languages:  # someone speaks or interprets every language
        assert any(lang in a.languages for a in sendai.agents)
    assert len(sendai.directory) == 10 and sendai.trunk.channels == 24


def test_sendai_calendar(sendai):
    cal = sendai.calendars["center"]
    assert str(cal.hours_on(date(2025, 8, 1))) == "08:00-20:00"    # Friday
    assert str(cal.hours_on(date(2025, 8, 2))) == "08:00-17:00"    # Saturday
    assert str(cal.hours_on(date(2025, 9, 15))) == "08:00-17:00"   # 敬老の日 (Monday)
    assert str(cal.hours_on(date(2025, 12, 29))) == "08:00-17:00"  # year-end, a Monday
    assert str(cal.hours_on(date(2026, 1, 2))) == "08:00-17:00"
    assert str(cal.hours_on(date(2026, 1, 5))) == "08:00-20:00"
    assert cal.is_open(datetime(2025, 8, 1, 8, 0, tzinfo=JST))
    assert not cal.is_open(datetime(2025, 8, 1, 7, 59, tzinfo=JST))
    assert not cal.is_open(datetime(2025, 8, 1, 20, 0, tzinfo=JST))
    assert cal.is_open(datetime(2025, 8, 1, 10, 0, tzinfo=timezone.utc))  # 19:00 JST
    assert str(cal.hours_on(date(2030, 9, 23))) == "08:00-17:00"  # 秋分の日 2030: from jpholiday, not typed in
    offices = sendai.calendars["city-offices"]
    assert offices.hours_on(date(2025, 8, 2)) is None and offices.hours_on(date(2025, 12, 30)) is None


def test_values():
    assert normalize_number("022-398-4894") == "0223984894"
    assert normalize_number("+81-90-1234-5678") == "09012345678"
    for bad in ("22-398-4894", "0223984894;", "1234", "+1 555 0100", "０２２３９８４８９４"):
        assert normalize_number(bad) is None
    assert str(parse_time_range("00:00-24:00")) == "00:00-24:00"
    for bad in ("8:00-20:00", "20:00-08:00", "08:00-24:30", "08:00", "08:60-09:00"):
        with pytest.raises(ValueError):
            parse_time_range(bad)


@pytest.fixture
def site_copy(tmp_path):
    d = tmp_path / "site"
    shutil.copytree(SENDAI, d)
    return d


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text, old
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def line_of(path: Path, needle: str) -> int:
    return next(i for i, l in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if needle in l)


def test_every_problem_is_reported_together(site_copy):
    d = site_copy
    edit(d / "site.toml", 'timezone = "Asia/Tokyo"', 'timezone = "Asia/Sendai"\ncolour = "green"')
    edit(d / "site.toml", 'number = "022-398-5905"', 'number = "022-398-4894"')          # duplicate
    edit(d / "site.toml", 'flow = "main"', 'flow = "mian"')                               # dangling
    edit(d / "site.toml", 'mode = "disaster"', 'mode = "emergency"')
    edit(d / "flows.toml", 'timeout = 5\nretries = 2', 'timeout = "5"\nretries = 2')      # wrong type
    edit(d / "flows.toml", 'queue = "general"', 'queue = "generl"')                        # dangling queue
    edit(d / "flows.toml", '"9" = "language" }', '"9" = "langauge" }')                     # dangling node
    edit(d / "flows.toml", '"6" = "ne" }', '"6" = "fr", "x" = "ja" }')                     # unknown lang, bad key
    edit(d / "flows.toml", 'prompt = "faq-guide"', 'prompt = "FAQ guide"')                 # bad prompt id
    edit(d / "flows.toml", 'prompt = "language-menu"', 'prompt = "language-menu"\ngreeting = "x"')  # unknown key
    edit(d / "queues.toml", 'skill = "disaster"', 'skill = "rescue"')
    edit(d / "queues.toml", 'languages = ["en", "zh", "ko", "vi", "ne"]\nmax_wait = 300',
         'languages = ["en", "zh", "ko", "vi", "ne"]\nmax_wait = -1')
    edit(d / "agents.csv", "general:8;disaster:7,ja\nop1002", "general:8;cooking,ja;fr\nop1002")  # unknown skill+lang
    edit(d / "agents.csv", "op1003,", "op1002,")                                           # duplicate id
    edit(d / "agents.csv", "PJSIP/op1004", "SIP/op1004")
    edit(d / "directory.csv", "shisanzei,財政局 税務部 資産課税課,1002,7251002,08:30-17:15,",
         "shisanzei,財政局 税務部 資産課税課,10-02,7251002,17:15-08:30,022-12")
    edit(d / "directory.csv", "gomi,", "Gomi,")
    edit(d / "calendar.toml", 'saturday = "08:00-17:00"', 'saturday = "8am-5pm"')
    edit(d / "calendar.toml", 'extra = []', 'extra = ["2025-02-30"]')
    with pytest.raises(SiteError) as e:
        load_site(d)
    got = {(Path(p.file).name, p.line, p.field) for p in e.value.problems}
    s, m, q = d / "site.toml", d / "flows.toml", d / "queues.toml"
    a, dr, c = d / "agents.csv", d / "directory.csv", d / "calendar.toml"
    expected = {
        ("site.toml", line_of(s, "Asia/Sendai"), "site.timezone"),
        ("site.toml", line_of(s, "colour"), "site.colour"),
        ("site.toml", line_of(s, 'flow = "mian"'), "numbers[0].flow"),
        ("site.toml", line_of(s, "emergency"), "numbers[1].mode"),
        ("flows.toml", line_of(m, 'timeout = "5"'), "flows.main.nodes.menu.timeout"),
        ("flows.toml", line_of(m, "generl"), "flows.main.nodes.general.queue"),
        ("flows.toml", line_of(m, "langauge"), "flows.main.nodes.menu.options.9"),
        ("flows.toml", line_of(m, '"fr"'), "flows.main.nodes.language.options.6"),
        ("flows.toml", line_of(m, '"x" = "ja"'), "flows.main.nodes.language.options.x"),
        ("flows.toml", line_of(m, "FAQ guide"), "flows.main.nodes.faq.prompt"),
        ("flows.toml", line_of(m, "greeting = "), "flows.main.nodes.language.greeting"),
        ("queues.toml", line_of(q, "rescue"), "queues.disaster.skill"),
        ("queues.toml", line_of(q, "max_wait = -1"), "queues.interpreter.max_wait"),
        ("agents.csv", line_of(a, "cooking"), "skills"),
        ("agents.csv", line_of(a, "cooking"), "languages"),
        ("agents.csv", line_of(a, "op1002,オペレーター1003"), "id"),
        ("agents.csv", line_of(a, "SIP/op1004"), "endpoint"),
        ("directory.csv", line_of(dr, "10-02"), "extension"),
        ("directory.csv", line_of(dr, "10-02"), "hours"),
        ("directory.csv", line_of(dr, "10-02"), "phone"),
        ("directory.csv", line_of(dr, "Gomi"), "id"),
        ("calendar.toml", line_of(c, "8am"), "calendars.center.saturday"),
        ("calendar.toml", line_of(c, "2025-02-30"), "holidays.extra"),
    }
    assert expected <= got, sorted(expected - got)
    dup = [p for p in e.value.problems if p.field == "numbers[1].number"]
    assert dup and "already published" in dup[0].message
    assert all(str(p).startswith(p.file) for p in e.value.problems)
    assert {f for f, _, _ in got} == {"site.toml", "flows.toml", "queues.toml", "agents.csv", "directory.csv",
                                      "calendar.toml"}
    with pytest.raises(ValueError):
        load_site(SENDAI).calendars["center"].is_open(datetime(2025, 8, 1, 9, 0))  # naive


def test_sendai_acd_rules(sendai):
    g, d, i = sendai.queues["general"], sendai.queues["disaster"], sendai.queues["interpreter"]
    assert (g.strategy, g.open_after, g.overflow_skill, g.fallback_after, g.fallback) == \
        ("longest-idle", 120, "supervisor", 240, "message:congestion")
    assert (d.strategy, d.min_level, d.widen_after) == ("most-skilled", 5, 60)
    assert (i.strategy, i.wrapup, i.ring_timeout, i.pause_after_misses, i.max_length) == ("round-robin", 45, 25, 2, 10)
    assert not g.wrapup_until_record and i.fallback is None and i.min_level == 1
    op = next(a for a in sendai.agents if a.id == "op1001")
    assert op.skills == ("general", "disaster") and op.levels == {"general": 8, "disaster": 7}
    assert "general" in op.skills and op.level("general") == 8 and op.level("interpreter") == 0
    assert sum("vi" in a.languages for a in sendai.agents) == 1


def test_acd_fields_are_validated(site_copy):
    d = site_copy
    q, a = d / "queues.toml", d / "agents.csv"
    edit(q, 'strategy = "longest-idle"', 'strategy = "random"')
    edit(q, 'min_level = 5', 'min_level = 0')
    edit(q, 'fallback = "message:congestion"', 'fallback = "message:nope"')
    edit(q, 'fallback = "message:disaster-congestion"', 'fallback = "sms"')
    edit(q, 'overflow_skill = "general"', 'overflow_skill = "cooking"')
    edit(q, 'wrapup = 45', 'wrapup = 45\nopen_after = 400\nwrapup_until_record = "yes"\nfallback_after = 30')
    edit(q, 'max_length = 10', 'max_length = 0\nhold_music = "x"')
    edit(q, 'ring_timeout = 25', 'ring_timeout = 1')
    edit(a, "general:8;disaster:7,ja", "general:11;disaster:x;general,ja")
    edit(a, "general:6;disaster:4,ja", "general;disaster:4,ja")       # a bare skill is still fine
    with pytest.raises(SiteError) as e:
        load_site(d)
    got = {(Path(p.file).name, p.line, p.field) for p in e.value.problems}
    expected = {
        ("queues.toml", line_of(q, '"random"'), "queues.general.strategy"),
        ("queues.toml", line_of(q, "message:nope"), "queues.general.fallback"),
        ("queues.toml", line_of(q, "min_level = 0"), "queues.disaster.min_level"),
        ("queues.toml", line_of(q, '"sms"'), "queues.disaster.fallback"),
        ("queues.toml", line_of(q, '"cooking"'), "queues.disaster.overflow_skill"),
        ("queues.toml", line_of(q, "open_after = 400"), "queues.interpreter.open_after"),
        ("queues.toml", line_of(q, '"yes"'), "queues.interpreter.wrapup_until_record"),
        ("queues.toml", line_of(q, "fallback_after = 30"), "queues.interpreter.fallback_after"),
        ("queues.toml", line_of(q, "max_length = 0"), "queues.interpreter.max_length"),
        ("queues.toml", line_of(q, "ring_timeout = 1"), "queues.interpreter.ring_timeout"),
        ("queues.toml", line_of(q, "hold_music"), "queues.interpreter.hold_music"),
        ("agents.csv", line_of(a, "general:11"), "skills"),
    }
    assert expected <= got, sorted(expected - got)
    msgs = {p.message for p in e.value.problems if Path(p.file).name == "agents.csv"}
    assert any("general:11" in m for m in msgs) and any("disaster:x" in m for m in msgs)
    assert any("listed twice" in m for m in msgs)
    assert not any(line == line_of(a, "general;disaster:4") for _, line, _ in got)
    opened = [p.message for p in e.value.problems if p.field == "queues.interpreter.open_after"]
    assert any("overflow_skill" in m for m in opened) and any("max_wait" in m for m in opened)
    assert {Path(p.file).name for p in e.value.problems} == {"queues.toml", "agents.csv"}   # no knock-on errors


def test_malformed_toml_does_not_hide_other_files(site_copy):
    (site_copy / "queues.toml").write_text('[queues.general]\nname = "総合案内\n', encoding="utf-8")
    edit(site_copy / "agents.csv", "general:8;disaster:7,ja\nop1002", "general;nope,ja\nop1002")
    with pytest.raises(SiteError) as e:
        load_site(site_copy)
    probs = {(Path(p.file).name, p.line) for p in e.value.problems}
    assert ("queues.toml", 2) in probs
    assert any(f == "agents.csv" for f, _ in probs)


def test_csv_structure_problems(site_copy):
    (site_copy / "directory.csv").write_text(
        "id,department,extension,trunk_number,hours,floor\n", encoding="utf-8")
    (site_copy / "agents.csv").write_text(
        "id,name,endpoint,skills,languages\nop1,A,PJSIP/op1,general,ja,extra\nop2,\"B,PJSIP/op2,general,ja\n",
        encoding="utf-8")
    with pytest.raises(SiteError) as e:
        load_site(site_copy)
    got = {(Path(p.file).name, p.line, p.field) for p in e.value.problems}
    assert ("directory.csv", 1, "floor") in got
    assert ("agents.csv", 2, "") in got and ("agents.csv", 3, "") in got


def test_missing_folder(tmp_path):
    with pytest.raises(SiteError, match="site folder not found"):
        load_site(tmp_path / "nope")
