"""Play the Asterisk side of a golden FastAGI transcript against our server.

The replayer connects like Asterisk, sends the recorded asterisk->app bytes with the recorded
segmentation, and checks that each command the app sends parses (the way res_agi.c's parse_args
does) to the same words as the recorded command. It returns what it saw, for assertions.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from golden import Record
from lab.agi_wire import parse_args

# AGI verbs are one to three words; the rest of a line is arguments.
VERBS = sorted([
    "ANSWER", "STREAM FILE", "CONTROL STREAM FILE", "GET DATA", "SAY DIGITS", "SAY NUMBER", "SAY ALPHA",
    "SET VARIABLE", "GET VARIABLE", "GET FULL VARIABLE", "CHANNEL STATUS", "WAIT FOR DIGIT",
    "DATABASE PUT", "DATABASE GET", "DATABASE DEL", "VERBOSE", "EXEC", "GET OPTION", "RECORD FILE",
    "SET MUSIC", "NOOP", "HANGUP", "SET CONTEXT", "SET EXTENSION", "SET PRIORITY",
], key=lambda v: -len(v.split()))


def split_command(line: str) -> tuple[str, list[str]]:
    words = parse_args(line.rstrip("\n"))
    for verb in VERBS:
        n = len(verb.split())
        if [w.upper() for w in words[:n]] == verb.split():
            return verb, words[n:]
    return words[0] if words else "", words[1:]


@dataclass
class ReplayResult:
    commands: list[str] = field(default_factory=list)   # lines the app sent
    app_closed: bool = False


async def replay(port: int, records: list[Record], *, host: str = "127.0.0.1", step_timeout: float = 5.0) -> ReplayResult:
    reader, writer = await asyncio.open_connection(host, port)
    out = ReplayResult()
    buf = b""
    try:
        for rec in records:
            if rec.from_pbx:
                if rec.eof:
                    writer.close()
                    break
                if rec.data:
                    try:
                        writer.write(rec.raw)
                        await writer.drain()
                    except ConnectionError:
                        if not out.app_closed:
                            raise
                continue
            if rec.eof:  # the app closed in the recording: ours must too
                rest = await asyncio.wait_for(reader.read(), step_timeout)
                assert rest == b"", f"app sent {rest!r} where the recording shows it closing"
                out.app_closed = True
                continue
            if not rec.data:
                continue
            while b"\n" not in buf:
                chunk = await asyncio.wait_for(reader.read(4096), step_timeout)
                assert chunk, f"app closed where the recording shows it sending {rec.data!r}"
                buf += chunk
            line, buf = buf.split(b"\n", 1)
            got = line.decode() + "\n"
            out.commands.append(got)
            assert split_command(got) == split_command(rec.data), f"sent {got!r}, recorded {rec.data!r}"
    finally:
        writer.close()
    return out
