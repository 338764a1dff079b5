"""The asyncio outbound ESL server: FreeSWITCH's ``socket`` dialplan app connects here, one TCP
connection per call (``<action application="socket" data="host:port async full"/>``).

Why not greenswitch 0.0.19 (gevent): its ``send()`` has no timeout (a FreeSWITCH that stops
answering pins the greenlet forever), it pairs replies with commands strictly in order with no
way to abandon one (a late reply after a caller gave up is taken as the next command's), its
outbound server polls ``accept`` every 0.1 s (up to 100 ms added to every call's setup; see
lab/bench_esl.py for the figures), and gevent's monkey-patching does not mix with the asyncio
FastAGI/AMI code. This module follows agi.server instead.

Each connection is an ``asyncio.Protocol`` (``_Link``) feeding agi.esl_protocol.Parser, so events
are parsed as they arrive, whatever the segmentation. What this server guarantees:
* the ``connect`` reply must come within ``idle_timeout`` (then myevents/linger, each with a deadline);
* every wait has a deadline (command replies, application completions, events, ``exit``) enforced
  by one sweep timer; a timed-out reply slot stays in the FIFO so a late reply is discarded and never
  shifts later replies; too many abandoned slots mean a dead peer and close the link;
* header blocks and bodies are bounded (``max_header``, ``max_body``): over the bound, the session
  is closed with one log line;
* at most ``max_sessions`` routes run; a call over the cap gets ``MADOGUCHI_STATUS=OVERLOAD``
  (``api uuid_setvar``) and ``exit``, so the dialplan after ``socket`` can fall back;
* CHANNEL_HANGUP / the linger disconnect-notice mark the session hung up (ESLHangup), a dropped
  link fails every waiter at once;
* ``stop()`` stops accepting, lets running sessions finish within ``grace``, then cancels them.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Awaitable, Callable

from . import esl_protocol as P
from .esl_protocol import ESLProtocolError, Event, Message
from .esl_session import ESLClosed, ESLCommandError, ESLError, ESLHangup, ESLSession, ESLTimeout

from .link_server import LinkServer

log = logging.getLogger("madoguchi.esl")

Route = Callable[[ESLSession], Awaitable[None]]

MAX_ABANDONED = 16          # timed-out replies still owed by FreeSWITCH before the link is declared dead


@dataclass
class ESLLimits:
    max_sessions: int = 1000
    idle_timeout: float = 10.0       # the connect reply must arrive within this
    command_timeout: float = 10.0    # command/reply and api/response
    execute_timeout: float = 3600.0  # default bound for one application (callers pass their own)
    hangup_grace: float = 5.0        # after CHANNEL_HANGUP, how long the running app may take to complete
    exit_timeout: float = 2.0        # ``exit`` at the end of a session
    write_timeout: float = 10.0
    max_header: int = P.MAX_HEADER_BYTES
    max_body: int = P.MAX_BODY_BYTES
    grace: float = 10.0
    backlog: int = 4096
    linger: bool = True              # see the trailing events (EXECUTE_COMPLETE, HANGUP_COMPLETE) after a hangup
    events: tuple[str, ...] = ()     # extra ``event plain`` names after myevents (e.g. RECORD_START)


class _Exec:
    __slots__ = ("app", "arg", "event_uuid", "app_uuid", "future", "deadline", "started")

    def __init__(self, app, arg, event_uuid, future, deadline):
        self.app, self.arg, self.event_uuid = app, arg, event_uuid
        self.app_uuid: str | None = None
        self.future, self.deadline, self.started = future, deadline, False


class _Link(asyncio.Protocol):
    """One TCP connection from FreeSWITCH."""

    def __init__(self, server: "ESLServer"):
        self.server = server
        lim = server.limits
        self.parser = P.Parser(max_header=lim.max_header, max_body=lim.max_body)
        self.transport: asyncio.Transport | None = None
        self.peer = None
        self.replies = P.ReplyQueue(MAX_ABANDONED)
        self.execs: list[_Exec] = []
        self.event_waiters: list[tuple[tuple[str, ...], asyncio.Future, float]] = []
        self.channel: dict[str, str] = {}
        self.uuid = ""
        self.hungup = False
        self.hangup_cause: str | None = None
        self.closed = False
        self.gone = asyncio.Event()     # hung up or link lost
        self.eof = asyncio.Event()      # link lost
        self.linger_notice = False
        self.task: asyncio.Task | None = None
        self.started = False
        self._paused: asyncio.Future | None = None

    # -- asyncio callbacks
    def connection_made(self, transport):
        self.transport = transport
        self.peer = transport.get_extra_info("peername")
        self.server.stats["accepted"] += 1
        self.server._links.add(self)
        self.task = self.server._spawn(self.server._run(self))

    def data_received(self, data: bytes):
        try:
            msgs = self.parser.feed(data)
        except ESLProtocolError as e:
            self.server.stats["errors"] += 1
            log.warning("ESL %s: protocol error, session closed: %s", self.peer, e)
            self._lost(ESLClosed(f"protocol error: {e}"))
            self.transport.abort()
            return
        for msg in msgs:
            try:
                self._on_message(msg)
            except ESLProtocolError as e:
                self.server.stats["errors"] += 1
                log.warning("ESL %s: protocol error, session closed: %s", self.peer, e)
                self._lost(ESLClosed(f"protocol error: {e}"))
                self.transport.abort()
                return

    def eof_received(self):
        if self.parser.mid_message:
            log.info("ESL %s closed in the middle of a message", self.peer)
        self._lost(None)
        return False

    def connection_lost(self, exc):
        self._lost(exc)
        self.server._links.discard(self)

    def pause_writing(self):
        self._paused = asyncio.get_running_loop().create_future()

    def resume_writing(self):
        if self._paused is not None and not self._paused.done():
            self._paused.set_result(None)
        self._paused = None

    # -- dispatch
    def _on_message(self, msg: Message) -> None:
        ct = msg.content_type
        if ct in ("command/reply", "api/response"):
            if msg.is_connect_reply:
                self.channel = msg.channel_data()
                self.uuid = self.channel.get("Unique-ID", "")
            self.replies.resolve(ct, msg)
        elif ct == "text/event-plain" or ct == "text/event-json":
            self._on_event(Event.from_message(msg))
        elif ct == "text/disconnect-notice":
            disp = msg.get("Content-Disposition", "")
            log.debug("ESL %s: disconnect-notice (%s)", self.uuid, disp or "-")
            if disp == "linger":
                self.linger_notice = True
                self._mark_hungup(self.hangup_cause)
            self._fail_execs()
        else:
            log.debug("ESL %s: ignored %s message", self.uuid, ct or "untyped")

    def _on_event(self, ev: Event) -> None:
        name = ev.name
        mine = not ev.uuid or ev.uuid == self.uuid
        if mine and name == "CHANNEL_HANGUP":
            self._mark_hungup(ev.get("Hangup-Cause"))
        elif mine and name == "CHANNEL_EXECUTE":
            self._exec_started(ev)
        elif mine and name == "CHANNEL_EXECUTE_COMPLETE":
            self._exec_completed(ev)
        if self.event_waiters:
            keep = []
            for names, fut, dl in self.event_waiters:
                if fut.done():
                    continue
                if not names or name in names:
                    fut.set_result(ev)
                else:
                    keep.append((names, fut, dl))
            self.event_waiters = keep

    def _exec_started(self, ev: Event) -> None:
        au = ev.get("Application-UUID")
        for x in self.execs:
            if x.event_uuid == au:
                x.started, x.app_uuid = True, au
                return
        app, data = ev.get("Application", ""), ev.get("Application-Data", "")
        cands = [x for x in self.execs if not x.started and x.app == app]
        for x in cands:
            if x.arg == data:
                x.started, x.app_uuid = True, au
                return
        if cands:   # data differs only by variable expansion (${uuid} ...)
            cands[0].started, cands[0].app_uuid = True, au

    def _exec_completed(self, ev: Event) -> None:
        au = ev.get("Application-UUID")
        match = next((x for x in self.execs if au and (x.app_uuid == au or x.event_uuid == au)), None)
        if match is None:
            app, data = ev.get("Application", ""), ev.get("Application-Data", "")
            match = next((x for x in self.execs if x.app == app and x.arg == data), None)
            if match is None:
                return   # the socket app itself, or an app started by the dialplan
        self.execs.remove(match)
        if not match.future.done():
            match.future.set_result((ev, self.hungup))

    def _mark_hungup(self, cause: str | None) -> None:
        if not self.hungup:
            self.hungup = True
            self.hangup_cause = cause
            self.gone.set()
            # the running app completes right after CHANNEL_HANGUP; do not wait its full deadline
            dl = asyncio.get_running_loop().time() + self.server.limits.hangup_grace
            for x in self.execs:
                x.deadline = min(x.deadline, dl)
        elif cause and not self.hangup_cause:
            self.hangup_cause = cause

    def _fail_execs(self) -> None:
        for x in self.execs:
            if not x.future.done():
                x.future.set_exception(ESLHangup(f"channel gone during {x.app} ({self.hangup_cause})",
                                                 self.hangup_cause) if self.hungup
                                       else ESLClosed(f"session ended during {x.app}"))
        self.execs.clear()

    # -- used by ESLSession
    def check_open(self) -> None:
        if self.closed:
            raise (ESLHangup("channel hung up", self.hangup_cause) if self.hungup else ESLClosed("connection closed"))

    async def request(self, data: bytes, kind: str, timeout: float) -> Message:
        self.check_open()
        loop = asyncio.get_running_loop()
        w = self.replies.expect(kind, loop.create_future(), loop.time() + timeout)
        self.transport.write(data)
        await self._drained()
        try:
            msg = await w.future
        except ESLTimeout:
            verb = data.split(b"\n", 1)[0][:40].decode("utf-8", "replace")
            log.warning("ESL %s: no reply to %r within %.1fs", self.uuid or self.peer, verb, timeout)
            if self.replies.abandon(w):
                log.warning("ESL %s: %d replies overdue; closing the link", self.uuid, MAX_ABANDONED)
                self.close()
            raise ESLTimeout(f"no reply to {verb!r} within {timeout:g}s") from None
        return msg

    async def execute(self, app: str, arg: str, timeout: float, event_lock: bool):
        loop = asyncio.get_running_loop()
        eu = P.new_uuid()
        data = P.sendmsg_execute(app, arg, event_lock=event_lock, event_uuid=eu)
        x = _Exec(app, str(arg), eu, loop.create_future(), loop.time() + timeout)
        self.execs.append(x)
        try:
            r = await self.request(data, "command/reply", self.server.limits.command_timeout)
            if not r.ok:
                raise ESLCommandError(r.reply_text)
            return await x.future
        except ESLTimeout as e:
            log.warning("ESL %s: %s did not complete within %.1fs", self.uuid, app, timeout)
            raise ESLTimeout(f"{app}: {e}") from None
        finally:
            if x in self.execs:
                self.execs.remove(x)

    async def wait_event(self, names: tuple[str, ...], timeout: float) -> Event:
        self.check_open()
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self.event_waiters.append((tuple(names), fut, loop.time() + timeout))
        return await fut

    async def _drained(self) -> None:
        if self._paused is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._paused), self.server.limits.write_timeout)
            except asyncio.TimeoutError:
                self.close()
                raise ESLClosed("FreeSWITCH stopped reading") from None

    def expire(self, now: float) -> None:
        for w in self.replies:
            if not w.abandoned and not w.future.done() and now >= w.deadline:
                w.future.set_exception(ESLTimeout())
        for x in self.execs:
            if not x.future.done() and now >= x.deadline:
                x.future.set_exception(ESLTimeout(f"no CHANNEL_EXECUTE_COMPLETE for {x.app}"))
        if self.event_waiters:
            for names, fut, dl in self.event_waiters:
                if not fut.done() and now >= dl:
                    fut.set_exception(ESLTimeout(f"no {'/'.join(names) or 'event'} in time"))

    def close(self) -> None:
        self.closed = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def _lost(self, exc) -> None:
        self.eof.set()
        if self.closed and not self.replies and not self.execs and not self.event_waiters:
            self.gone.set()
            return
        self.closed = True
        self.gone.set()
        if isinstance(exc, ESLClosed):
            err = exc
        elif self.hungup:
            err = ESLHangup(f"channel hung up ({self.hangup_cause}); FreeSWITCH closed", self.hangup_cause)
        else:
            err = ESLClosed(f"connection lost: {exc}" if exc else "EOF")
        self.replies.fail_all(err)
        for x in self.execs:
            if not x.future.done():
                x.future.set_exception(err)
        self.execs.clear()
        for _, fut, _ in self.event_waiters:
            if not fut.done():
                fut.set_exception(err)
        self.event_waiters = []


class ESLServer(LinkServer):
    """``routes`` are chosen by the channel variable ``madoguchi_route`` (set it in the dialplan
    before ``socket``); ``fallback`` takes the rest."""

    protocol_name = "ESL outbound"

    def __init__(self, routes: dict[str, Route] | None = None, host: str = "127.0.0.1", port: int = 8084,
                 limits: ESLLimits | None = None, fallback: Route | None = None,
                 route_variable: str = "madoguchi_route"):
        super().__init__(host, port, limits or ESLLimits())
        self.routes = dict(routes or {})
        self.fallback = fallback
        self.route_variable = route_variable
        self.active = 0
        self.stats = {"accepted": 0, "completed": 0, "rejected": 0, "errors": 0, "timeouts": 0, "hangups": 0}

    def _make_link(self) -> "_Link":
        return _Link(self)

    # ------------------------------------------------------------ per session
    async def _setup(self, link: _Link, session: ESLSession) -> bool:
        lim = self.limits
        try:
            r = await link.request(P.connect(), "command/reply", lim.idle_timeout)
        except ESLTimeout:
            self.stats["timeouts"] += 1
            log.warning("ESL %s: no connect reply within %.1fs; closed", link.peer, lim.idle_timeout)
            return False
        if not r.is_connect_reply or not link.uuid:
            log.warning("ESL %s: connect reply without channel data (%r); closed", link.peer, r.reply_text)
            return False
        link.started = True
        r = await session.command(P.myevents())
        if not r.ok:
            raise ESLCommandError(r.reply_text)
        if lim.linger:
            await session.command(P.linger())
        if lim.events:
            await session.command(P.event(*lim.events))
        return True

    async def _run(self, link: _Link) -> None:
        session = ESLSession(link, self.limits)
        counted = False
        try:
            if not await self._setup(link, session):
                return
            name = session.variable(self.route_variable, "") or ""
            route = self.routes.get(name, self.fallback)
            if self.active >= self.limits.max_sessions:
                self.stats["rejected"] += 1
                log.warning("ESL over capacity (%d sessions): %s rejected", self.active, link.uuid)
                await session.api(f"uuid_setvar {link.uuid} MADOGUCHI_STATUS OVERLOAD")
                return
            if route is None:
                log.warning("ESL: no route for %s=%r", self.route_variable, name)
                await session.api(f"uuid_setvar {link.uuid} MADOGUCHI_STATUS NOROUTE")
                return
            self.active += 1
            counted = True
            await route(session)
            self.stats["completed"] += 1
        except ESLHangup:
            self.stats["hangups"] += 1
        except (ESLClosed, ESLTimeout):
            pass   # the link went away or stopped answering; the route recorded what it knew
        except asyncio.CancelledError:
            raise
        except Exception:
            self.stats["errors"] += 1
            log.exception("ESL %s: route failed", link.uuid or link.peer)
        finally:
            if counted:
                self.active -= 1
            await self._finish(link)

    async def _finish(self, link: _Link) -> None:
        """End the session, bounded. A hung-up channel without linger is closed by FreeSWITCH itself
        (right after the disconnect-notice): wait for that. Otherwise send ``exit``: FreeSWITCH answers
        ``+OK bye`` and the disconnect-notice, then closes."""
        lim = self.limits
        try:
            if not link.closed and link.started:
                if link.hungup and not lim.linger and not link.linger_notice:
                    await asyncio.wait_for(link.eof.wait(), lim.exit_timeout)
                else:
                    await link.request(P.exit_(), "command/reply", lim.exit_timeout)
                    await asyncio.wait_for(link.eof.wait(), lim.exit_timeout)
        except (ESLError, asyncio.TimeoutError, ESLProtocolError):
            pass
        finally:
            link.close()
