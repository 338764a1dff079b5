"""Inbound Event Socket client: madoguchi connects to FreeSWITCH (``event_socket.conf.xml``, 8021).

Framing is agi.esl_protocol, shared with the outbound server and the lab emulator.

Behaviour (the contract tests/test_esl_client.py checks):
* ``connect()`` makes one attempt: the ``auth/request`` banner and the ``auth`` reply must come within
  ``connect_timeout``; ``-ERR invalid`` raises ESLAuthError and the client never retries a wrong
  password. The password is a str or an object with ``.reveal()``; it is only revealed while
  encoding ``auth`` and never logged (``repr`` shows ``***``).
* After auth the client subscribes ``event plain <events> BACKGROUND_JOB [CUSTOM <subclasses>]`` and
  re-applies its ``filter``s (adding ``filter Event-Name BACKGROUND_JOB`` so bgapi results pass a
  Unique-ID filter). Subscriptions and filters added later are remembered for reconnects.
* Every command has a deadline (``command_timeout`` or ``timeout=``) -> ESLTimeout. Replies are
  matched in order (FreeSWITCH answers one command at a time); a timed-out slot stays in the queue
  so its late reply is dropped instead of answering the next command.
* ``bgapi()`` sends its own ``Job-UUID`` (honoured by FreeSWITCH), registers it before sending, and
  completes when the BACKGROUND_JOB event with that Job-UUID arrives (deadline ``timeout``).
* A dropped link fails every in-flight command and job with ESLDisconnected at once, then the
  client reconnects with exponential backoff and jitter (``backoff=(base, max)``). Commands while
  down fail at once (no queueing).
* Events go to bounded subscriptions (``subscribe(*names)``); when one is full the oldest event is
  dropped and counted, so a slow consumer never stalls the reader.
"""
from __future__ import annotations

import asyncio
import fnmatch
import logging
import time
from collections import deque
from typing import Iterable

from agi import esl_protocol as P
from agi.esl_protocol import ESLProtocolError, Event, Message
from agi.esl_session import ESLCommandError, ESLError, ESLTimeout
from cti.reconnect import supervise


log = logging.getLogger("madoguchi.cti.esl")

__all__ = ["ESLClient", "ESLAuthError", "ESLDisconnected", "ESLTimeout", "ESLCommandError", "ESLError",
           "EventSubscription"]

MAX_ABANDONED = 8


class ESLDisconnected(ESLError, ConnectionError):
    """The link is down, or went down while the command was in flight."""


class ESLAuthError(ESLError):
    """``auth`` refused. The client does not retry."""


class _Secret:
    __slots__ = ("_v",)

    def __init__(self, v):
        self._v = v

    def reveal(self) -> str:
        v = self._v
        return str(v.reveal() if hasattr(v, "reveal") else v)

    def __repr__(self) -> str:
        return "'***'"

    __str__ = __repr__


class EventSubscription:
    """Bounded FIFO of events whose name (or ``CUSTOM`` subclass) matches one of the fnmatch patterns."""

    def __init__(self, client: "ESLClient", patterns: Iterable[str], maxsize: int):
        self._client = client
        self.patterns = [p.upper() for p in patterns] or ["*"]
        self.maxsize = maxsize
        self._q: deque[Event] = deque()
        self._wake = asyncio.Event()
        self._closed = False
        self.dropped = 0

    def matches(self, ev: Event) -> bool:
        names = (ev.name.upper(), ev.subclass.upper())
        return any(fnmatch.fnmatchcase(n, p) for p in self.patterns for n in names if n)

    def _push(self, ev: Event) -> None:
        if len(self._q) >= self.maxsize:
            self._q.popleft()
            self.dropped += 1
        self._q.append(ev)
        self._wake.set()

    async def get(self, timeout: float | None = None) -> Event:
        async with asyncio.timeout(timeout):
            while not self._q:
                if self._closed:
                    raise StopAsyncIteration
                self._wake.clear()
                await self._wake.wait()
        return self._q.popleft()

    def __aiter__(self):
        return self

    async def __anext__(self) -> Event:
        return await self.get()

    def close(self) -> None:
        self._closed = True
        self._wake.set()
        self._client._subs.discard(self)


class _Link:
    def __init__(self, reader, writer, max_header: int, max_body: int):
        loop = asyncio.get_running_loop()
        self.reader, self.writer = reader, writer
        self.parser = P.Parser(max_header=max_header, max_body=max_body)
        self.banner: asyncio.Future = loop.create_future()
        self.lost: asyncio.Future = loop.create_future()
        self.slots = P.ReplyQueue(MAX_ABANDONED)
        self.authed = False
        self.task: asyncio.Task | None = None
        self.opened_at = time.monotonic()

    @property
    def alive(self) -> bool:
        return not self.lost.done()


class ESLClient:
    def __init__(self, host: str = "127.0.0.1", port: int = 8021, *, password, events: Iterable[str] = (),
                 custom: Iterable[str] = (), filters: Iterable[tuple[str, str]] = (),
                 command_timeout: float = 5.0, connect_timeout: float = 5.0, bgapi_timeout: float = 30.0,
                 backoff: tuple[float, float] = (0.5, 30.0), event_queue_size: int = 10_000,
                 max_header: int = P.MAX_HEADER_BYTES, max_body: int = P.MAX_BODY_BYTES):
        self.host, self.port = host, port
        self._secret = _Secret(password)
        self.events = [e.upper() for e in events]
        self.custom = list(custom)
        self.filters = list(filters)
        self.command_timeout, self.connect_timeout = command_timeout, connect_timeout
        self.bgapi_timeout = bgapi_timeout
        self.backoff = backoff
        self.event_queue_size = event_queue_size
        self.max_header, self.max_body = max_header, max_body
        self.state = "new"     # new | connecting | connected | reconnecting | auth_failed | closed
        self.reconnects = 0
        self.last_error: BaseException | None = None
        self._link: _Link | None = None
        self._jobs: dict[str, asyncio.Future] = {}
        self._subs: set[EventSubscription] = set()
        self._supervisor: asyncio.Task | None = None
        self._closing = False

    def __repr__(self) -> str:
        return f"<ESLClient {self.host}:{self.port} state={self.state} password=***>"

    # ---------------------------------------------------------------- public API
    @property
    def connected(self) -> bool:
        return self._link is not None and self._link.alive and self._link.authed

    async def connect(self) -> None:
        if self._closing:
            raise ESLDisconnected("client is closed")
        if self.connected:
            return
        self.state = "connecting"
        try:
            await self._open(initial=True)
        except ESLAuthError:
            self.state = "auth_failed"
            raise
        except BaseException:
            self.state = "new"
            raise
        self._supervisor = asyncio.get_running_loop().create_task(self._supervise())

    async def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            await asyncio.gather(self._supervisor, return_exceptions=True)
        link = self._link
        if link is not None and link.alive:
            if link.authed:
                try:
                    await self._request(link, P.exit_(), "command/reply", min(self.command_timeout, 2.0))
                except (ESLError, OSError):
                    pass
            await self._drop(link, "client closed")
        self.state = "closed"
        for s in list(self._subs):
            s.close()

    async def __aenter__(self) -> "ESLClient":
        await self.connect()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def api(self, cmd: str, *, timeout: float | None = None) -> str:
        """``api <cmd>`` -> the response body (``-ERR ...`` bodies are returned as they are)."""
        msg = await self._request(self._ready(), P.api(cmd), "api/response", timeout)
        return msg.text

    async def bgapi(self, cmd: str, *, timeout: float | None = None, job_uuid: str | None = None) -> str:
        """``bgapi <cmd>`` and wait for its BACKGROUND_JOB; returns the job's output."""
        link = self._ready()
        job = job_uuid or P.new_uuid()
        data = P.bgapi(cmd, job)
        fut = asyncio.get_running_loop().create_future()
        self._jobs[job] = fut
        t = self.bgapi_timeout if timeout is None else timeout
        try:
            async with asyncio.timeout(t):
                r = await self._request(link, data, "command/reply", None)
                if not r.ok:
                    raise ESLCommandError(r.reply_text)
                return await fut
        except TimeoutError:
            raise ESLTimeout(f"bgapi {cmd.split(' ', 1)[0]} ({job}): no BACKGROUND_JOB within {t:g}s") from None
        finally:
            self._jobs.pop(job, None)

    async def command(self, data: bytes, *, timeout: float | None = None) -> Message:
        """Send an encoded command (agi.esl_protocol); returns the command/reply, ESLCommandError on -ERR."""
        r = await self._request(self._ready(), data, "command/reply", timeout)
        if not r.ok:
            raise ESLCommandError(r.reply_text)
        return r

    async def subscribe_events(self, *names: str, custom: Iterable[str] = ()) -> None:
        new = [n.upper() for n in names if n.upper() not in self.events]
        newc = [c for c in custom if c not in self.custom]
        self.events += new
        self.custom += newc
        if self.connected and (new or newc):
            await self.command(P.event(*self._names(), custom=self.custom))

    async def add_filter(self, header: str, value: str) -> None:
        P.filter_(header, value)   # validate before remembering it
        self.filters.append((header, value))
        if self.connected:
            await self._apply_filters([(header, value)])

    def subscribe(self, *patterns: str, maxsize: int | None = None) -> EventSubscription:
        sub = EventSubscription(self, patterns, maxsize or self.event_queue_size)
        self._subs.add(sub)
        return sub

    # ---------------------------------------------------------------- link management
    def _names(self) -> list[str]:
        return self.events + ([] if "BACKGROUND_JOB" in self.events or "ALL" in self.events else ["BACKGROUND_JOB"])

    def _ready(self) -> _Link:
        link = self._link
        if self._closing:
            raise ESLDisconnected("client is closed")
        if link is None or not link.alive or not link.authed:
            raise ESLDisconnected(f"ESL not connected (state {self.state})")
        return link

    async def _open(self, initial: bool) -> None:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(self.host, self.port),
                                                    self.connect_timeout)
        except asyncio.TimeoutError:
            raise ESLTimeout(f"connect to {self.host}:{self.port} timed out") from None
        link = _Link(reader, writer, self.max_header, self.max_body)
        self._link = link
        link.task = asyncio.get_running_loop().create_task(self._read_loop(link))
        try:
            try:
                await asyncio.wait_for(asyncio.shield(link.banner), self.connect_timeout)
            except asyncio.TimeoutError:
                raise ESLTimeout(f"no auth/request from {self.host}:{self.port}") from None
            r = await self._request(link, P.auth(self._secret.reveal()), "command/reply", self.connect_timeout)
            if not r.ok:
                raise ESLAuthError(f"ESL auth refused by {self.host}:{self.port}: {r.reply_text}")
            link.authed = True
            await self._request_ok(link, P.event(*self._names(), custom=self.custom))
            await self._apply_filters(self.filters, link)
            self.state = "connected"
            if not initial:
                self.reconnects += 1
            log.info("ESL connected to %s:%d", self.host, self.port)
        except BaseException as e:
            await self._drop(link, f"session setup failed: {type(e).__name__}")
            if isinstance(e, ESLDisconnected) and link.lost.done():
                raise ESLDisconnected(f"link lost during setup: {link.lost.result()}") from None
            raise

    async def _apply_filters(self, filters, link: _Link | None = None) -> None:
        link = link or self._ready()
        filters = list(filters)
        if filters and ("Event-Name", "BACKGROUND_JOB") not in self.filters:
            # a Unique-ID filter would hide our own BACKGROUND_JOB results
            self.filters.append(("Event-Name", "BACKGROUND_JOB"))
            filters.append(("Event-Name", "BACKGROUND_JOB"))
        for h, v in filters:
            await self._request_ok(link, P.filter_(h, v))

    async def _request_ok(self, link: _Link, data: bytes) -> Message:
        r = await self._request(link, data, "command/reply", None)
        if not r.ok:
            raise ESLCommandError(r.reply_text)
        return r

    async def _supervise(self) -> None:
        def refused(e):
            log.error("ESL re-auth refused; not reconnecting until connect() is called")
        await supervise(self, "ESL", ESLAuthError, (OSError, ESLError, ESLProtocolError), refused)

    async def _read_loop(self, link: _Link) -> None:
        reason = "EOF"
        try:
            while True:
                data = await link.reader.read(65536)
                if not data:
                    if link.parser.mid_message:
                        reason = "EOF in the middle of a message"
                    break
                for msg in link.parser.feed(data):
                    self._on_message(link, msg)
        except ESLProtocolError as e:
            reason = f"protocol error: {e}"
            log.error("ESL %s:%d sent bad data (%s); dropping the connection", self.host, self.port, e)
        except (ConnectionError, OSError) as e:
            reason = f"{type(e).__name__}: {e}"
        except asyncio.CancelledError:
            reason = "cancelled"
            raise
        finally:
            self._lost(link, reason)

    def _on_message(self, link: _Link, msg: Message) -> None:
        ct = msg.content_type
        if ct == "auth/request":
            if not link.banner.done():
                link.banner.set_result(True)
        elif ct in ("command/reply", "api/response"):
            link.slots.resolve(ct, msg)
        elif ct in ("text/event-plain", "text/event-json"):
            ev = Event.from_message(msg)
            if ev.name == "BACKGROUND_JOB":
                fut = self._jobs.get(ev.get("Job-UUID", ""))
                if fut is not None and not fut.done():
                    fut.set_result(ev.body)
            for sub in list(self._subs):
                if sub.matches(ev):
                    sub._push(ev)
        elif ct == "text/disconnect-notice":
            log.info("ESL %s:%d: disconnect-notice", self.host, self.port)
        else:
            log.debug("ESL: ignored %s message", ct or "untyped")

    async def _request(self, link: _Link, data: bytes, kind: str, timeout: float | None) -> Message:
        if not link.alive:
            raise ESLDisconnected(f"ESL link lost: {link.lost.result()}")
        s = link.slots.expect(kind, asyncio.get_running_loop().create_future())
        t = self.command_timeout if timeout is None else timeout
        verb = data.split(b" ", 1)[0].split(b"\n", 1)[0].decode()
        log.debug("ESL -> %s", verb)   # never the arguments: auth carries the password
        link.writer.write(data)
        try:
            async with asyncio.timeout(t):
                return await asyncio.shield(s.future)
        except TimeoutError:
            if link.slots.abandon(s):
                # replies are paired in order: this many missing means the link is dead or desynced
                log.warning("ESL %s:%d: %d replies overdue; dropping the link", self.host, self.port, MAX_ABANDONED)
                self._lost(link, "replies overdue")
            raise ESLTimeout(f"ESL {verb}: no reply within {t:g}s") from None
        except asyncio.CancelledError:
            link.slots.abandon(s)
            raise

    def _lost(self, link: _Link, reason: str) -> None:
        if link.lost.done():
            return
        link.lost.set_result(reason)
        if not link.banner.done():
            link.banner.set_exception(ESLDisconnected(f"closed before auth/request ({reason})"))
            link.banner.exception()
        try:
            link.writer.close()
        except Exception:
            pass
        err = ESLDisconnected(f"ESL link lost: {reason}")
        link.slots.fail_all(err)
        if link is self._link:
            for job, fut in list(self._jobs.items()):
                if not fut.done():
                    fut.set_exception(err)

    async def _drop(self, link: _Link, reason: str) -> None:
        self._lost(link, reason)
        try:
            await asyncio.wait_for(link.writer.wait_closed(), 1.0)
        except (asyncio.TimeoutError, OSError, ConnectionError):
            pass
        if link.task is not None and link.task is not asyncio.current_task():
            link.task.cancel()
            await asyncio.gather(link.task, return_exceptions=True)
