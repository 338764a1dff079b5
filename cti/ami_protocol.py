"""AMI wire format, sans I/O: the framing shared by the AMI client (cti.ami) and the lab emulator's AMI server.

AMI is ``Key: Value\\r\\n`` lines, one empty line ends a message. Header order matters to
humans and to byte-exact golden comparisons, and keys repeat (``Variable:``, ``Output:``), so a
message is an ordered list of pairs, not a dict.
"""
from __future__ import annotations

from dataclasses import dataclass, field

MAX_MESSAGE_BYTES = 1 << 20  # a CoreShowChannels entry is ~1 KiB; 1 MiB means a broken peer


class AMIProtocolError(Exception):
    """The peer sent something that is not AMI (oversized message, missing banner)."""


@dataclass
class Message:
    """One AMI message: ordered ``(key, value)`` pairs."""

    pairs: list[tuple[str, str]] = field(default_factory=list)

    def get(self, key: str, default: str | None = None) -> str | None:
        lk = key.lower()
        for k, v in self.pairs:
            if k.lower() == lk:
                return v
        return default

    def get_all(self, key: str) -> list[str]:
        lk = key.lower()
        return [v for k, v in self.pairs if k.lower() == lk]

    def __getitem__(self, key: str) -> str:
        v = self.get(key)
        if v is None:
            raise KeyError(key)
        return v

    def __contains__(self, key: str) -> bool:
        return self.get(key) is not None

    @property
    def kind(self) -> str:
        """'response', 'event' or 'action' (by the first header)."""
        return self.pairs[0][0].lower() if self.pairs else ""

    @property
    def name(self) -> str:
        return self.pairs[0][1] if self.pairs else ""

    def as_dict(self) -> dict[str, str]:
        """Last value wins; for display and simple lookups."""
        return {k: v for k, v in self.pairs}


def encode(pairs, *, eol: str = "\r\n") -> bytes:
    """Serialise one message. Values may not contain CR or LF: that would inject a header."""
    if isinstance(pairs, Message):
        pairs = pairs.pairs
    elif isinstance(pairs, dict):
        pairs = list(pairs.items())
    out = []
    for k, v in pairs:
        v = "" if v is None else str(v)
        if any(c in k for c in "\r\n:") or "\r" in v or "\n" in v:
            raise ValueError(f"AMI header {k!r} would break framing")
        out.append(f"{k}: {v}{eol}")
    out.append(eol)
    return "".join(out).encode("utf-8")


def action(name: str, action_id: str | None = None, **headers) -> bytes:
    pairs = [("Action", name)]
    if action_id is not None:
        pairs.append(("ActionID", action_id))
    for k, v in headers.items():
        if isinstance(v, (list, tuple)):
            pairs.extend((k, x) for x in v)
        elif v is not None:
            pairs.append((k, v))
    return encode(pairs)


class Parser:
    """Incremental parser. ``feed(bytes)`` returns complete messages.

    Accepts LF as well as CRLF line ends (tolerant reader); the banner line
    (``Asterisk Call Manager/11.0.0``) has no colon-space and is reported via ``banner``.
    """

    def __init__(self, *, expect_banner: bool = False, max_bytes: int = MAX_MESSAGE_BYTES):
        self._buf = bytearray()
        self._pairs: list[tuple[str, str]] = []
        self._size = 0
        self._expect_banner = expect_banner
        self.banner: str | None = None
        self.max_bytes = max_bytes

    def feed(self, data: bytes) -> list[Message]:
        self._buf += data
        out: list[Message] = []
        while True:
            nl = self._buf.find(b"\n")
            if nl < 0:
                if len(self._buf) + self._size > self.max_bytes:
                    raise AMIProtocolError(f"AMI message over {self.max_bytes} bytes")
                return out
            raw = bytes(self._buf[:nl])
            del self._buf[: nl + 1]
            line = raw.rstrip(b"\r").decode("utf-8", "replace")
            if self._expect_banner:
                self._expect_banner = False
                self.banner = line
                continue
            if line == "":
                if self._pairs:
                    out.append(Message(self._pairs))
                    self._pairs, self._size = [], 0
                continue
            self._size += len(raw)
            if self._size > self.max_bytes:
                raise AMIProtocolError(f"AMI message over {self.max_bytes} bytes")
            k, sep, v = line.partition(":")
            if not sep:  # e.g. a bare line inside Command output on old versions
                self._pairs.append(("", line))
                continue
            self._pairs.append((k.strip(), v[1:] if v.startswith(" ") else v))
