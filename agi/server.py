"""The asyncio FastAGI server: accepts Asterisk's connections and hands each to a route.

Why not panoramisk's ``fast_agi.Application`` (1.4): it takes the unsolicited ``HANGUP`` line as the
reply to the running command (every later reply is then off by one), it loops forever when a client
closes before the blank line ending the environment, it has no per-command timeout, no line bound
and rejects plain ``def`` routes on Python 3.11+. pyst2's ``asterisk.fastagi`` is Python 2 and its
``asterisk.agi`` installs a SIGHUP handler (main thread only). Both stay as benchmark baselines
(lab.bench); production traffic goes through this module and agi.protocol.

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
import time
from dataclasses import dataclass
from typing import Awaitable, Callable

from .protocol import AGIProtocolError, Connection, Environment, HangupNotice, MAX_LINE, Reply, build
from .session import AGISession, AGIClosed

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


class FastAGIServer:
    def __init__(self, routes: dict[str, Route], host: str = "127.0.0.1", port: int = 4573,
                 limits: ServerLimits | None = None, fallback: Route | None = None):
        self.routes = dict(routes)
        self.host, self.port = host, port
        self.limits = limits or ServerLimits()
        self.fallback = fallback
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task] = set()
        self.active = 0
        self.stats = {"accepted": 0, "completed": 0, "rejected": 0, "errors": 0, "timeouts": 0}

    async def start(self) -> "FastAGIServer":
        self._server = await asyncio.start_server(self._accept, self.host, self.port,
                                                  limit=self.limits.max_line * 2, backlog=1024)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("FastAGI listening on %s:%d", self.host, self.port)
        return self

    async def serve_forever(self) -> None:
        if self._server is None:
            await self.start()
        await self._server.serve_forever()

    async def stop(self, grace: float | None = None) -> None:
        grace = self.limits.grace if grace is None else grace
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        tasks = [t for t in self._tasks if not t.done()]
        if tasks:
            done, pending = await asyncio.wait(tasks, timeout=grace)
            for t in pending:
                t.cancel()
            if pending:
                log.warning("shutdown: %d session(s) cancelled after %.1fs grace", len(pending), grace)
                await asyncio.gather(*pending, return_exceptions=True)

    async def __aenter__(self):
        return await self.start()

    async def __aexit__(self, *exc):
        await self.stop()

    # ------------------------------------------------------------ per connection

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._tasks.add(task)
        self.stats["accepted"] += 1
        peer = writer.get_extra_info("peername")
        conn = Connection(max_line=self.limits.max_line)
        try:
            env = await asyncio.wait_for(_read_env(reader, conn), self.limits.idle_timeout)
            if env is None:
                log.info("FastAGI %s closed before its environment was complete", peer)
                return
            session = AGISession(env, conn, reader, writer, self.limits)
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
        except asyncio.TimeoutError:
            self.stats["timeouts"] += 1
            log.warning("FastAGI %s: no complete environment within %.1fs; closed", peer, self.limits.idle_timeout)
        except AGIProtocolError as e:
            self.stats["errors"] += 1
            log.warning("FastAGI %s: protocol error, session closed: %s", peer, e)
        except AGIClosed:
            pass  # the channel went away; the route has already recorded what it knew
        except asyncio.CancelledError:
            raise
        except Exception:
            self.stats["errors"] += 1
            log.exception("FastAGI %s: route failed", peer)
        finally:
            self._tasks.discard(task)
            await _close(writer)


async def _read_env(reader: asyncio.StreamReader, conn: Connection) -> Environment | None:
    while True:
        data = await reader.read(65536)
        if not data:
            return None  # EOF before the blank line: give up, never spin
        for ev in conn.feed(data):
            if isinstance(ev, Environment):
                return ev
            # a HangupNotice here is kept as conn.hungup


async def _close(writer: asyncio.StreamWriter) -> None:
    try:
        if writer.can_write_eof():
            writer.write_eof()
    except (OSError, RuntimeError):
        pass
    writer.close()
    try:
        await asyncio.wait_for(writer.wait_closed(), 2.0)
    except (OSError, asyncio.TimeoutError, ConnectionError):
        pass
