"""A TCP server that replays golden AMI transcripts (tests only).

For each accepted connection it walks one script (a list of ``golden.Record``): asterisk->app
records are sent as recorded; at each app->asterisk record it parses the recorded action(s) and waits
until the client sends a message with the same ``Action`` (case-insensitive), then goes on. An
asterisk->app ``eof`` record closes the socket. After the script the connection stays open and
further client messages are only recorded (``extra``).

ActionID rewriting (on by default) lets the client use its own ids: recorded id X of the matched
action is mapped to the client's id Y in every later ``ActionID:`` line (OriginateResponse and list
events included). If the recorded action had no ActionID but the client's has one, Y is inserted as
the 2nd line of the next Response, where Asterisk puts an echoed id. Rewriting works per line, so a
line split across two recorded reads is sent whole with the later read; with ``rewrite_ids=False``
the recorded segmentation is kept exactly.

``scripts``: the Nth connection plays ``scripts[N]`` (the last one repeats), for reconnect tests.
"""
from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass, field

from cti.ami_protocol import Message, Parser, encode
from golden import Record, load

PBX, APP = "asterisk->app", "app->asterisk"


# ---------------------------------------------------------------- building scripts
def script(src) -> list[Record]:
    return load(src) if isinstance(src, str) else list(src)


def exchanges(records: list[Record]) -> list[list[Record]]:
    """Split a transcript at each app->asterisk record with data: [preamble, [action, answers...], ...]."""
    out: list[list[Record]] = [[]]
    for r in records:
        if not r.from_pbx and r.data:
            out.append([r])
        else:
            out[-1].append(r)
    return out


def exchange(records: list[Record], action: str, nth: int = 0) -> list[Record]:
    """The nth exchange whose recorded action is ``action``."""
    hits = [ex for ex in exchanges(records)[1:]
            if (Parser().feed(ex[0].raw) or [Message()])[0].get("Action", "").lower() == action.lower()]
    return list(hits[nth])


def skip(records: list[Record], n: int) -> list[Record]:
    """Drop the first n exchanges (e.g. the Ping-before-Login of ami_login_and_ping)."""
    ex = exchanges(records)
    return [r for part in ex[:1] + ex[1 + n:] for r in part]


def pbx(data: str | bytes | Message | list) -> Record:
    if isinstance(data, (Message, list)):
        data = encode(data)
    if isinstance(data, bytes):
        data = data.decode("latin-1")
    return Record(PBX, 0.0, data)


def app(data: str | bytes | Message | list) -> Record:
    r = pbx(data)
    return Record(APP, 0.0, r.data)


def eof() -> Record:
    return Record(PBX, 0.0, "", eof=True)


def golden_messages(relpath: str, from_pbx: bool = True) -> list[Message]:
    p = Parser(expect_banner=from_pbx)
    return p.feed(b"".join(r.raw for r in load(relpath) if r.from_pbx == from_pbx))


# ---------------------------------------------------------------- the server
@dataclass
class _Conn:
    received: list[Message] = field(default_factory=list)
    extra: list[Message] = field(default_factory=list)
    idmap: dict[str, str] = field(default_factory=dict)
    inject: str | None = None
    carry: str = ""
    at_start: bool = True
    midline: bool = False
    finished: bool = False


class ReplayServer:
    def __init__(self, *scripts, rewrite_ids: bool = True, chunk: int | None = None,
                 speed: float = 0.0, strict: bool = True, wait_timeout: float = 10.0):
        self.scripts = [script(s) for s in scripts]
        self.rewrite_ids, self.chunk, self.speed = rewrite_ids, chunk, speed
        self.strict, self.wait_timeout = strict, wait_timeout
        self.conns: list[_Conn] = []
        self.errors: list[str] = []
        self._server: asyncio.base_events.Server | None = None
        self._handlers: set[asyncio.Task] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self.host, self.port = "127.0.0.1", 0

    @property
    def connections(self) -> int:
        return len(self.conns)

    @property
    def received(self) -> list[Message]:
        return [m for c in self.conns for m in c.received]

    async def start(self) -> "ReplayServer":
        self._server = await asyncio.start_server(self._handle, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for w in list(self._writers):
            w.close()
        if self._handlers:  # closing the sockets ends the handlers; cancel only stragglers
            _, late = await asyncio.wait(list(self._handlers), timeout=2.0)
            for t in late:
                t.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def __aenter__(self):
        return await self.start()

    async def __aexit__(self, *exc):
        await self.stop()

    async def wait_connections(self, n: int, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while self.connections < n:
                await asyncio.sleep(0.01)

    async def wait_finished(self, conn: int = -1, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while not (self.conns and self.conns[conn].finished):
                await asyncio.sleep(0.01)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._handlers.add(asyncio.current_task())
        self._writers.add(writer)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # let chunk=1 really trickle
        conn = _Conn()
        idx = len(self.conns)
        self.conns.append(conn)
        records = self.scripts[min(idx, len(self.scripts) - 1)]
        inbox: asyncio.Queue[Message | None] = asyncio.Queue()
        reader_task = asyncio.create_task(self._read_client(reader, conn, inbox))
        try:
            await self._play(records, conn, inbox, writer)
            conn.finished = True
            if not writer.is_closing():
                await reader_task  # keep the socket open until the client goes away
        except (ConnectionError, OSError):
            conn.finished = True
        except asyncio.CancelledError:
            pass  # stop(): end quietly (asyncio.streams reports a handler that raises)
        except Exception as e:  # a replay failure must surface in the test, not vanish in a task
            self.errors.append(f"conn {idx}: {type(e).__name__}: {e}")
        finally:
            reader_task.cancel()
            writer.close()
            self._writers.discard(writer)
            self._handlers.discard(asyncio.current_task())

    async def _read_client(self, reader, conn: _Conn, inbox: asyncio.Queue) -> None:
        p = Parser()
        try:
            while data := await reader.read(65536):
                for m in p.feed(data):
                    conn.received.append(m)
                    await inbox.put(m)
        except (ConnectionError, OSError):
            pass
        finally:
            await inbox.put(None)

    async def _play(self, records, conn: _Conn, inbox: asyncio.Queue, writer) -> None:
        last_t = None
        app_parser = Parser()
        for r in records:
            if r.from_pbx:
                if self.speed and last_t is not None and r.t > last_t:
                    await asyncio.sleep((r.t - last_t) * self.speed)
                last_t = r.t
                if r.data:
                    await self._send(writer, self._rewrite(conn, r.data) if self.rewrite_ids else r.data)
                if r.eof:
                    writer.close()
                    return
                continue
            for want in app_parser.feed(r.raw):
                got = await self._expect(want, conn, inbox)
                if got is None:
                    return
                rec_id, cli_id = want.get("ActionID"), got.get("ActionID")
                if rec_id is not None and cli_id is not None:
                    conn.idmap[rec_id] = cli_id
                conn.inject = cli_id if rec_id is None else None
        # The script is over: anything else the client sends is recorded, not checked.
        conn.finished = True

    async def _expect(self, want: Message, conn: _Conn, inbox: asyncio.Queue) -> Message | None:
        name = (want.get("Action") or "").lower()
        while True:
            async with asyncio.timeout(self.wait_timeout):
                got = await inbox.get()
            if got is None:
                return None  # client went away
            if (got.get("Action") or "").lower() == name:
                return got
            msg = f"expected Action {want.get('Action')!r}, client sent {got.get('Action')!r}"
            if self.strict:
                raise AssertionError(msg)
            conn.extra.append(got)

    async def _send(self, writer, text: str) -> None:
        data = text.encode("latin-1")
        step = self.chunk or len(data) or 1
        for i in range(0, len(data), step):
            writer.write(data[i:i + step])
            await writer.drain()
            if self.chunk:
                await asyncio.sleep(0)

    def _rewrite(self, conn: _Conn, data: str) -> str:
        buf = conn.carry + data
        out, start = [], 0
        while (nl := buf.find("\n", start)) >= 0:
            line = buf[start:nl + 1]
            start = nl + 1
            body = line.rstrip("\r\n")
            if conn.midline:  # the tail of a line whose head was already sent
                conn.midline = False
                conn.at_start = False
                out.append(line)
                continue
            if body.startswith("ActionID: "):
                rec = body[len("ActionID: "):]
                line = f"ActionID: {conn.idmap.get(rec, rec)}" + line[len(body):]
            elif conn.at_start and body.startswith("Response: ") and conn.inject is not None:
                line = line + f"ActionID: {conn.inject}" + line[len(body):]
                conn.inject = None
            conn.at_start = body == "" or body.startswith("Asterisk Call Manager/")
            out.append(line)
        rest = buf[start:]
        # Hold back a partial line only if it may still need rewriting; anything else goes out now,
        # so a peer that never ends its line (oversized input tests) is still replayed.
        maybe = [p for p in ("ActionID: ", "Response: ") if p.startswith(rest) or rest.startswith(p)]
        if rest and not conn.midline and maybe and (conn.at_start or maybe != ["Response: "]):
            conn.carry = rest
        else:
            conn.carry = ""
            if rest:
                out.append(rest)
                conn.midline = True
        return "".join(out)
