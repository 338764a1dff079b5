"""Problems found in configuration files, with file/line/field, plus TOML reading helpers.

Validators collect *every* problem instead of stopping at the first, so an operator fixing a
site folder sees the whole list at once. tomllib keeps no positions, so `TomlLines` recovers
the line of each ``key =`` and ``[table]`` by scanning the text.
"""
from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

# A key path inside a document is a tuple: ("menus", "main", "options", "1") or ("numbers", 0, "menu")


@dataclass(frozen=True)
class Problem:
    file: str
    line: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"


class ProblemsError(Exception):
    """Base for errors carrying a list of problems (ConfigError, SiteError)."""

    def __init__(self, problems: list[Problem]):
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems) or "invalid")


_BARE = re.compile(r"^[A-Za-z0-9_-]+$")


def format_path(path: Iterable) -> str:
    """("menus", "main", "options", "1") -> menus.main.options."1"; ints become [i]."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            key = part if _BARE.match(part) else '"' + part.replace("\\", "\\\\").replace('"', '\\"') + '"'
            out += ("." if out else "") + key
    return out


# --- TOML key -> line ---------------------------------------------------------------------

_KEY_PART = r'(?:[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*"|\'[^\']*\')'
_DOTTED = rf"{_KEY_PART}(?:\s*\.\s*{_KEY_PART})*"
_HEADER = re.compile(rf"^\s*(\[\[?)\s*({_DOTTED})\s*\]\]?\s*(?:#.*)?$")
_KEYLINE = re.compile(rf"^\s*({_DOTTED})\s*=")
_PART = re.compile(_KEY_PART)


def _split_key(dotted: str) -> tuple[str, ...]:
    parts = []
    for m in _PART.finditer(dotted):
        p = m.group(0)
        if p[0] == '"':
            p = p[1:-1].encode("utf-8").decode("unicode_escape") if "\\" in p else p[1:-1]
        elif p[0] == "'":
            p = p[1:-1]
        parts.append(p)
    return tuple(parts)


class TomlLines:
    """Line numbers of tables and keys, found by scanning the source text.

    Good enough for error messages: handles dotted and quoted keys, ``[[array]]`` tables
    (indexed per array), and skips multi-line strings. Unknown paths fall back to the line
    of their nearest known ancestor.
    """

    def __init__(self, text: str):
        self.lines: dict[tuple, int] = {}
        self.text = text.splitlines()
        counters: dict[tuple, int] = {}
        table: tuple = ()
        in_ml: str | None = None
        for no, raw in enumerate(text.splitlines(), start=1):
            if in_ml:
                if raw.count(in_ml) % 2 == 1:
                    in_ml = None
                continue
            m = _HEADER.match(raw)
            if m:
                key = _split_key(m.group(2))
                if m.group(1) == "[[":
                    idx = counters.get(key, -1) + 1
                    counters[key] = idx
                    table = key + (idx,)
                    self.lines.setdefault(key, no)
                else:
                    # a sub-table of the latest [[array]] element lives under its index
                    table = self._under_arrays(key, counters)
                self.lines.setdefault(table, no)
                continue
            m = _KEYLINE.match(raw)
            if m:
                self.lines.setdefault(table + _split_key(m.group(1)), no)
                rest = raw[m.end():]
                for q in ('"""', "'''"):
                    if rest.count(q) % 2 == 1:
                        in_ml = q
                        break

    @staticmethod
    def _under_arrays(key: tuple, counters: dict) -> tuple:
        for n in range(len(key), 0, -1):
            if key[:n] in counters:
                return key[:n] + (counters[key[:n]],) + key[n:]
        return key

    def value_line(self, path: Iterable, value: str) -> int | None:
        """Line of a string element of a (multi-line) array under `path`."""
        start = self.line(path)
        if start is None:
            return None
        for no in range(start, min(start + 2000, len(self.text) + 1)):
            line = self.text[no - 1]
            if f'"{value}"' in line or f"'{value}'" in line:
                return no
        return start

    def line(self, path: Iterable) -> int | None:
        path = tuple(path)
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return None


def toml_error_line(err: tomllib.TOMLDecodeError) -> int | None:
    m = re.search(r"at line (\d+)", str(err))
    return int(m.group(1)) if m else None


# --- collecting problems ------------------------------------------------------------------

class Reporter:
    """Collects problems for one file; `at(path)` resolves the line via the file's locator."""

    def __init__(self, file: str | Path, sink: list[Problem], lines: TomlLines | None = None):
        self.file = str(file)
        self.sink = sink
        self.lines = lines

    def add(self, path: Iterable, message: str, line: int | None = None, value: str | None = None) -> None:
        """`value`: the offending element of an array, to point at its own line."""
        path = tuple(path)
        if line is None and self.lines is not None:
            line = self.lines.value_line(path, value) if value is not None else self.lines.line(path)
        self.sink.append(Problem(self.file, line, format_path(path), message))


def read_toml(path: Path, rep_sink: list[Problem]) -> tuple[dict | None, Reporter]:
    """Parse a TOML file; on failure record the problem (with line) and return None."""
    rep = Reporter(path, rep_sink)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        rep.add((), "file not found")
        return None, rep
    except (OSError, UnicodeDecodeError) as e:
        rep.add((), f"cannot read: {e}")
        return None, rep
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        rep.add((), f"invalid TOML: {e}", line=toml_error_line(e))
        return None, rep
    rep.lines = TomlLines(text)
    return data, rep


_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
               list: "an array", dict: "a table"}


def _is(value: Any, typ: type) -> bool:
    if typ is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if typ is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, typ)


_MISSING = object()


def take(rep: Reporter, table: Any, path: tuple, spec: dict[str, tuple]) -> dict[str, Any]:
    """Check a table against ``spec = {key: (type, default)}`` (default ``REQUIRED`` = must exist).

    Reports unknown keys, missing required keys and wrong types; returns the known keys with
    defaults filled in (wrong or missing values become None so callers can carry on).
    """
    out: dict[str, Any] = {}
    if not isinstance(table, dict):
        rep.add(path, "must be a table")
        return {k: (None if d is REQUIRED else d) for k, (t, d) in spec.items()}
    for key in table:
        if key not in spec:
            rep.add(path + (key,), f"unknown key (expected one of: {', '.join(spec)})")
    for key, (typ, default) in spec.items():
        value = table.get(key, _MISSING)
        if value is _MISSING:
            if default is REQUIRED:
                rep.add(path + (key,), "missing required key")
                out[key] = None
            else:
                out[key] = default
        elif typ is TABLES:
            if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
                rep.add(path + (key,), f"must be an array of tables: [[{format_path(path + (key,))}]]")
                out[key] = []
            else:
                out[key] = value
        elif typ is list:
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                rep.add(path + (key,), "must be an array of strings")
                out[key] = None
            else:
                out[key] = value
        elif not _is(value, typ):
            rep.add(path + (key,), f"must be {_TYPE_NAMES[typ]}, not {type(value).__name__}")
            out[key] = None
        else:
            out[key] = float(value) if typ is float else value
    return out


class TABLES:
    """Spec type for an array of tables (``[[numbers]]``)."""


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED = _Required()


def load_or_exit(load, *args, code: int = 2):
    """For commands: run a loader; on problems print each (file:line: field: message) to stderr
    and exit with ``code``, instead of a traceback."""
    try:
        return load(*args)
    except ProblemsError as e:
        import click
        for p in e.problems:
            click.echo(str(p), err=True)
        raise SystemExit(code)
