"""FastAGI, the application side, sans I/O.

Asterisk is the TCP client: it sends an ``agi_*: value`` environment block ended by an empty line,
then waits for one command line at a time and answers each with a result line. This module turns
bytes into events and commands into bytes; the asyncio server (agi.server) only moves bytes.

Facts from the golden transcripts of Asterisk 22.10.1 (../shared/golden/asterisk-22/README.md):
* Lines end in ``\\n`` (we also accept ``\\r\\n``).
* ``HANGUP\\n`` is unsolicited: it arrives on its own line ~40 ms *after* the running command's
  reply, again when the app closes, or (AGIEXITONHANGUP=yes) in the same segment as the reply.
  It is never a reply. panoramisk 1.4 takes it as the running command's reply and every later reply
  shifts by one; we treat it as a flag instead.
* ``100 result=0 Trying...`` is interim; the real reply follows.
* ``520-`` opens a multi-line usage block closed by ``520 End of proper usage.``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import NamedTuple
from urllib.parse import parse_qsl

MAX_LINE = 8192          # one env line or reply line; Asterisk's own command buffer is 2 KiB
MAX_ENV_LINES = 256      # 22 fixed fields + agi_arg_N; more means a broken or hostile peer

_REPLY = re.compile(r"^(?P<code>\d{3}) result=(?P<result>\S*)(?: \((?P<data>.*)\))?(?: endpos=(?P<endpos>-?\d+))?\s*$")


class AGIProtocolError(Exception):
    """The peer broke the protocol (oversized line, garbage, too many env lines)."""


class AGIUsageError(Exception):
    """A command could not be sent safely (an argument would inject a second command)."""


# ---------------------------------------------------------------- events

@dataclass(frozen=True)
class Environment:
    """The ``agi_*`` block, with the script name split from its query string."""

    vars: dict[str, str]
    args: tuple[str, ...]

    @property
    def script(self) -> str:
        return self.vars.get("agi_network_script", "").split("?", 1)[0].strip("/")

    @property
    def params(self) -> dict[str, str]:
        _, _, q = self.vars.get("agi_network_script", "").partition("?")
        return dict(parse_qsl(q, keep_blank_values=True))

    def __getitem__(self, key: str) -> str:
        return self.vars.get(key if key.startswith("agi_") else "agi_" + key, "")


class Reply(NamedTuple):
    """One result line. A NamedTuple: one is built per command on the hot path."""

    code: int
    result: str = ""
    data: str | None = None
    endpos: int | None = None
    text: str = ""            # the raw line (or the usage block for 520)

    @property
    def ok(self) -> bool:
        return self.code == 200

    @property
    def value(self) -> int:
        """result= as an int; an empty result (GET DATA timeout with no digit) is 0."""
        try:
            return int(self.result)
        except ValueError:
            return 0


@dataclass(frozen=True)
class HangupNotice:
    """The unsolicited ``HANGUP`` line: the caller (or the AGI itself) hung up."""


# ---------------------------------------------------------------- connection state

@dataclass
class Connection:
    """Parses what Asterisk sends; knows whether a command is outstanding.

    ``feed()`` returns events: first one Environment, then Reply and HangupNotice in arrival order.
    """

    max_line: int = MAX_LINE
    _buf: bytearray = field(default_factory=bytearray)
    _env: dict[str, str] | None = field(default_factory=dict)
    _env_done: bool = False
    _usage: list[str] | None = None
    awaiting_reply: bool = False
    hungup: bool = False

    def feed(self, data: bytes) -> list:
        self._buf += data
        events: list = []
        if not self._env_done:
            ev = self._env_block()
            if ev is not None:
                events.append(ev)
        while True:
            nl = self._buf.find(b"\n")
            if nl < 0:
                if len(self._buf) > self.max_line:
                    raise AGIProtocolError(f"line longer than {self.max_line} bytes")
                return events
            if nl > self.max_line:
                raise AGIProtocolError(f"line longer than {self.max_line} bytes")
            raw = bytes(self._buf[:nl]).rstrip(b"\r")
            del self._buf[: nl + 1]
            ev = self._line(raw.decode("utf-8", "replace"))
            if ev is not None:
                events.append(ev)

    def _env_block(self):
        """Fast path: the whole environment block at once (it normally arrives in one or two reads)."""
        end = self._buf.find(b"\n\n")
        if end < 0:
            return None
        block = self._buf[:end].decode("utf-8", "replace")
        if "\r" in block or "HANGUP" in block:
            return None  # CRLF or a hangup inside: the line-by-line path handles it
        lines = block.split("\n")
        if len(lines) > MAX_ENV_LINES:
            raise AGIProtocolError("too many environment lines")
        env = {}
        for line in lines:
            key, sep, value = line.partition(": ")
            if len(line) > self.max_line or not key.startswith("agi_") or not sep and not line.endswith(":"):
                return None  # let the line-by-line path report it precisely
            env[key if sep else line[:-1]] = value
        del self._buf[: end + 2]
        self._env, self._env_done = env, True
        return Environment(env, _args(env))

    def _line(self, line: str):
        if not self._env_done:
            if line == "":
                self._env_done = True
                return Environment(self._env, _args(self._env))
            if line == "HANGUP":  # the caller left before we even started
                self.hungup = True
                return HangupNotice()
            key, sep, value = line.partition(": ")
            if not sep and line.endswith(":"):
                key, value = line[:-1], ""
            elif not sep or not key.startswith("agi_"):
                raise AGIProtocolError(f"not an AGI environment line: {line[:80]!r}")
            if len(self._env) >= MAX_ENV_LINES:
                raise AGIProtocolError("too many environment lines")
            self._env[key] = value
            return None
        if line == "HANGUP":
            self.hungup = True
            return HangupNotice()
        if self._usage is not None:
            self._usage.append(line)
            if line.startswith("520 "):
                text, self._usage = "\n".join(self._usage), None
                return self._finish(Reply(520, text=text))
            return None
        if line.startswith("520-"):
            self._usage = [line]
            return None
        if line.startswith("100 "):
            return None  # "100 result=0 Trying..." is interim: the real reply follows
        if line == "":
            return None
        m = _REPLY.match(line)
        if m:
            endpos = m.group("endpos")
            reply = Reply(int(m.group("code")), m.group("result"), m.group("data"),
                          int(endpos) if endpos is not None else None, line)
        elif line[:3].isdigit() and (len(line) == 3 or line[3] == " "):
            reply = Reply(int(line[:3]), text=line)  # 510, 511, 520 single-line
        else:
            raise AGIProtocolError(f"unexpected line from Asterisk: {line[:80]!r}")
        return self._finish(reply)

    def _finish(self, reply: Reply) -> Reply:
        if not self.awaiting_reply:
            raise AGIProtocolError(f"reply with no command outstanding: {reply.text[:80]!r}")
        self.awaiting_reply = False
        return reply

    def command(self, *words: str | int) -> bytes:
        """Encode one command. The first word(s) are the verb and are sent bare; use
        ``quote()`` (done by ``build()``) for values."""
        if not self._env_done:
            raise AGIUsageError("command before the environment block")
        if self.awaiting_reply:
            raise AGIUsageError("a command is already outstanding")
        line = build(*words)
        self.awaiting_reply = True
        return line


def _args(env: dict[str, str]) -> tuple[str, ...]:
    """``agi_arg_1 … agi_arg_N`` in numeric order (agi_arg_10 after agi_arg_9)."""
    if "agi_arg_1" not in env:
        return ()
    n = [int(k[8:]) for k in env if k.startswith("agi_arg_") and k[8:].isdigit()]
    return tuple(env[f"agi_arg_{i}"] for i in sorted(n))


# ---------------------------------------------------------------- encoding

_VERB = re.compile(r"^[A-Z][A-Z ]*$")
_BARE = re.compile(r"^[A-Za-z0-9_./:@+\-=,#*()]+$")


def quote(value: str | int) -> str:
    """Quote one argument the way res_agi.c's parse_args() reads it back as exactly one word.

    parse_args groups on double quotes and takes the character after a backslash literally, so
    escaping ``"`` and ``\\`` is enough for spaces and quotes. Line breaks cannot be escaped (the
    command ends at the first ``\\n``), so they are refused rather than silently altered.
    """
    s = str(value)
    if any(c in s for c in "\r\n\0"):
        raise AGIUsageError("AGI arguments cannot contain line breaks or NUL")
    if s and _BARE.match(s):
        return s
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def build(verb: str, *args: str | int) -> bytes:
    if not _VERB.match(verb):
        raise AGIUsageError(f"bad AGI verb {verb!r}")
    parts = [verb] + [quote(a) for a in args]
    return (" ".join(parts) + "\n").encode("utf-8")


# Characters that split or expand Asterisk application data: ``,`` and ``|`` separate arguments,
# ``${`` / ``$[`` expand, parentheses and quotes confuse app parsers. Application arguments that
# come from anywhere but our own code must pass this check before EXEC.
_APP_ARG = re.compile(r"^[^,|$()\[\]\"'\\;\r\n\0{}]*$")


def app_data(*args: str | int) -> str:
    for a in args:
        if not _APP_ARG.match(str(a)):
            raise AGIUsageError(f"unsafe application argument {str(a)[:40]!r}")
    return ",".join(str(a) for a in args)
