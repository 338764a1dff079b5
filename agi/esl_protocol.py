"""FreeSWITCH Event Socket (ESL) wire format, sans I/O. Both sides: the app (inbound client and
outbound server) and the lab emulator (lab.esl_emulator) frame bytes with this module.

Facts from the golden transcripts of FreeSWITCH 1.10.12 (../shared/golden/freeswitch-1.10/README.md):
* A message is a header block of ``Name: value\\n`` lines ended by an empty line; with
  ``Content-Length: N`` exactly N body bytes follow (not terminated). ``\\n`` only, never ``\\r\\n``.
* ``command/reply`` has no body (``Content-Type`` then ``Reply-Text``; a bgapi reply adds ``Job-UUID``).
  ``api/response`` puts ``Content-Type`` first and a body that may or may not end in ``\\n``.
  ``text/event-plain`` puts ``Content-Length`` first; its body is the event: ``Name: url-encoded value``
  lines, an empty line, and when the event has a body (BACKGROUND_JOB) a *nested* Content-Length.
* The reply to ``connect`` (outbound socket) is one header block with no body: the channel data
  (URL-encoded) followed by ``Content-Type: command/reply``, ``Reply-Text: %2BOK%0A`` (URL-encoded
  too), ``Socket-Mode``, ``Control``.
* ``text/disconnect-notice`` ends a session (``Content-Disposition: linger`` while lingering).

Commands are ``verb args\\n\\n``; ``sendmsg`` and ``bgapi`` may carry header lines before the blank
line. A line break (or NUL) inside any value would end the header or the command early and let the
rest be read as a new header or a second command, so every encoder refuses them (ESLUsageError).
"""
from __future__ import annotations

import json
import re
import uuid as _uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Iterable
from urllib.parse import unquote

MAX_HEADER_BYTES = 256 * 1024        # the connect reply is ~6 KiB; a huge header block is hostile
MAX_BODY_BYTES = 4 * 1024 * 1024     # api/bgapi output ("show calls") can be large, but bounded
MAX_HEADERS = 2048                   # CHANNEL_HANGUP_COMPLETE has ~230

DISCONNECT_BODY = "Disconnected, goodbye.\nSee you at ClueCon! http://www.cluecon.com/\n"

# FreeSWITCH's SWITCH_URL_UNSAFE (switch_utils.h) plus everything outside ' '..'~'.
_URL_UNSAFE = set('\r\n "#%&+:;<=>?@[\\]^`{|}')
_HEX = "0123456789ABCDEF"


class ESLProtocolError(Exception):
    """The peer broke the framing (oversized message, bad Content-Length, garbage)."""


class ESLUsageError(ValueError):
    """A command could not be encoded safely (a value would inject a header or a second command)."""


# ---------------------------------------------------------------- URL encoding (switch_url_encode)

def url_encode(value: str) -> str:
    """Encode like FreeSWITCH's ``switch_url_encode`` (used by ``switch_event_serialize``): the
    unsafe set and non-printables become ``%XX`` (UTF-8 bytes), and, as in FreeSWITCH, an existing
    ``%XX`` escape with upper-case hex digits is kept rather than double-encoded."""
    raw = value.encode("utf-8")
    out = []
    n = len(raw)
    i = 0
    while i < n:
        b = raw[i]
        c = chr(b)
        if c == "%" and i + 2 < n and chr(raw[i + 1]) in _HEX and chr(raw[i + 2]) in _HEX:
            out.append(c)
        elif b < 0x20 or b > 0x7E or c in _URL_UNSAFE:
            out.append("%" + _HEX[b >> 4] + _HEX[b & 15])
        else:
            out.append(c)
        i += 1
    return "".join(out)


def url_decode(value: str) -> str:
    return unquote(value, errors="replace") if "%" in value else value


# ---------------------------------------------------------------- messages

@dataclass
class Message:
    """One ESL message: ordered headers (raw values, as on the wire) and the body bytes."""

    headers: list[tuple[str, str]]
    body: bytes = b""
    _map: dict[str, str] = field(default_factory=dict, repr=False)

    def __post_init__(self):
        if not self._map:
            for k, v in self.headers:
                self._map.setdefault(k.lower(), v)

    def get(self, name: str, default: str | None = None) -> str | None:
        return self._map.get(name.lower(), default)

    def __getitem__(self, name: str) -> str:
        v = self.get(name)
        if v is None:
            raise KeyError(name)
        return v

    def __contains__(self, name: str) -> bool:
        return name.lower() in self._map

    @property
    def content_type(self) -> str:
        return self.get("Content-Type", "") or ""

    @property
    def reply_text(self) -> str:
        """Reply-Text, decoded when it is the URL-encoded ``%2BOK%0A`` of a connect reply."""
        t = self.get("Reply-Text", "") or ""
        return url_decode(t).strip() if t.startswith("%") else t

    @property
    def ok(self) -> bool:
        return self.reply_text.startswith("+OK")

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    @property
    def is_connect_reply(self) -> bool:
        return self.content_type == "command/reply" and "Event-Name" in self

    def channel_data(self) -> dict[str, str]:
        """The connect reply's channel data, URL-decoded (framing headers left out)."""
        skip = {"content-type", "reply-text", "socket-mode", "control"}
        out: dict[str, str] = {}
        for k, v in self.headers:
            if k.lower() not in skip:
                out.setdefault(k, url_decode(v))
        return out


@dataclass
class Event:
    """A parsed event (text/event-plain or text/event-json). Header values are URL-decoded."""

    headers: dict[str, str]
    body: str = ""
    pairs: list[tuple[str, str]] = field(default_factory=list, repr=False)

    @property
    def name(self) -> str:
        return self.headers.get("Event-Name", "")

    @property
    def subclass(self) -> str:
        return self.headers.get("Event-Subclass", "")

    @property
    def uuid(self) -> str:
        return self.headers.get("Unique-ID", "")

    def get(self, name: str, default: str | None = None) -> str | None:
        return self.headers.get(name, default)

    def __getitem__(self, name: str) -> str:
        return self.headers[name]

    def __contains__(self, name: str) -> bool:
        return name in self.headers

    def variable(self, name: str, default: str | None = None) -> str | None:
        return self.headers.get("variable_" + name, default)

    @classmethod
    def from_message(cls, msg: Message) -> "Event":
        ct = msg.content_type
        if ct == "text/event-plain":
            return parse_plain_event(msg.body)
        if ct == "text/event-json":
            try:
                d = json.loads(msg.body.decode("utf-8"))
            except ValueError as e:
                raise ESLProtocolError(f"bad JSON event: {e}") from None
            body = d.pop("_body", "")
            hdrs = {str(k): str(v) for k, v in d.items()}
            return cls(hdrs, body, list(hdrs.items()))
        raise ESLProtocolError(f"not an event: Content-Type {ct!r}")


def parse_plain_event(data: bytes) -> Event:
    text = data.decode("utf-8", "replace")
    head, sep, rest = text.partition("\n\n")
    pairs: list[tuple[str, str]] = []
    hdrs: dict[str, str] = {}
    for line in head.split("\n"):
        if not line:
            continue
        k, s, v = line.partition(": ")
        if not s:
            k, v = line.rstrip(":"), ""
        v = url_decode(v)
        pairs.append((k, v))
        hdrs.setdefault(k, v)
    body = ""
    if "Content-Length" in hdrs and sep:
        try:
            n = int(hdrs["Content-Length"])
        except ValueError:
            raise ESLProtocolError("bad nested Content-Length in event") from None
        body = rest.encode("utf-8")[:n].decode("utf-8", "replace")
    return Event(hdrs, body, pairs)


# ---------------------------------------------------------------- parser

class Parser:
    """Bytes in, Messages out. Segmentation-agnostic; bounded.

    ``feed()`` raises ESLProtocolError for a header block over ``max_header`` bytes, a
    ``Content-Length`` that is not a number or over ``max_body``, or a line that is not a header.
    """

    def __init__(self, max_header: int = MAX_HEADER_BYTES, max_body: int = MAX_BODY_BYTES):
        self.max_header = max_header
        self.max_body = max_body
        self._buf = bytearray()
        self._pending: tuple[list[tuple[str, str]], int] | None = None   # headers waiting for body
        self.messages = 0

    @property
    def buffered(self) -> int:
        return len(self._buf)

    @property
    def mid_message(self) -> bool:
        """True when a message has started but is not complete (a peer closing now cut it)."""
        return self._pending is not None or bool(self._buf.strip(b"\n"))

    def feed(self, data: bytes) -> list[Message]:
        self._buf += data
        out: list[Message] = []
        while True:
            if self._pending is not None:
                headers, n = self._pending
                if len(self._buf) < n:
                    return out
                body = bytes(self._buf[:n])
                del self._buf[:n]
                self._pending = None
                out.append(Message(headers, body))
                self.messages += 1
                continue
            # FreeSWITCH never sends blank lines between messages, but tolerate them.
            while self._buf[:1] == b"\n":
                del self._buf[:1]
            end = self._buf.find(b"\n\n")
            if end < 0:
                if len(self._buf) > self.max_header:
                    raise ESLProtocolError(f"header block longer than {self.max_header} bytes")
                return out
            if end > self.max_header:
                raise ESLProtocolError(f"header block longer than {self.max_header} bytes")
            block = bytes(self._buf[:end]).decode("utf-8", "replace")
            del self._buf[: end + 2]
            headers = _parse_headers(block)
            cl = None
            for k, v in headers:
                if k.lower() == "content-length":
                    cl = v
                    break
            if cl is None:
                out.append(Message(headers))
                self.messages += 1
                continue
            if not cl.isdigit():
                raise ESLProtocolError(f"bad Content-Length {cl[:20]!r}")
            n = int(cl)
            if n > self.max_body:
                raise ESLProtocolError(f"body of {n} bytes is over the {self.max_body}-byte limit")
            self._pending = (headers, n)


def _parse_headers(block: str) -> list[tuple[str, str]]:
    lines = block.split("\n")
    if len(lines) > MAX_HEADERS:
        raise ESLProtocolError(f"more than {MAX_HEADERS} headers")
    out = []
    for line in lines:
        k, sep, v = line.partition(": ")
        if not sep:
            if line.endswith(":") and _NAME.match(line[:-1]):
                k, v = line[:-1], ""
            else:
                raise ESLProtocolError(f"not an ESL header line: {line[:80]!r}")
        elif not _NAME.match(k):
            raise ESLProtocolError(f"bad ESL header name: {k[:80]!r}")
        out.append((k, v))
    return out


# ---------------------------------------------------------------- encoding (app -> FreeSWITCH)

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:\-]*$")
_HDR = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")   # header names we send (no ':')
_WORD = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_\-]*$")
_EVENT_NAME = re.compile(r"^[A-Za-z0-9_:]+$")


def check_value(value: object, what: str = "value") -> str:
    s = str(value)
    if any(c in s for c in "\r\n\0"):
        raise ESLUsageError(f"ESL {what} cannot contain line breaks or NUL")
    return s


def command(verb: str, *args: object, headers: Iterable[tuple[str, object]] = ()) -> bytes:
    """``verb arg arg\\n[Header: value\\n...]\\n``. Refuses line breaks anywhere and bad header names."""
    if not _WORD.match(verb):
        raise ESLUsageError(f"bad ESL command {verb!r}")
    line = " ".join([verb] + [check_value(a, "argument") for a in args if str(a) != ""])
    out = [line + "\n"]
    for k, v in headers:
        if not _HDR.match(k):
            raise ESLUsageError(f"bad ESL header name {k!r}")
        out.append(f"{k}: {check_value(v, 'header value')}\n")
    out.append("\n")
    return "".join(out).encode("utf-8")


def auth(password: str) -> bytes:
    s = check_value(password, "password")
    if " " in s or not s:
        raise ESLUsageError("ESL password must be one non-empty word")
    return command("auth", s)


def connect() -> bytes:
    return b"connect\n\n"


def myevents(uuid: str | None = None, fmt: str = "") -> bytes:
    return command("myevents", *(a for a in (uuid, fmt) if a))


def linger(seconds: int | None = None) -> bytes:
    return command("linger", int(seconds)) if seconds is not None else b"linger\n\n"


def exit_() -> bytes:
    return b"exit\n\n"


def event(*names: str, custom: Iterable[str] = (), fmt: str = "plain") -> bytes:
    """``event plain NAME ... [CUSTOM sub::class ...]``. Everything after CUSTOM is read by FreeSWITCH
    as a subclass, so plain names always go first (see the golden README)."""
    if fmt not in ("plain", "json", "xml"):
        raise ESLUsageError(f"bad event format {fmt!r}")
    words = [fmt]
    for n in names:
        if not _EVENT_NAME.match(n) or n.upper() == "CUSTOM":
            raise ESLUsageError(f"bad event name {n!r}")
        words.append(n)
    custom = list(custom)
    if custom:
        words.append("CUSTOM")
        for c in custom:
            if not _EVENT_NAME.match(c):
                raise ESLUsageError(f"bad event subclass {c!r}")
            words.append(c)
    if len(words) == 1:
        raise ESLUsageError("event needs at least one name")
    return command("event", *words)


def nixevent(*names: str) -> bytes:
    for n in names:
        if not _EVENT_NAME.match(n):
            raise ESLUsageError(f"bad event name {n!r}")
    return command("nixevent", *names)


def filter_(header: str, value: str) -> bytes:
    if not _HDR.match(header):
        raise ESLUsageError(f"bad filter header {header!r}")
    return command("filter", header, check_value(value, "filter value"))


def filter_delete(header: str, value: str | None = None) -> bytes:
    if not _HDR.match(header):
        raise ESLUsageError(f"bad filter header {header!r}")
    return command("filter", "delete", header, *( [check_value(value, "filter value")] if value else []))


def api(cmd: str) -> bytes:
    s = check_value(cmd, "api command").strip()
    if not s:
        raise ESLUsageError("empty api command")
    return command("api", s)


def bgapi(cmd: str, job_uuid: str | None = None) -> bytes:
    s = check_value(cmd, "bgapi command").strip()
    if not s:
        raise ESLUsageError("empty bgapi command")
    hdrs = [("Job-UUID", job_uuid)] if job_uuid else []
    return command("bgapi", s, headers=hdrs)


def sendmsg_execute(app: str, arg: str = "", *, uuid: str | None = None, event_lock: bool = False,
                    event_uuid: str | None = None, loops: int | None = None) -> bytes:
    """``sendmsg [uuid]`` with ``call-command: execute``. ``Event-UUID`` (FreeSWITCH copies it into
    the Application-UUID of CHANNEL_EXECUTE / CHANNEL_EXECUTE_COMPLETE) is sent when given."""
    if not _WORD.match(app):
        raise ESLUsageError(f"bad application name {app!r}")
    hdrs: list[tuple[str, object]] = [("call-command", "execute"), ("execute-app-name", app)]
    if str(arg) != "":
        hdrs.append(("execute-app-arg", check_value(arg, "application argument")))
    if loops is not None:
        hdrs.append(("loops", int(loops)))
    if event_lock:
        hdrs.append(("event-lock", "true"))
    if event_uuid:
        hdrs.append(("Event-UUID", event_uuid))
    return command("sendmsg", *([check_value(uuid, "uuid")] if uuid else []), headers=hdrs)


def sendmsg_hangup(cause: str = "NORMAL_CLEARING", *, uuid: str | None = None) -> bytes:
    return command("sendmsg", *([uuid] if uuid else []),
                   headers=[("call-command", "hangup"), ("hangup-cause", check_value(cause))])


def new_uuid() -> str:
    return str(_uuid.uuid4())


# ---------------------------------------------------------------- encoding (FreeSWITCH -> app; the emulator)

def frame(headers: Iterable[tuple[str, object]], body: bytes | str = b"") -> bytes:
    """A message with headers in the given order; the caller places Content-Length where
    FreeSWITCH does (``content_length=True`` style is deliberately not automatic)."""
    if isinstance(body, str):
        body = body.encode("utf-8")
    head = "".join(f"{k}: {v}\n" for k, v in headers)
    return (head + "\n").encode("utf-8") + body


def reply(text: str, *extra: tuple[str, str]) -> bytes:
    return frame([("Content-Type", "command/reply"), ("Reply-Text", text), *extra])


def api_response(body: str) -> bytes:
    b = body.encode("utf-8")
    return frame([("Content-Type", "api/response"), ("Content-Length", len(b))], b)


def serialize_event(pairs: Iterable[tuple[str, str]], body: str | None = None) -> bytes:
    """``switch_event_serialize`` (plain): URL-encoded values, a nested Content-Length for a body."""
    text = "".join(f"{k}: {url_encode(str(v))}\n" for k, v in pairs)
    if body is not None:
        b = body.encode("utf-8")
        return (text + f"Content-Length: {len(b)}\n\n").encode("utf-8") + b
    return (text + "\n").encode("utf-8")


def event_plain(pairs: Iterable[tuple[str, str]], body: str | None = None) -> bytes:
    data = serialize_event(pairs, body)
    return frame([("Content-Length", len(data)), ("Content-Type", "text/event-plain")], data)


def disconnect_notice(uuid: str | None = None, *, linger: int | None = None, channel_name: str = "") -> bytes:
    """The two recorded forms: ``linger`` (Linger-Time, empty body) and ``disconnect`` (the goodbye)."""
    if linger is not None:
        return frame([("Content-Type", "text/disconnect-notice"), ("Controlled-Session-UUID", uuid),
                      ("Content-Disposition", "linger"), ("Channel-Name", channel_name),
                      ("Linger-Time", linger), ("Content-Length", 0)])
    b = DISCONNECT_BODY.encode()
    hdrs: list[tuple[str, object]] = [("Content-Type", "text/disconnect-notice")]
    if uuid:
        hdrs += [("Controlled-Session-UUID", uuid), ("Content-Disposition", "disconnect")]
    hdrs.append(("Content-Length", len(b)))
    return frame(hdrs, b)


class CommandParser:
    """The FreeSWITCH side: reads ``verb args\\n[headers]\\n`` blocks sent by the app."""

    def __init__(self, max_bytes: int = 64 * 1024):
        self.max_bytes = max_bytes
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[str, list[tuple[str, str]]]]:
        self._buf += data
        out = []
        while True:
            while self._buf[:1] in (b"\n", b"\r") and self._buf:
                del self._buf[:1]
            end = self._buf.find(b"\n\n")
            if end < 0:
                if len(self._buf) > self.max_bytes:
                    raise ESLProtocolError("command longer than the limit")
                return out
            block = bytes(self._buf[:end]).decode("utf-8", "replace").replace("\r", "")
            del self._buf[: end + 2]
            lines = block.split("\n")
            hdrs = []
            for line in lines[1:]:
                k, _, v = line.partition(":")
                hdrs.append((k.strip(), v.strip()))
            out.append((lines[0].strip(), hdrs))


# ---------------------------------------------------------------- reply pairing

class ReplySlot:
    __slots__ = ("kind", "future", "deadline", "abandoned")

    def __init__(self, kind: str, future, deadline: float):
        self.kind, self.future, self.deadline, self.abandoned = kind, future, deadline, False


class ReplyQueue:
    """Commands waiting for their ``command/reply`` or ``api/response``, used by both the
    outbound server and the inbound client.

    ESL pairs replies with commands strictly in order and names neither, so a command whose
    wait timed out keeps its slot (``abandon``): its late reply is then thrown away instead of
    being taken for the next command's. Too many abandoned slots mean a dead or desynced peer.
    """

    def __init__(self, max_abandoned: int):
        self.max_abandoned = max_abandoned
        self._slots: deque[ReplySlot] = deque()

    def __bool__(self) -> bool:
        return bool(self._slots)

    def __iter__(self):
        return iter(self._slots)

    def expect(self, kind: str, future, deadline: float = float("inf")) -> ReplySlot:
        slot = ReplySlot(kind, future, deadline)
        self._slots.append(slot)
        return slot

    def resolve(self, kind: str, msg) -> None:
        if not self._slots:
            raise ESLProtocolError(f"{kind} with no command outstanding: {msg.reply_text[:80]!r}")
        slot = self._slots.popleft()
        if slot.kind != kind:
            raise ESLProtocolError(f"expected {slot.kind}, got {kind}: replies out of step")
        if not slot.abandoned and not slot.future.done():
            slot.future.set_result(msg)

    def abandon(self, slot: ReplySlot) -> bool:
        """Give up waiting; True when so many replies are overdue that the link should go."""
        slot.abandoned = True
        return sum(1 for s in self._slots if s.abandoned) > self.max_abandoned

    def fail_all(self, err: Exception) -> None:
        for s in self._slots:
            if not s.future.done():
                s.future.set_exception(err)
                if s.abandoned:
                    s.future.exception()   # nobody waits for it any more
        self._slots.clear()
