"""One FastAGI session: send a command, wait for *its* reply, never mistake HANGUP for a reply."""
from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from .protocol import Environment, Reply, app_data

if TYPE_CHECKING:
    from .server import ServerLimits

log = logging.getLogger("madoguchi.agi")


class AGIClosed(Exception):
    """The session is over: Asterisk closed the socket, or a reply did not come in time."""


class AGIHangup(AGIClosed):
    """The channel is gone (511 on a dead channel): stop issuing media commands."""


class AGISession:
    """The route's handle on one call. ``command()`` is the one primitive; the rest are typed helpers."""

    def __init__(self, env: Environment, link, limits: "ServerLimits"):
        self.env = env
        self._link = link        # agi.server._Link: owns the socket and the parser
        self._limits = limits

    @property
    def hungup(self) -> bool:
        """True once Asterisk sent ``HANGUP`` (it is parsed as soon as it arrives)."""
        return self._link.conn.hungup

    @property
    def closed(self) -> bool:
        return self._link.closed

    async def wait_gone(self) -> None:
        """Returns when the caller hangs up or the link drops (for waits that send no command)."""
        await self._link.gone.wait()

    @property
    def uniqueid(self) -> str:
        return self.env["uniqueid"]

    async def command(self, verb: str, *args: str | int, timeout: float | None = None) -> Reply:
        """Send one command and return its reply.

        ``timeout`` bounds the wait for the reply; media commands pass their own. On timeout the
        session is closed: a late reply would otherwise be taken for the next command's.
        """
        link = self._link
        link.check_open()
        line = link.conn.command(verb, *args)      # refuses a second outstanding command
        reply_future = link.expect_reply(self._limits.command_timeout if timeout is None else timeout)
        link.transport.write(line)
        if link.write_paused:
            await link.drained(self._limits.write_timeout)
        try:
            reply = await reply_future
        except asyncio.TimeoutError:
            link.close()
            log.warning("AGI %s: no reply to %r in time; session closed", self.uniqueid, verb)
            raise AGIClosed(f"timeout waiting for reply to {verb}") from None
        if reply.code == 511:
            raise AGIHangup(reply.text)
        return reply

    # ------------------------------------------------------------ typed helpers

    async def answer(self) -> None:
        await self.command("ANSWER")

    async def stream_file(self, name: str, escape: str = "", *, max_seconds: float = 600) -> tuple[str | None, int]:
        """Play a prompt. Returns (digit pressed or None, endpos). result=-1 means hung up or missing."""
        r = await self.command("STREAM FILE", name, escape, timeout=max_seconds)
        if r.value < 0:
            # -1 with a position: the caller hung up mid-prompt (HANGUP follows ~40 ms later);
            # -1 at position 0: the file is missing (or the hangup came at its very start)
            if self.hungup or (r.endpos or 0) > 0:
                raise AGIHangup("hung up during playback")
            log.warning("AGI %s: sound %r could not be played (missing?)", self.uniqueid, name)
            return None, 0
        return (chr(r.value) if r.value > 0 else None), r.endpos or 0

    async def get_data(self, prompt: str, timeout_ms: int, max_digits: int, *, max_seconds: float = 600) -> tuple[str, bool]:
        """Play ``prompt`` and collect digits. Returns (digits, timed_out)."""
        r = await self.command("GET DATA", prompt, int(timeout_ms), int(max_digits), timeout=max_seconds)
        if r.result == "-1":
            raise AGIHangup("hung up during GET DATA")
        return r.result, r.data == "timeout"

    async def wait_for_digit(self, timeout_ms: int) -> str | None:
        r = await self.command("WAIT FOR DIGIT", int(timeout_ms), timeout=timeout_ms / 1000 + 30)
        if r.value < 0:
            raise AGIHangup("hung up while waiting for a digit")
        return chr(r.value) if r.value > 0 else None

    async def get_variable(self, name: str) -> str | None:
        r = await self.command("GET VARIABLE", name)
        return r.data if r.value == 1 else None

    async def set_variable(self, name: str, value: str | int) -> None:
        await self.command("SET VARIABLE", name, value)

    async def verbose(self, message: str, level: int = 1) -> None:
        await self.command("VERBOSE", message, level)

    async def exec(self, app: str, *args: str | int, timeout: float | None = None) -> Reply:
        """Run a dialplan application. Arguments are checked by app_data(): a value that could
        split into a second argument or expand a variable is refused before it reaches Asterisk."""
        if not app.isalnum():
            raise ValueError(f"bad application name {app!r}")
        words = (app, app_data(*args)) if args else (app,)
        return await self.command("EXEC", *words, timeout=timeout)

    async def hangup(self) -> None:
        try:
            await self.command("HANGUP")
        except AGIHangup:
            pass
