"""The asyncio FastAGI server: accepts Asterisk's connections and hands each to a route.

Why not panoramisk's ``fast_agi.Application`` (1.4): it takes the unsolicited ``HANGUP`` line as the
reply to the running command (every later reply is then off by one), it loops forever when a client
closes before the blank line ending the environment, it has no per-command timeout, no line bound
and rejects plain ``def`` routes on Python 3.11+. pyst2's ``asterisk.fastagi`` is Python 2 and its
``asterisk.agi`` installs a SIGHUP handler (main thread only). Both stay as benchmark baselines
(lab.bench); production traffic goes through this module and agi.protocol.

Each connection is an ``asyncio.Protocol`` (``_Link``) feeding agi.protocol.Connection: bytes are
parsed as they arrive, so a ``HANGUP`` line is seen even between commands, and a command costs one
future and one timer instead of a StreamReader round and a ``wait_for`` task (lab.bench measured
``wait_for`` at a fifth of the server's CPU).

What this server guarantees:
* a session that never finishes its environment block is closed after ``idle_timeout``;
* every command has a deadline (``command_timeout`` unless the caller gives one) and a stuck
  Asterisk never pins a coroutine forever;
* a line over ``max_line`` bytes closes the session with one log line;
* at most ``max_sessions`` routes run at once; a connection over the cap is told
  ``SET VARIABLE MADOGUCHI_STATUS OVERLOAD`` and closed so the dialplan can fall back;
* ``stop()`` stops accepting, lets running sessions finish within ``grace`` and then cancels them.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Awaitable, Callable

from .link_server import LinkServer
from .protocol import AGIProtocolError, Connection, Environment, HangupNotice, MAX_LINE, Reply
from .session import AGIClosed, AGIHangup, AGISession

log = logging.getLogger("madoguchi.agi")

Route = Callable[[AGISession], Awaitable[None]]


@dataclass
class ServerLimits:
    max_sessions: int = 1000
    idle_timeout: float = 10.0       # env block must be complete within this
    command_timeout: float = 60.0    # default deadline for one command's reply
    write_timeout: float = 10.0      # a peer that stops reading is dropped
    max_line: int = MAX_LINE
    grace: float = 10.0              # shutdown: how long running calls may finish
    backlog: int = 4096              # listen queue: a burst of calls must not see SYN drops


class _Link(asyncio.Protocol):
    """One TCP connection from Asterisk: parses as bytes arrive, resolves the pending command."""

    def __init__(self, server: "FastAGIServer"):
        self.server = server
        self.conn = Connection(max_line=server.limits.max_line)
        self.transport: asyncio.Transport | None = None
        self.peer = None
        self.waiter: asyncio.Future | None = None
        self.deadline = 0.0
        self.closed = False
        self.started = False
        self.gone = asyncio.Event()     # set on HANGUP or when the link drops: waits can race it
        self._idle: asyncio.TimerHandle | None = None
        self._paused: asyncio.Future | None = None

    # -- asyncio callbacks
    def connection_made(self, transport):
        self.transport = transport
        self.peer = transport.get_extra_info("peername")
        self.server.stats["accepted"] += 1
        self.server._links.add(self)
        self._idle = asyncio.get_running_loop().call_later(self.server.limits.idle_timeout, self._idle_expired)

    def data_received(self, data: bytes):
        try:
            events = self.conn.feed(data)
        except AGIProtocolError as e:
            self.server.stats["errors"] += 1
            log.warning("FastAGI %s: protocol error, session closed: %s", self.peer, e)
            self._lost(AGIClosed(f"protocol error: {e}"))
            self.transport.abort()
            return
        for ev in events:
            if isinstance(ev, HangupNotice):
                self.gone.set()
            elif isinstance(ev, Reply):
                w, self.waiter = self.waiter, None
                if w is not None and not w.done():
                    w.set_result(ev)
            elif isinstance(ev, Environment):
                self._idle.cancel()
                self.started = True
                self.server._start_session(self, ev)

    def eof_received(self):
        if not self.started:
            log.info("FastAGI %s closed before its environment was complete", self.peer)
        self._lost(None)
        return False  # close our side too

    def connection_lost(self, exc):
        self._lost(exc)
        if self._idle:
            self._idle.cancel()
        self.server._links.discard(self)

    def pause_writing(self):
        self._paused = asyncio.get_running_loop().create_future()

    def resume_writing(self):
        if self._paused is not None and not self._paused.done():
            self._paused.set_result(None)
        self._paused = None

    # -- used by AGISession
    def check_open(self) -> None:
        if self.closed:
            raise (AGIHangup("Asterisk closed the connection") if self.conn.hungup else AGIClosed("connection closed"))

    def expect_reply(self, timeout: float) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        self.waiter = loop.create_future()
        self.deadline = loop.time() + timeout   # enforced by FastAGIServer._sweep
        return self.waiter

    @property
    def write_paused(self) -> bool:
        return self._paused is not None

    async def drained(self, timeout: float) -> None:
        if self._paused is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._paused), timeout)
            except asyncio.TimeoutError:
                raise AGIClosed("Asterisk stopped reading") from None

    def expire(self, now: float) -> None:
        w = self.waiter
        if w is not None and not w.done() and now >= self.deadline:
            self.waiter = None
            w.set_exception(asyncio.TimeoutError())

    def close(self) -> None:
        self.closed = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    # -- internals
    def _lost(self, exc):
        self.closed = True
        self.gone.set()
        w, self.waiter = self.waiter, None
        if w is not None and not w.done():
            if isinstance(exc, AGIClosed):
                w.set_exception(exc)
            elif self.conn.hungup:
                w.set_exception(AGIHangup("Asterisk closed the connection"))
            else:
                w.set_exception(AGIClosed(f"connection lost: {exc}" if exc else "EOF"))

    def _idle_expired(self):
        if not self.started:
            self.server.stats["timeouts"] += 1
            log.warning("FastAGI %s: no complete environment within %.1fs; closed", self.peer,
                        self.server.limits.idle_timeout)
            self.close()


class FastAGIServer(LinkServer):
    protocol_name = "FastAGI"

    def __init__(self, routes: dict[str, Route], host: str = "127.0.0.1", port: int = 4573,
                 limits: ServerLimits | None = None, fallback: Route | None = None):
        super().__init__(host, port, limits or ServerLimits())
        self.routes = dict(routes)
        self.fallback = fallback
        self.active = 0
        self.stats = {"accepted": 0, "completed": 0, "rejected": 0, "errors": 0, "timeouts": 0}

    def _make_link(self) -> "_Link":
        return _Link(self)

    def _start_session(self, link: "_Link", env: Environment) -> None:
        self._spawn(self._run(link, env))

    async def _run(self, link: _Link, env: Environment) -> None:
        session = AGISession(env, link, self.limits)
        try:
            route = self.routes.get(env.script, self.fallback)
            if self.active >= self.limits.max_sessions:
                self.stats["rejected"] += 1
                log.warning("FastAGI over capacity (%d sessions): %s rejected", self.active, env["uniqueid"])
                await session.set_variable("MADOGUCHI_STATUS", "OVERLOAD")
                return
            if route is None:
                log.warning("FastAGI: no route for script %r", env.script)
                await session.set_variable("MADOGUCHI_STATUS", "NOROUTE")
                return
            self.active += 1
            try:
                await route(session)
                self.stats["completed"] += 1
            finally:
                self.active -= 1
        except AGIClosed:
            pass  # the channel or link went away; the route has recorded what it knew
        except asyncio.CancelledError:
            raise
        except Exception:
            self.stats["errors"] += 1
            log.exception("FastAGI %s: route failed", link.peer)
        finally:
            link.close()
