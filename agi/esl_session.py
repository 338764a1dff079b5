"""One outbound ESL session (FreeSWITCH's ``socket`` app called us): execute an application and wait
for *its* CHANNEL_EXECUTE_COMPLETE, run api commands, read channel variables, see the hangup.

The link (agi.esl_server._Link) owns the socket, the parser and every deadline; this class is the
route's typed handle, like agi.session.AGISession is for FastAGI.
"""
from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from . import esl_protocol as P
from .esl_protocol import Event

if TYPE_CHECKING:
    from .esl_server import ESLLimits, _Link

log = logging.getLogger("madoguchi.esl")


class ESLError(Exception):
    """Base of the ESL errors."""


class ESLClosed(ESLError):
    """The session is over: FreeSWITCH closed the socket or the link broke."""


class ESLHangup(ESLClosed):
    """The channel hung up (CHANNEL_HANGUP, or the linger disconnect-notice). ``cause`` is the
    Hangup-Cause when known; ``event`` the CHANNEL_EXECUTE_COMPLETE of the interrupted application
    when it came (its Application-Response says what the app managed, e.g. ``PLAYBACK ERROR``)."""

    def __init__(self, message: str, cause: str | None = None, event: Event | None = None):
        super().__init__(message)
        self.cause = cause
        self.event = event


class ESLTimeout(ESLError, TimeoutError):
    """No answer within the deadline. The session stays usable: a late reply is discarded, never
    taken for the next command's."""


class ESLCommandError(ESLError):
    """FreeSWITCH answered ``-ERR`` to a command (``reply`` is the Reply-Text)."""

    def __init__(self, reply: str):
        super().__init__(reply)
        self.reply = reply


class ESLSession:
    """The route's handle on one call."""

    def __init__(self, link: "_Link", limits: "ESLLimits"):
        self._link = link
        self._limits = limits

    # ------------------------------------------------------------ channel data
    @property
    def channel(self) -> dict[str, str]:
        """The connect reply's channel data (Channel-*, Caller-*, variable_*), URL-decoded."""
        return self._link.channel

    @property
    def uuid(self) -> str:
        return self._link.uuid

    @property
    def variables(self) -> dict[str, str]:
        """``variable_*`` from the connect reply, without the prefix (a snapshot: use get_var() for now)."""
        return {k[9:]: v for k, v in self._link.channel.items() if k.startswith("variable_")}

    def variable(self, name: str, default: str | None = None) -> str | None:
        return self._link.channel.get("variable_" + name, default)

    @property
    def caller_id_number(self) -> str:
        return self._link.channel.get("Caller-Caller-ID-Number", "")

    @property
    def destination_number(self) -> str:
        return self._link.channel.get("Caller-Destination-Number", "")

    @property
    def hungup(self) -> bool:
        return self._link.hungup

    @property
    def hangup_cause(self) -> str | None:
        return self._link.hangup_cause

    @property
    def closed(self) -> bool:
        return self._link.closed

    async def wait_gone(self) -> None:
        """Returns when the channel hangs up or the link drops (bound it with asyncio.timeout)."""
        await self._link.gone.wait()

    async def wait_closed(self, timeout: float) -> bool:
        """Wait until FreeSWITCH closes the socket (e.g. after ``linger N``); False on timeout."""
        try:
            async with asyncio.timeout(timeout):
                await self._link.eof.wait()
            return True
        except TimeoutError:
            return False

    # ------------------------------------------------------------ primitives
    async def command(self, data: bytes, *, timeout: float | None = None) -> P.Message:
        """Send an encoded command (agi.esl_protocol) and return its command/reply."""
        return await self._link.request(data, "command/reply", self._t(timeout))

    async def api(self, cmd: str, *, timeout: float | None = None) -> str:
        """``api <cmd>``; returns the api/response body (``-ERR ...`` bodies are returned as is)."""
        msg = await self._link.request(P.api(cmd), "api/response", self._t(timeout))
        return msg.text

    async def execute(self, app: str, arg: str = "", *, timeout: float | None = None,
                      event_lock: bool = False) -> Event:
        """Run a dialplan application and return its CHANNEL_EXECUTE_COMPLETE.

        The completion is matched by Application-UUID (we send ``Event-UUID``), falling back to
        application name and data, as FreeSWITCH reports them. Raises ESLHangup when the channel
        hangs up before or while the app runs (the completion, if any, is on ``.event``),
        ESLTimeout when nothing completes within ``timeout``."""
        link = self._link
        if link.hungup:
            raise ESLHangup(f"channel hung up ({link.hangup_cause}); {app} not sent", link.hangup_cause)
        link.check_open()
        t = self._limits.execute_timeout if timeout is None else timeout
        ev, hungup_then = await link.execute(app, arg, t, event_lock)
        if hungup_then and app != "hangup":
            raise ESLHangup(f"channel hung up during {app} ({link.hangup_cause})", link.hangup_cause, ev)
        return ev

    async def wait_event(self, *names: str, timeout: float) -> Event:
        """The next event of one of ``names`` (all when empty) arriving after this call."""
        return await self._link.wait_event(names, timeout)

    def _t(self, timeout: float | None) -> float:
        return self._limits.command_timeout if timeout is None else timeout

    # ------------------------------------------------------------ typed helpers
    async def answer(self) -> Event:
        return await self.execute("answer")

    async def playback(self, path: str, *, max_seconds: float = 600) -> str:
        """Play a file; returns Application-Response (``FILE PLAYED``)."""
        ev = await self.execute("playback", path, timeout=max_seconds, event_lock=True)
        return ev.get("Application-Response", "")

    async def play_and_get_digits(self, min_digits: int, max_digits: int, tries: int, timeout_ms: int,
                                  terminators: str, prompt: str, invalid: str, var: str,
                                  regexp: str = "\\d+", digit_timeout_ms: int | None = None,
                                  *, max_seconds: float = 600) -> str:
        for v in (terminators, prompt, invalid, var, regexp):
            if not v or " " in v:
                raise P.ESLUsageError(f"play_and_get_digits argument {v!r} must be one word")
        args = [min_digits, max_digits, tries, timeout_ms, terminators, prompt, invalid, var, regexp]
        if digit_timeout_ms is not None:
            args.append(digit_timeout_ms)
        ev = await self.execute("play_and_get_digits", " ".join(str(a) for a in args),
                                timeout=max_seconds, event_lock=True)
        return ev.variable(var, "") or ""

    async def bridge(self, dial_string: str, *, max_seconds: float = 4 * 3600) -> Event:
        """Bridge; the completion carries ``variable_originate_disposition`` (SUCCESS, NO_ANSWER, USER_BUSY…)."""
        return await self.execute("bridge", dial_string, timeout=max_seconds, event_lock=True)

    async def record_session(self, path: str) -> Event:
        return await self.execute("record_session", path)

    async def stop_record_session(self, path: str = "all") -> Event:
        return await self.execute("stop_record_session", path)

    async def set_var(self, name: str, value: str) -> None:
        if not P._WORD.match(name):
            raise P.ESLUsageError(f"bad variable name {name!r}")
        await self.execute("set", f"{name}={value}")

    async def get_var(self, name: str) -> str | None:
        """The variable's current value via ``api uuid_getvar`` (None when unset or no channel)."""
        if not P._WORD.match(name):
            raise P.ESLUsageError(f"bad variable name {name!r}")
        body = await self.api(f"uuid_getvar {self.uuid} {name}")
        if body.startswith("-ERR") or body == "_undef_":
            return None
        return body

    async def hangup(self, cause: str = "NORMAL_CLEARING") -> None:
        if self.hungup or self.closed:
            return
        try:
            await self.execute("hangup", cause)
        except ESLHangup:
            pass
