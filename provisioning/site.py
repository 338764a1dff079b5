"""The *site* folder: published numbers, IVR menus, queues, agents, directory and calendar.

Loading never stops at the first mistake: every file is read, then cross-references are
checked, and `SiteError` carries all problems with file, line and field.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .problems import REQUIRED, TABLES, Problem, ProblemsError, Reporter, read_toml, take
from .values import (DIGITS, ENDPOINT, ID, LANG, PROMPT_ID, Target, TimeRange, e164, normalize_number,
                     parse_day, parse_target, parse_time_range)

__all__ = ["Site", "SiteError", "PublishedNumber", "Menu", "Queue", "Agent", "DirectoryEntry", "Trunk",
           "Calendar", "Period", "Target", "TimeRange", "load_site"]

DTMF_KEYS = set("0123456789*#")
MODES = ("normal", "disaster")
DAY_TYPES = ("weekday", "saturday", "sunday", "holiday")


class SiteError(ProblemsError):
    pass


@dataclass(frozen=True)
class PublishedNumber:
    number: str          # national form, digits only: 0223984894
    e164: str            # +81223984894
    label: str
    mode: str            # normal | disaster
    menu: str            # entry menu id


@dataclass(frozen=True)
class Menu:
    id: str
    prompt: str
    timeout: int
    retries: int
    options: dict[str, Target]
    on_timeout: Target
    on_invalid: Target


@dataclass(frozen=True)
class Queue:
    id: str
    name: str
    skill: str
    languages: tuple[str, ...]
    max_wait: int
    overflow: Target


@dataclass(frozen=True)
class Agent:
    id: str
    name: str
    endpoint: str        # PJSIP/op1001
    skills: tuple[str, ...]
    languages: tuple[str, ...]

    @property
    def endpoint_name(self) -> str:
        return self.endpoint.split("/", 1)[1]


@dataclass(frozen=True)
class DirectoryEntry:
    id: str
    department: str
    extension: str       # the department's extension in the city network
    trunk_number: str    # digits sent over the OD trunk to reach it
    hours: TimeRange | None
    phone: str | None    # public number given to callers when a transfer is not possible


@dataclass(frozen=True)
class Trunk:
    id: str
    host: str
    port: int
    channels: int


@dataclass(frozen=True)
class Period:
    name: str
    start: date | tuple[int, int]
    end: date | tuple[int, int]
    hours: TimeRange | None      # None = closed

    def covers(self, day: date) -> bool:
        if isinstance(self.start, date):
            return self.start <= day <= self.end
        md = (day.month, day.day)
        if self.start <= self.end:
            return self.start <= md <= self.end
        return md >= self.start or md <= self.end      # wraps the new year (12-29 .. 01-03)


@dataclass(frozen=True)
class Calendar:
    timezone: str
    hours: dict[str, TimeRange | None]
    holidays: frozenset[date]
    periods: tuple[Period, ...]
    closed_prompt: str | None

    def hours_on(self, day: date) -> TimeRange | None:
        """Special periods win over holidays, holidays over the day of the week."""
        for p in self.periods:
            if p.covers(day):
                return p.hours
        if day in self.holidays:
            return self.hours["holiday"]
        return self.hours[(("weekday",) * 5 + ("saturday", "sunday"))[day.weekday()]]

    def is_open(self, when: datetime) -> bool:
        if when.tzinfo is None:
            raise ValueError("is_open needs a timezone-aware datetime")
        local = when.astimezone(ZoneInfo(self.timezone))
        hours = self.hours_on(local.date())
        return hours is not None and local.time() in hours


@dataclass(frozen=True)
class Site:
    dir: Path
    id: str
    name: str
    timezone: str
    languages: tuple[str, ...]     # first is the default
    skills: tuple[str, ...]
    numbers: tuple[PublishedNumber, ...]
    menus: dict[str, Menu]
    queues: dict[str, Queue]
    agents: list[Agent]
    directory: dict[str, DirectoryEntry]
    calendar: Calendar
    trunk: Trunk | None = None

    def number(self, dnid: str) -> PublishedNumber | None:
        """The published number for a DNID in any form (national, E.164, with hyphens)."""
        national = normalize_number(dnid or "")
        return next((n for n in self.numbers if n.number == national), None) if national else None


# --- loading -------------------------------------------------------------------------------

def load_site(path: str | Path) -> Site:
    d = Path(path).resolve()
    problems: list[Problem] = []
    if not d.is_dir():
        raise SiteError([Problem(str(d), None, "", "site folder not found")])
    loader = _Loader(d, problems)
    site = loader.load()
    if problems:
        raise SiteError(sorted(problems, key=lambda p: (p.file, p.line or 0)))
    return site


class _Loader:
    def __init__(self, d: Path, problems: list[Problem]):
        self.d, self.problems = d, problems
        self.refs: list[tuple[Reporter, tuple, Target, int | None]] = []  # checked after all files

    def load(self) -> Site:
        site, numbers, trunk, site_rep = self._site()
        self.languages, self.skills = tuple(site["languages"] or ()), tuple(site["skills"] or ())
        menus = self._menus()
        queues = self._queues()
        agents = self._agents()
        directory = self._directory()
        calendar = self._calendar(site["timezone"] or "Asia/Tokyo")
        self.menu_ids, self.queue_ids, self.dir_ids = set(menus), set(queues), set(directory)
        for rep, path, target, line in self.refs:
            self._check_ref(rep, path, target, line)
        for i, n in numbers:
            if n.menu not in menus:
                site_rep.add(("numbers", i, "menu"), f"menu {n.menu!r} is not defined in menus.toml")
        if directory and trunk is None:
            site_rep.add(("trunk",), "directory.csv has entries but site.toml has no [trunk] (OD gateway)")
        nums = tuple(n for _, n in numbers)
        return Site(self.d, site["id"], site["name"], site["timezone"], self.languages, self.skills, nums,
                    menus, queues, agents, directory, calendar, trunk)

    def _target(self, rep: Reporter, path: tuple, text, line: int | None = None) -> Target | None:
        if not isinstance(text, str):
            rep.add(path, "must be a target string like 'queue:general'", line)
            return None
        try:
            t = parse_target(text)
        except ValueError as e:
            rep.add(path, str(e), line)
            return None
        self.refs.append((rep, path, t, line))
        return t

    def _check_ref(self, rep: Reporter, path: tuple, t: Target, line: int | None) -> None:
        known = {"menu": (self.menu_ids, "menus.toml"), "queue": (self.queue_ids, "queues.toml"),
                 "transfer": (self.dir_ids, "directory.csv"), "lang": (set(self.languages), "site.languages")}
        if t.kind in known and t.value not in known[t.kind][0]:
            rep.add(path, f"{t.kind} {t.value!r} is not defined in {known[t.kind][1]}", line)

    # site.toml
    def _site(self):
        data, rep = read_toml(self.d / "site.toml", self.problems)
        top = take(rep, data or {}, (), {"site": (dict, REQUIRED), "numbers": (TABLES, []), "trunk": (dict, None)}) \
            if data is not None else {"site": None, "numbers": [], "trunk": None}
        s = take(rep, top["site"] or {}, ("site",), {
            "id": (str, REQUIRED), "name": (str, REQUIRED), "timezone": (str, "Asia/Tokyo"),
            "languages": (list, REQUIRED), "skills": (list, REQUIRED)}) if data is not None else \
            {"id": None, "name": None, "timezone": None, "languages": None, "skills": None}
        if s["id"] is not None and not ID.match(s["id"]):
            rep.add(("site", "id"), "must match [a-z][a-z0-9_-]{0,31}")
        if s["timezone"] is not None:
            try:
                ZoneInfo(s["timezone"])
            except (ZoneInfoNotFoundError, ValueError):
                rep.add(("site", "timezone"), f"unknown time zone {s['timezone']!r}")
                s["timezone"] = None
        for key, pattern in (("languages", LANG), ("skills", ID)):
            values = s[key] or []
            if s[key] is not None and not values:
                rep.add(("site", key), "must not be empty")
            for v in values:
                if not pattern.match(v):
                    rep.add(("site", key), f"{v!r} is not a valid {key[:-1]} code", value=v)
            for v in {v for v in values if values.count(v) > 1}:
                rep.add(("site", key), f"{v!r} is listed twice")
        numbers = []
        raw_numbers = top["numbers"] or []
        seen: dict[str, int] = {}
        for i, raw in enumerate(raw_numbers):
            n = take(rep, raw, ("numbers", i), {"number": (str, REQUIRED), "label": (str, ""),
                                                "mode": (str, "normal"), "menu": (str, REQUIRED)})
            ok = all(n[k] is not None for k in n)
            national = normalize_number(n["number"]) if n["number"] is not None else None
            if n["number"] is not None and national is None:
                rep.add(("numbers", i, "number"), f"{n['number']!r} is not a Japanese phone number (e.g. 022-398-4894)")
                ok = False
            elif national in seen:
                rep.add(("numbers", i, "number"), f"{national} is already published as numbers[{seen[national]}]")
                ok = False
            if n["mode"] is not None and n["mode"] not in ("normal", "disaster"):
                rep.add(("numbers", i, "mode"), "must be 'normal' or 'disaster'")
                ok = False
            if n["menu"] is not None and not ID.match(n["menu"]):
                rep.add(("numbers", i, "menu"), "must be a menu id")
                ok = False
            if ok:
                seen[national] = i
                numbers.append((i, PublishedNumber(national, e164(national), n["label"], n["mode"], n["menu"])))
        trunk = None
        if top["trunk"] is not None:
            t = take(rep, top["trunk"], ("trunk",), {"id": (str, "od-gateway"), "host": (str, REQUIRED),
                                                     "port": (int, 5060), "channels": (int, 24)})
            from .config import _valid_host  # one host rule for config and site
            before = len(self.problems)
            if t["id"] is not None and not ID.match(t["id"]):
                rep.add(("trunk", "id"), "must match [a-z][a-z0-9_-]{0,31}")
            if t["host"] is not None and not _valid_host(t["host"]):
                rep.add(("trunk", "host"), "must be a host name or IP address")
            if t["port"] is not None and not 0 < t["port"] < 65536:
                rep.add(("trunk", "port"), "must be a port number (1-65535)")
            if t["channels"] is not None and not 0 < t["channels"] <= 1000:
                rep.add(("trunk", "channels"), "must be between 1 and 1000")
            if len(self.problems) == before:
                trunk = Trunk(**t)
        return s, numbers, trunk, rep

    # menus.toml
    def _menus(self) -> dict[str, Menu]:
        data, rep = read_toml(self.d / "menus.toml", self.problems)
        if data is None:
            return {}
        top = take(rep, data, (), {"menus": (dict, REQUIRED)})
        menus = {}
        for mid, raw in (top["menus"] or {}).items():
            p = ("menus", mid)
            if not ID.match(mid):
                rep.add(p, "menu id must match [a-z][a-z0-9_-]{0,31}")
            m = take(rep, raw, p, {"prompt": (str, REQUIRED), "timeout": (int, 5), "retries": (int, 2),
                                   "options": (dict, REQUIRED), "on_timeout": (str, "repeat"),
                                   "on_invalid": (str, "repeat")})
            if m["prompt"] is not None and not PROMPT_ID.match(m["prompt"]):
                rep.add(p + ("prompt",), "must be a prompt id like 'main-menu'")
            if m["timeout"] is not None and not 1 <= m["timeout"] <= 60:
                rep.add(p + ("timeout",), "must be 1-60 seconds")
            if m["retries"] is not None and not 0 <= m["retries"] <= 9:
                rep.add(p + ("retries",), "must be 0-9")
            options = {}
            if m["options"] is not None and not m["options"]:
                rep.add(p + ("options",), "a menu needs at least one option")
            for key, text in (m["options"] or {}).items():
                if key not in DTMF_KEYS:
                    rep.add(p + ("options", key), "option key must be one DTMF key: 0-9, * or #")
                t = self._target(rep, p + ("options", key), text)
                if t is not None:
                    options[key] = t
            on_timeout = self._target(rep, p + ("on_timeout",), m["on_timeout"])
            on_invalid = self._target(rep, p + ("on_invalid",), m["on_invalid"])
            if None not in (m["prompt"], m["timeout"], m["retries"], on_timeout, on_invalid):
                menus[mid] = Menu(mid, m["prompt"], m["timeout"], m["retries"], options, on_timeout, on_invalid)
        return menus

    # queues.toml
    def _queues(self) -> dict[str, Queue]:
        data, rep = read_toml(self.d / "queues.toml", self.problems)
        if data is None:
            return {}
        top = take(rep, data, (), {"queues": (dict, REQUIRED)})
        queues = {}
        for qid, raw in (top["queues"] or {}).items():
            p = ("queues", qid)
            if not ID.match(qid):
                rep.add(p, "queue id must match [a-z][a-z0-9_-]{0,31}")
            q = take(rep, raw, p, {"name": (str, REQUIRED), "skill": (str, REQUIRED), "languages": (list, None),
                                   "max_wait": (int, 300), "overflow": (str, "hangup")})
            if q["skill"] is not None and q["skill"] not in self.skills:
                rep.add(p + ("skill",), f"skill {q['skill']!r} is not listed in site.toml [site] skills")
            langs = self.languages if q["languages"] is None else tuple(q["languages"])
            for lang in langs:
                if lang not in self.languages:
                    rep.add(p + ("languages",), f"language {lang!r} is not in site.toml [site] languages", value=lang)
            if q["max_wait"] is not None and not 0 < q["max_wait"] <= 3600:
                rep.add(p + ("max_wait",), "must be 1-3600 seconds")
            overflow = self._target(rep, p + ("overflow",), q["overflow"])
            if overflow is not None and overflow.kind in ("repeat", "lang"):
                rep.add(p + ("overflow",), f"{overflow.kind!r} makes no sense as an overflow target")
            if overflow == Target("queue", qid):
                rep.add(p + ("overflow",), "a queue cannot overflow into itself")
            if None not in (q["name"], q["skill"], q["max_wait"], overflow):
                queues[qid] = Queue(qid, q["name"], q["skill"], langs, q["max_wait"], overflow)
        return queues

    # agents.csv
    def _agents(self) -> list[Agent]:
        rep, rows = _read_csv(self.d / "agents.csv", self.problems, ("id", "name", "endpoint", "skills", "languages"))
        agents, ids, endpoints = [], {}, {}
        for line, r in rows:
            ok = _check_id(rep, r["id"], ids, line)
            if not r["name"]:
                rep.add(("name",), "must not be empty", line)
                ok = False
            if not ENDPOINT.match(r["endpoint"]):
                rep.add(("endpoint",), f"{r['endpoint']!r} is not like PJSIP/op1001", line)
                ok = False
            elif r["endpoint"] in endpoints:
                rep.add(("endpoint",), f"{r['endpoint']} is already used by line {endpoints[r['endpoint']]}", line)
                ok = False
            else:
                endpoints[r["endpoint"]] = line
            skills, langs = _split(r["skills"]), _split(r["languages"])
            for col, values, known, where in (("skills", skills, self.skills, "skills"),
                                              ("languages", langs, self.languages, "languages")):
                if not values:
                    rep.add((col,), "must list at least one (separated by ';')", line)
                    ok = False
                for v in values:
                    if v not in known:
                        rep.add((col,), f"unknown {col[:-1]} {v!r} (not in site.toml [site] {where})", line)
                        ok = False
            if ok:
                agents.append(Agent(r["id"], r["name"], r["endpoint"], skills, langs))
        return agents

    # directory.csv
    def _directory(self) -> dict[str, DirectoryEntry]:
        rep, rows = _read_csv(self.d / "directory.csv", self.problems,
                              ("id", "department", "extension", "trunk_number", "hours"), ("phone",))
        entries: dict[str, DirectoryEntry] = {}
        ids: dict[str, int] = {}
        for line, r in rows:
            ok = _check_id(rep, r["id"], ids, line)
            if not r["department"]:
                rep.add(("department",), "must not be empty", line)
                ok = False
            for col in ("extension", "trunk_number"):
                if not DIGITS.match(r[col]):
                    rep.add((col,), f"{r[col]!r} must be 2-16 digits", line)
                    ok = False
            hours = None
            if r["hours"]:
                try:
                    hours = parse_time_range(r["hours"])
                except ValueError as e:
                    rep.add(("hours",), str(e), line)
                    ok = False
            phone = r.get("phone") or None
            if phone is not None:
                phone = normalize_number(phone)
                if phone is None:
                    rep.add(("phone",), f"{r['phone']!r} is not a Japanese phone number", line)
                    ok = False
            if ok:
                entries[r["id"]] = DirectoryEntry(r["id"], r["department"], r["extension"], r["trunk_number"],
                                                  hours, phone)
        return entries

    # calendar.toml
    def _calendar(self, timezone: str) -> Calendar:
        data, rep = read_toml(self.d / "calendar.toml", self.problems)
        empty = Calendar(timezone, {k: None for k in DAY_TYPES}, frozenset(), (), None)
        if data is None:
            return empty
        top = take(rep, data, (), {"calendar": (dict, {}), "hours": (dict, REQUIRED), "holidays": (dict, {}),
                                   "periods": (TABLES, [])})
        c = take(rep, top["calendar"] or {}, ("calendar",), {"closed_prompt": (str, None)})
        if c["closed_prompt"] is not None and not PROMPT_ID.match(c["closed_prompt"]):
            rep.add(("calendar", "closed_prompt"), "must be a prompt id")
        h = take(rep, top["hours"] or {}, ("hours",), {k: (str, REQUIRED) for k in DAY_TYPES})
        hours = {k: self._hours(rep, ("hours", k), v) for k, v in h.items()}
        hol = take(rep, top["holidays"] or {}, ("holidays",), {"dates": (list, [])})
        holidays = set()
        for v in hol["dates"] or []:
            try:
                holidays.add(date.fromisoformat(v))
            except ValueError:
                rep.add(("holidays", "dates"), f"{v!r} is not a date (YYYY-MM-DD)", value=v)
        periods = []
        raw_periods = top["periods"] or []
        for i, raw in enumerate(raw_periods):
            p = ("periods", i)
            x = take(rep, raw, p, {"name": (str, REQUIRED), "from": (str, REQUIRED), "to": (str, REQUIRED),
                                   "hours": (str, REQUIRED)})
            ends = []
            for k in ("from", "to"):
                try:
                    ends.append(parse_day(x[k]) if x[k] is not None else None)
                except ValueError as e:
                    rep.add(p + (k,), str(e))
                    ends.append(None)
            if None not in ends and type(ends[0]) is not type(ends[1]):
                rep.add(p + ("to",), "'from' and 'to' must both be YYYY-MM-DD or both MM-DD")
                continue
            if None not in ends and isinstance(ends[0], date) and ends[0] > ends[1]:
                rep.add(p + ("to",), "ends before it starts")
                continue
            ph = self._hours(rep, p + ("hours",), x["hours"])
            if None not in ends and x["name"] is not None and ph is not False:
                periods.append(Period(x["name"], ends[0], ends[1], ph))
        if any(v is False for v in hours.values()):
            return empty
        return Calendar(timezone, hours, frozenset(holidays), tuple(periods), c["closed_prompt"])

    @staticmethod
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


def _split(cell: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in cell.split(";") if v.strip())


def _check_id(rep: Reporter, value: str, seen: dict[str, int], line: int) -> bool:
    if not ID.match(value):
        rep.add(("id",), f"{value!r} must match [a-z][a-z0-9_-]{{0,31}}", line)
        return False
    if value in seen:
        rep.add(("id",), f"duplicate id {value!r} (first on line {seen[value]})", line)
        return False
    seen[value] = line
    return True


def _read_csv(path: Path, problems: list[Problem], required: tuple[str, ...], optional: tuple[str, ...] = ()):
    """Rows as (line number, {column: stripped value}). Lines starting with '#' are comments.

    Each physical line is one record (no quoted newlines), so line numbers are exact.
    """
    rep = Reporter(path, problems)
    try:
        text = path.read_text(encoding="utf-8-sig")   # tolerate the BOM Excel writes
    except FileNotFoundError:
        rep.add((), "file not found")
        return rep, []
    except (OSError, UnicodeDecodeError) as e:
        rep.add((), f"cannot read: {e}")
        return rep, []
    header, rows, before = None, [], len(problems)
    for no, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            cells = [c.strip() for c in next(csv.reader([line], strict=True))]
        except csv.Error as e:
            rep.add((), f"malformed CSV: {e}", no)
            continue
        if header is None:
            header = cells
            for c in cells:
                if c not in required + optional:
                    rep.add((c,), f"unknown column (expected: {', '.join(required + optional)})", no)
            for c in required:
                if c not in cells:
                    rep.add((c,), "missing column", no)
            for c in {c for c in cells if cells.count(c) > 1}:
                rep.add((c,), "column appears twice", no)
            if len(problems) > before:
                return rep, []
            continue
        if len(cells) != len(header):
            rep.add((), f"expected {len(header)} fields, found {len(cells)}", no)
            continue
        row = dict(zip(header, cells))
        rows.append((no, row))
    if header is None:
        rep.add((), "empty file (needs a header line)")
    return rep, rows
