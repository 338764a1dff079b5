"""What the FastAGI and the ESL outbound servers share: listening, one deadline sweep for every
link, a task per session, and a graceful stop.

Subclasses set ``protocol_name`` (for logs), build their per-connection protocol in
``_make_link()`` (an object with ``started``, ``close()`` and ``expire(now)``), and spawn
session coroutines with ``_spawn()``.
"""
from __future__ import annotations

import asyncio
import logging

log = logging.getLogger("madoguchi.server")

SWEEP_SECONDS = 0.1  # resolution of command deadlines


class LinkServer:
    protocol_name = "server"

    def __init__(self, host: str, port: int, limits):
        self.host, self.port = host, port
        self.limits = limits          # needs .backlog and .grace
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task] = set()
        self._links: set = set()
        self._sweeper: asyncio.TimerHandle | None = None

    def _make_link(self):
        raise NotImplementedError

    async def start(self):
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._make_link, self.host, self.port,
                                                backlog=self.limits.backlog)
        self.port = self._server.sockets[0].getsockname()[1]
        self._sweeper = loop.call_later(SWEEP_SECONDS, self._sweep)
        log.info("%s listening on %s:%d", self.protocol_name, self.host, self.port)
        return self

    def _sweep(self) -> None:
        """Expire overdue replies. One coarse timer for all sessions instead of one per command:
        a per-command timer and its cancellation were a tenth of the server's CPU (lab.bench)."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        for link in list(self._links):
            link.expire(now)
        self._sweeper = loop.call_later(SWEEP_SECONDS, self._sweep)

    async def serve_forever(self) -> None:
        if self._server is None:
            await self.start()
        await self._server.serve_forever()

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting, let running sessions finish for ``grace`` seconds, cancel the rest."""
        grace = self.limits.grace if grace is None else grace
        if self._server is not None:
            self._server.close()
        for link in list(self._links):
            if not link.started:
                link.close()
        tasks = [t for t in self._tasks if not t.done()]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace)
            for t in pending:
                t.cancel()
            if pending:
                log.warning("shutdown: %d %s session(s) cancelled after %.1fs grace",
                            len(pending), self.protocol_name, grace)
                await asyncio.gather(*pending, return_exceptions=True)
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        if self._server is not None:
            await self._server.wait_closed()

    async def __aenter__(self):
        return await self.start()

    async def __aexit__(self, *exc):
        await self.stop()
