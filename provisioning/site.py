"""The *site* folder: published numbers, call flows, queues, agents, directory, calendars, prompts.

Loading never stops at the first mistake: every file is read, then cross-references are
checked, and `SiteError` carries all problems with file, line and field.
"""
from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .calendar import Calendar, Period, load_calendars
from .flows import Flow, Node, load_flows
from .problems import REQUIRED, TABLES, Problem, ProblemsError, Reporter, read_toml, take
from .values import DIGITS, ENDPOINT, ID, LANG, TimeRange, e164, normalize_number, parse_time_range

__all__ = ["Site", "SiteError", "PublishedNumber", "Flow", "Node", "Queue", "Agent", "DirectoryEntry", "Trunk",
           "Calendar", "Period", "TimeRange", "load_site", "STRATEGIES", "DEFAULT_LEVEL", "MAX_LEVEL"]

MODES = ("normal", "disaster")


class SiteError(ProblemsError):
    pass


@dataclass(frozen=True)
class PublishedNumber:
    number: str          # national form, digits only: 0223984894
    e164: str            # +81223984894
    label: str
    mode: str            # normal | disaster
    flow: str            # the flow this number runs
    recorded: bool = True  # play the recording notice before any operator answers


STRATEGIES = ("longest-idle", "most-skilled", "round-robin")
FALLBACKS = ("callback", "voicemail", "message:<prompt-id>")
DEFAULT_LEVEL = 5          # a bare skill in agents.csv ("general") means general:5
MAX_LEVEL = 10


@dataclass(frozen=True)
class Queue:
    id: str
    name: str
    skill: str
    languages: tuple[str, ...]
    max_wait: int
    # ACD rules (acd/engine.py); defaults keep a queue without them working as before
    strategy: str = "longest-idle"          # longest-idle | most-skilled | round-robin
    min_level: int = 1                      # lowest level of `skill` that takes calls at first
    widen_after: int | None = None          # s of waiting after which any level of `skill` will do
    open_after: int | None = None           # s after which agents with `overflow_skill` may answer
    overflow_skill: str | None = None
    fallback_after: int | None = None       # s after which the caller leaves with `fallback`
    fallback: str | None = None             # callback | voicemail | message:<prompt-id>
    wrapup: int = 10                        # s of after-call work before the next call
    wrapup_until_record: bool = False       # after-call work ends only when the record is saved
    ring_timeout: int = 20                  # s one operator's phone rings
    pause_after_misses: int = 2             # consecutive unanswered offers that pause an operator (0: never)
    max_length: int = 50                    # callers waiting at most; more hear the congestion message


@dataclass(frozen=True)
class Agent:
    id: str
    name: str
    endpoint: str        # PJSIP/op1001
    skills: tuple[str, ...]          # skill names, e.g. ("general", "disaster")
    languages: tuple[str, ...]
    levels: dict[str, int] = field(default_factory=dict, compare=False)   # skill -> 1..10

    @property
    def endpoint_name(self) -> str:
        return self.endpoint.split("/", 1)[1]

    def level(self, skill: str) -> int:
        """The agent's level in ``skill``: 0 without it, DEFAULT_LEVEL when no level was written."""
        if skill not in self.skills:
            return 0
        return self.levels.get(skill, DEFAULT_LEVEL)


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
class Site:
    dir: Path
    id: str
    name: str
    timezone: str
    languages: tuple[str, ...]     # first is the default
    skills: tuple[str, ...]
    numbers: tuple[PublishedNumber, ...]
    flows: dict[str, Flow]
    queues: dict[str, Queue]
    agents: list[Agent]
    directory: dict[str, DirectoryEntry]
    calendars: dict[str, Calendar]
    prompts: dict[str, frozenset[str]]   # prompt id -> languages that have a text (ivr_prompts builds them)
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

    def load(self) -> Site:
        site, numbers, trunk, site_rep = self._site()
        self.languages, self.skills = tuple(site["languages"] or ()), tuple(site["skills"] or ())
        timezone = site["timezone"] or "Asia/Tokyo"
        queues = self._queues()
        agents = self._agents()
        directory = self._directory()
        calendars = load_calendars(self.d / "calendar.toml", self.problems, timezone)
        prompts = self._prompts()
        if prompts is not None:
            from ivr_prompts.catalog import SYSTEM_PROMPTS   # played by the engine, not named in flows
            for pid in SYSTEM_PROMPTS:
                if pid not in prompts:
                    self.problems.append(Problem(str(self.d / "prompts.toml"), None, f"prompts.{pid}",
                                                 "prompt played by madoguchi itself is missing"))
        if prompts is not None:
            for qid, q in queues.items():
                if q.fallback and q.fallback.startswith("message:") and q.fallback[8:] not in prompts:
                    self.queue_rep.add(("queues", qid, "fallback"),
                                       f"prompt {q.fallback[8:]!r} is not defined in prompts.toml")
        flows = load_flows(self.d / "flows.toml", self.problems, languages=self.languages, queues=queues,
                           directory=directory, calendars=calendars, prompts=prompts)
        for i, n in numbers:
            if n.flow not in flows:
                site_rep.add(("numbers", i, "flow"), f"flow {n.flow!r} is not defined in flows.toml")
        if directory and trunk is None:
            site_rep.add(("trunk",), "directory.csv has entries but site.toml has no [trunk] (OD gateway)")
        nums = tuple(n for _, n in numbers)
        return Site(self.d, site["id"], site["name"], timezone, self.languages, self.skills, nums,
                    flows, queues, agents, directory, calendars, prompts or {}, trunk)

    def _prompts(self) -> dict[str, frozenset[str]] | None:
        """Which prompt can be played in which language (text or recording); ivr_prompts checks them."""
        from ivr_prompts.texts import load_texts
        before = len(self.problems)
        available = load_texts(self.d, self.problems, self.languages).available()
        return None if not available and len(self.problems) > before else available

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
                                                "mode": (str, "normal"), "flow": (str, REQUIRED),
                                                "recorded": (bool, True)})
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
            if n["flow"] is not None and not ID.match(n["flow"]):
                rep.add(("numbers", i, "flow"), "must be a flow id")
                ok = False
            if ok:
                seen[national] = i
                numbers.append((i, PublishedNumber(national, e164(national), n["label"], n["mode"], n["flow"], n["recorded"])))
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

    # queues.toml
    def _queues(self) -> dict[str, Queue]:
        data, rep = read_toml(self.d / "queues.toml", self.problems)
        self.queue_rep = rep
        if data is None:
            return {}
        top = take(rep, data, (), {"queues": (dict, REQUIRED)})
        queues = {}
        for qid, raw in (top["queues"] or {}).items():
            p = ("queues", qid)
            if not ID.match(qid):
                rep.add(p, "queue id must match [a-z][a-z0-9_-]{0,31}")
            q = take(rep, raw, p, {
                "name": (str, REQUIRED), "skill": (str, REQUIRED), "languages": (list, None),
                "max_wait": (int, 300), "strategy": (str, "longest-idle"), "min_level": (int, 1),
                "widen_after": (int, None), "open_after": (int, None), "overflow_skill": (str, None),
                "fallback_after": (int, None), "fallback": (str, None), "wrapup": (int, 10),
                "wrapup_until_record": (bool, False), "ring_timeout": (int, 20),
                "pause_after_misses": (int, 2), "max_length": (int, 50)})
            if q["skill"] is not None and q["skill"] not in self.skills:
                rep.add(p + ("skill",), f"skill {q['skill']!r} is not listed in site.toml [site] skills")
            langs = self.languages if q["languages"] is None else tuple(q["languages"])
            for lang in langs:
                if lang not in self.languages:
                    rep.add(p + ("languages",), f"language {lang!r} is not in site.toml [site] languages", value=lang)
            if q["max_wait"] is not None and not 0 < q["max_wait"] <= 3600:
                rep.add(p + ("max_wait",), "must be 1-3600 seconds")
            self._queue_rules(rep, p, q)
            if None not in (q["name"], q["skill"], q["max_wait"]):
                queues[qid] = Queue(qid, q["name"], q["skill"], langs, q["max_wait"], q["strategy"], q["min_level"],
                                    q["widen_after"], q["open_after"], q["overflow_skill"], q["fallback_after"],
                                    q["fallback"], q["wrapup"], q["wrapup_until_record"], q["ring_timeout"],
                                    q["pause_after_misses"], q["max_length"])
        return queues

    def _queue_rules(self, rep: Reporter, p: tuple, q: dict) -> None:
        """The ACD fields of one queue: every problem is reported; a wrong value is replaced by its
        default so the rest of the site is still checked against a usable queue."""
        wrong: set[str] = {k for k, v in q.items() if v is None and k in _QUEUE_DEFAULTS and _QUEUE_DEFAULTS[k] is not None}
        for k in wrong:
            q[k] = _QUEUE_DEFAULTS[k]

        def bad(key, message):
            rep.add(p + (key,), message)
            q[key] = _QUEUE_DEFAULTS[key]
            wrong.add(key)
        if q["strategy"] is not None and q["strategy"] not in STRATEGIES:
            bad("strategy", f"must be one of {', '.join(STRATEGIES)}")
        if q["min_level"] is not None and not 1 <= q["min_level"] <= MAX_LEVEL:
            bad("min_level", f"must be a level 1-{MAX_LEVEL}")
        for key, low, high in (("widen_after", 1, 3600), ("open_after", 1, 3600), ("fallback_after", 1, 3600),
                               ("wrapup", 0, 3600), ("ring_timeout", 5, 300), ("pause_after_misses", 0, 100),
                               ("max_length", 1, 10000)):
            if q[key] is not None and not low <= q[key] <= high:
                bad(key, f"must be {low}-{high}" + (" seconds" if key.endswith(("after", "wrapup", "timeout")) else ""))
        if q["overflow_skill"] is not None:
            if q["overflow_skill"] not in self.skills:
                bad("overflow_skill", f"skill {q['overflow_skill']!r} is not listed in site.toml [site] skills")
            elif q["overflow_skill"] == q["skill"]:
                bad("overflow_skill", "must differ from the queue's own skill")
        if q["fallback"] is not None and not _FALLBACK.match(q["fallback"]):
            bad("fallback", "must be 'callback', 'voicemail' or 'message:<prompt-id>'")
        if q["max_wait"] is not None:
            for key in ("widen_after", "open_after", "fallback_after"):
                if q[key] is not None and q[key] >= q["max_wait"]:
                    rep.add(p + (key,), f"must be less than max_wait ({q['max_wait']} s), or it never applies")
        for first, second, message in (
                ("open_after", "overflow_skill", "needs overflow_skill (the group that may answer after open_after)"),
                ("overflow_skill", "open_after", "needs open_after (seconds of waiting before that group may answer)"),
                ("fallback_after", "fallback", "needs fallback (what the caller gets after fallback_after)"),
                ("fallback", "fallback_after", "needs fallback_after (seconds of waiting before the fallback)")):
            if q[first] is not None and q[second] is None:
                if second not in wrong:
                    rep.add(p + (first,), message)
                q[first] = None

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
            skills, levels, levels_ok = self._levels(rep, r["skills"], line)
            ok = ok and levels_ok
            langs = _split(r["languages"])
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
                agents.append(Agent(r["id"], r["name"], r["endpoint"], skills, langs, levels))
        return agents

    @staticmethod
    def _levels(rep: Reporter, cell: str, line: int) -> tuple[tuple[str, ...], dict[str, int], bool]:
        """``general:7;disaster:3`` -> (("general", "disaster"), {"general": 7, "disaster": 3}, ok).

        A bare skill means level DEFAULT_LEVEL (the format before levels existed).
        """
        names, levels, ok = [], {}, True
        for item in _split(cell):
            name, sep, level = (v.strip() for v in item.partition(":"))
            if sep:
                if not level.isdigit() or not 1 <= int(level) <= MAX_LEVEL:
                    rep.add(("skills",), f"{item!r}: the level must be 1-{MAX_LEVEL} (like general:7)", line)
                    ok = False
                    level = str(DEFAULT_LEVEL)
            if name in levels:
                rep.add(("skills",), f"skill {name!r} is listed twice", line)
                ok = False
                continue
            names.append(name)
            levels[name] = int(level) if sep else DEFAULT_LEVEL
        return tuple(names), levels, ok

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

_QUEUE_DEFAULTS = {"strategy": "longest-idle", "min_level": 1, "widen_after": None, "open_after": None,
                   "overflow_skill": None, "fallback_after": None, "fallback": None, "wrapup": 10,
                   "wrapup_until_record": False, "ring_timeout": 20, "pause_after_misses": 2, "max_length": 50}
_FALLBACK = re.compile(r"^(callback|voicemail|message:[a-z0-9][a-z0-9_-]{0,63})$")


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
