"""AMI (Asterisk Manager Interface) client for madoguchi, on the shared framing in ``cti.ami_protocol``.

Why not panoramisk 1.4's ``Manager``
------------------------------------
We parse with ``cti.ami_protocol`` so that this client and the lab emulator (the AMI *server*)
frame bytes identically; a second parser would be a second source of truth. Reading the 1.4
source and its tracker also showed behaviour we would have had to wrap or patch:

* ``send_action`` returns a bare future: no timeout on any action (Login included), so a
  silent peer hangs the caller forever.
* Its "is this a list?" guess (``Action.multi``) is heuristic: ``Message: Added interface to queue``
  (QueueAdd) is treated as a list start and never completes; an ``Originate`` without an ``Async``
  header raises ``KeyError: 'async'`` inside ``data_received`` and kills the connection
  (gawel/panoramisk#90, #97); Async Originate / OriginateResponse handling is disputed (#88, #89).
  Here a list is exactly ``EventList: start`` .. ``EventList: Complete`` (as Asterisk 22 sends it).
* Reconnect is a fixed ``reconnect_timeout`` (2 s) with no backoff or jitter, also after an
  authentication failure (a reconnect storm that also feeds fail2ban); in-flight futures are not
  failed on connection loss, and the keepalive Ping's answer is never checked, so a dead link
  is only noticed when TCP notices.

Behaviour (the contract the tests check)
----------------------------------------
* Every action carries ``ActionID: madoguchi-<n>`` (n never reused in a process) and has a deadline
  (``action_timeout``, or ``timeout=`` per call) -> ``AMITimeout``. ``Response: Error`` ->
  ``AMIError``. Actions on a link that is down fail at once with ``AMIDisconnected`` (they are not
  queued: a queued Originate fired minutes later is worse than an error).
* Lists: ``EventList: start`` .. ``EventList: Complete``, correlated by ActionID wherever it sits
  in the event. List items are not broadcast to subscribers (they are answers, not news).
* Events are read by one reader task, which keeps ``channels`` up to date and copies each event into
  every matching subscription's bounded queue. **Overflow policy:** when a subscription's queue is
  full the *oldest* queued event is dropped, counted (``Subscription.dropped``) and the consumer's next
  read yields a synthetic ``Event: MadoguchiEventsDropped`` / ``Dropped: <n>`` first, so it knows to
  re-read ``client.channels``. The reader never waits for a consumer, so a slow consumer cannot delay
  action responses or channel tracking.
* Local synthetic events (``Madoguchi*``) go to every subscription whatever its pattern:
  ``MadoguchiDisconnected`` (``Reason``), ``MadoguchiResync`` (``Channels``, ``Reconnect``),
  ``MadoguchiAuthFailed``.
* Link loss (EOF, reset, protocol error, keepalive Ping without answer) fails in-flight actions with
  ``AMIDisconnected`` and reconnects with exponential backoff and jitter (``backoff=(base, max)``,
  delay uniform in [d/2, d], d = min(max, base * 2**attempt)). After each login with events on, and
  ``resync="always"`` (default) or ``"reconnect"`` (not on the first connect), ``CoreShowChannels``
  rebuilds ``channels``; Newchannel/Hangup seen while the list was in flight are applied on top.
* **Authentication failure stops reconnecting** (state ``"auth_failed"``): a wrong secret does not fix
  itself, and each failed login costs ~1 s in Asterisk and a security event. ``connect()`` raises
  ``AMIAuthError``; on a reconnect the client emits ``MadoguchiAuthFailed`` and stays down.
* ``connect()`` makes one attempt and raises on failure (bad address, banner, auth, timeout); the
  background reconnect only starts once a first session worked.
* Secrets: the secret is only revealed while encoding Login (or the md5 Key); we log action names and
  ActionIDs, never headers, and ``repr`` shows ``***``.
"""
from __future__ import annotations

import asyncio
import fnmatch
import hashlib
import inspect
import itertools
import logging
import time
import types
from collections import deque
from typing import Any, Callable, Iterable

from cti.ami_protocol import MAX_MESSAGE_BYTES, AMIProtocolError, Message, Parser, encode
from cti.reconnect import supervise

log = logging.getLogger("madoguchi.cti.ami")

BANNER_PREFIX = "Asterisk Call Manager/"
# Channel fields shared by Newchannel/Newstate/... and CoreShowChannel, so a channel looks the same
# whether it was learned from events or from a resync.
CHANNEL_FIELDS = (
    "Channel", "ChannelState", "ChannelStateDesc", "CallerIDNum", "CallerIDName",
    "ConnectedLineNum", "ConnectedLineName", "Language", "AccountCode", "Context", "Exten",
    "Priority", "Uniqueid", "Linkedid",
)
_UPDATE_EVENTS = {"newstate", "newcallerid", "newconnectedline", "newexten", "rename"}

__all__ = [
    "AMIClient", "Subscription", "ListResult", "Message", "AMIException", "AMIError", "AMIAuthError",
    "AMITimeout", "AMIDisconnected", "AMIOriginateFailed", "AMIProtocolError",
]


class AMIException(Exception):
    """Base of the client's errors."""


class AMIError(AMIException):
    """``Response: Error`` (``message`` is its ``Message:``; ``response`` the whole Message)."""

    def __init__(self, message: str, response: Message | None = None):
        super().__init__(message)
        self.message = message
        self.response = response


class AMIAuthError(AMIError):
    """Login refused. The client does not retry (see module docstring)."""


class AMIOriginateFailed(AMIError):
    """Async Originate answered ``OriginateResponse`` with ``Response: Failure``; ``reason`` is its Reason."""

    def __init__(self, message: str, response: Message | None = None):
        super().__init__(message, response)
        self.reason = response.get("Reason") if response is not None else None


class AMITimeout(AMIException, TimeoutError):
    """No (complete) answer within the deadline."""


class AMIDisconnected(AMIException, ConnectionError):
    """The link is down, or went down while the action was in flight."""


class _Secret:
    """Keeps the secret out of repr/str/logs; ``reveal()`` is the only way out."""

    __slots__ = ("_v",)

    def __init__(self, v):
        self._v = v

    def reveal(self) -> str:
        v = self._v
        return str(v.reveal() if hasattr(v, "reveal") else v)

    def __repr__(self) -> str:
        return "'***'"

    __str__ = __repr__


class ListResult(tuple):
    """``(response, events)`` of a list action; ``.complete`` is the ``<Name>Complete`` event."""

    def __new__(cls, response: Message, events: list[Message], complete: Message | None):
        self = super().__new__(cls, (response, events))
        self.complete = complete
        return self

    @property
    def response(self) -> Message:
        return self[0]

    @property
    def events(self) -> list[Message]:
        return self[1]


def _local_event(name: str, **fields) -> Message:
    return Message([("Event", name), ("Privilege", "madoguchi,all")] + [(k, str(v)) for k, v in fields.items()])


class Subscription:
    """A bounded, ordered feed of events. Iterate it (``async for ev in sub``) or give a callback.

    Patterns are fnmatch patterns on the event name (case-insensitive), or a predicate on the Message.
    """

    def __init__(self, client: "AMIClient", patterns: Iterable, maxsize: int,
                 callback: Callable[[Message], Any] | None = None):
        self._client = client
        self._patterns = [p.lower() if isinstance(p, str) else p for p in patterns] or ["*"]
        self.maxsize = maxsize
        self._q: deque[Message] = deque()
        self._wake = asyncio.Event()
        self._closed = False
        self.dropped = 0          # total dropped by the overflow policy
        self._dropped_unreported = 0
        self._callback = callback
        self._task = asyncio.get_running_loop().create_task(self._pump()) if callback else None

    def matches(self, msg: Message) -> bool:
        name = msg.name.lower()
        if name.startswith("madoguchi"):
            return True
        for p in self._patterns:
            if (p(msg) if callable(p) else fnmatch.fnmatchcase(name, p)):
                return True
        return False

    def _push(self, msg: Message) -> None:
        if self._closed:
            return
        if len(self._q) >= self.maxsize:
            self._q.popleft()
            self.dropped += 1
            if self._dropped_unreported == 0:
                log.warning("AMI event consumer too slow: queue of %d full, dropping oldest events", self.maxsize)
            self._dropped_unreported += 1
        self._q.append(msg)
        self._wake.set()

    def pending(self) -> int:
        return len(self._q)

    async def get(self) -> Message:
        while not self._q:
            if self._closed:
                raise StopAsyncIteration
            self._wake.clear()
            await self._wake.wait()
        if self._dropped_unreported:
            n, self._dropped_unreported = self._dropped_unreported, 0
            return _local_event("MadoguchiEventsDropped", Dropped=n)
        return self._q.popleft()

    def __aiter__(self):
        return self

    async def __anext__(self) -> Message:
        return await self.get()

    async def _pump(self):
        # The callback runs here, not in the reader, so it can be slow without stalling the link.
        while True:
            try:
                ev = await self.get()
            except StopAsyncIteration:
                return
            try:
                r = self._callback(ev)
                if inspect.isawaitable(r):
                    await r
            except Exception:
                log.exception("AMI event callback %r failed on %s", self._callback, ev.name)

    async def close(self) -> None:
        self._closed = True
        self._wake.set()
        self._client._subs.discard(self)
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


class _Pending:
    __slots__ = ("name", "kind", "future", "response", "events", "on_complete")

    def __init__(self, name: str, kind: str, future: asyncio.Future, on_complete=None):
        self.name, self.kind, self.future = name, kind, future
        self.response: Message | None = None
        self.events: list[Message] = []
        self.on_complete = on_complete  # runs in the reader, in stream order (used by resync)


class _Link:
    """One TCP session. Replaced wholesale on reconnect so stale tasks cannot touch the new one."""

    def __init__(self, reader, writer, max_bytes: int):
        loop = asyncio.get_running_loop()
        self.reader, self.writer = reader, writer
        self.parser = Parser(expect_banner=True, max_bytes=max_bytes)
        self.banner: asyncio.Future = loop.create_future()
        self.lost: asyncio.Future = loop.create_future()
        self.logged_in = False
        self.tasks: list[asyncio.Task] = []
        self.opened_at = time.monotonic()

    @property
    def alive(self) -> bool:
        return not self.lost.done()


class AMIClient:
    def __init__(self, host: str = "127.0.0.1", port: int = 5038, *, username: str, secret,
                 events: bool = True, action_timeout: float = 5.0, connect_timeout: float = 5.0,
                 backoff: tuple[float, float] = (0.5, 30.0), auth: str = "plain",
                 keepalive: float | None = 20.0, resync: str = "always",
                 event_queue_size: int = 10_000, max_message_bytes: int = MAX_MESSAGE_BYTES):
        if auth not in ("plain", "md5"):
            raise ValueError("auth must be 'plain' or 'md5'")
        if resync not in ("always", "reconnect", "never"):
            raise ValueError("resync must be 'always', 'reconnect' or 'never'")
        self.host, self.port, self.username = host, port, username
        self._secret = _Secret(secret)
        self.events = events
        self.action_timeout, self.connect_timeout = action_timeout, connect_timeout
        self.backoff = backoff
        self.auth = auth
        self.keepalive = keepalive
        self.resync = resync
        self.event_queue_size = event_queue_size
        self.max_message_bytes = max_message_bytes
        self.state = "new"  # new | connecting | connected | reconnecting | auth_failed | closed
        self.reconnects = 0
        self.last_error: BaseException | None = None
        self._ids = itertools.count(1)
        self._pending: dict[str, _Pending] = {}
        self._subs: set[Subscription] = set()
        self._channels: dict[str, dict[str, str]] = {}
        self._resync_log: list[tuple[str, str, dict]] | None = None
        self._link: _Link | None = None
        self._supervisor: asyncio.Task | None = None
        self._closing = False

    def __repr__(self) -> str:
        return f"<AMIClient {self.username}@{self.host}:{self.port} state={self.state} secret=***>"

    # ---------------------------------------------------------------- public API
    @property
    def connected(self) -> bool:
        return self._link is not None and self._link.alive and self._link.logged_in

    @property
    def channels(self) -> types.MappingProxyType:
        """Live channels: Uniqueid -> CHANNEL_FIELDS (read-only view; stale while disconnected)."""
        return types.MappingProxyType(self._channels)

    async def connect(self) -> None:
        if self._closing:
            raise AMIDisconnected("client is closed")
        if self.connected:
            return
        self.state = "connecting"
        try:
            await self._open(initial=True)
        except AMIAuthError:
            self.state = "auth_failed"
            raise
        except BaseException:
            self.state = "new"
            raise
        self._supervisor = asyncio.get_running_loop().create_task(self._supervise())

    async def close(self) -> None:
        """Logoff (best effort, bounded) then close. Idempotent."""
        if self._closing:
            if self._supervisor:
                await asyncio.gather(self._supervisor, return_exceptions=True)
            return
        self._closing = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            await asyncio.gather(self._supervisor, return_exceptions=True)
        link = self._link
        if link is not None and link.alive:
            if link.logged_in:
                try:
                    await self._request(link, "Logoff", [], timeout=min(self.action_timeout, 2.0))
                except (AMIException, OSError) as e:
                    log.debug("AMI Logoff not acknowledged: %s", e)
            await self._drop(link, "client closed")
        self.state = "closed"
        for sub in list(self._subs):
            await sub.close()

    async def __aenter__(self) -> "AMIClient":
        await self.connect()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def action(self, name: str, /, *, timeout: float | None = None, **headers) -> Message:
        """Send one action and return its Response. ``timeout`` (seconds) is the client-side deadline;
        AMI headers are the other keyword arguments (a list value repeats the header)."""
        return await self._request(self._ready_link(), name, _pairs(headers), timeout=timeout)

    async def list_action(self, name: str, /, *, timeout: float | None = None, **headers) -> ListResult:
        """A list action (CoreShowChannels, Status, QueueStatus, DBGet, ...) -> ``(response, events)``.
        The deadline covers the whole list. A Success without ``EventList: start`` gives no events."""
        return await self._request(self._ready_link(), name, _pairs(headers), kind="list", timeout=timeout)

    async def originate(self, channel: str, *, exten: str | None = None, context: str | None = None,
                        priority: int | str | None = None, application: str | None = None,
                        data: str | None = None, caller_id: str | None = None, timeout: float = 30.0,
                        variables: dict[str, Any] | None = None, **headers) -> Message:
        """Always ``Async: true`` (a synchronous Originate blocks the whole AMI session in Asterisk)
        and wait for the matching ``OriginateResponse``; returned on Success, ``AMIOriginateFailed``
        on Failure (busy/no answer). ``timeout`` is the ring time; the wait allows ``action_timeout`` more."""
        if exten is not None and priority is None:
            priority = 1
        pairs = [("Channel", channel)]
        for k, v in (("Context", context), ("Exten", exten), ("Priority", priority),
                     ("Application", application), ("Data", data), ("CallerID", caller_id)):
            if v is not None:
                pairs.append((k, str(v)))
        pairs.append(("Timeout", str(int(timeout * 1000))))
        pairs += [("Variable", f"{k}={v}") for k, v in (variables or {}).items()]
        pairs += _pairs(headers)
        pairs.append(("Async", "true"))
        return await self._request(self._ready_link(), "Originate", pairs, kind="originate",
                                   timeout=timeout + self.action_timeout)

    async def ping(self) -> Message:
        return await self.action("Ping")

    def subscribe(self, callback_or_pattern: Callable | str | Iterable = "*", *patterns,
                  maxsize: int | None = None) -> Subscription:
        """``subscribe(cb, "Queue*", ...)`` calls ``cb(event)`` (sync or async) in order, in its own task;
        ``subscribe("Hangup", ...)`` returns an async iterator. Stop with ``await sub.close()``."""
        callback = None
        if callable(callback_or_pattern):
            callback = callback_or_pattern
        elif isinstance(callback_or_pattern, str):
            patterns = (callback_or_pattern,) + patterns
        else:
            patterns = tuple(callback_or_pattern) + patterns
        sub = Subscription(self, patterns, maxsize or self.event_queue_size, callback)
        self._subs.add(sub)
        return sub

    def events_iter(self, *patterns, maxsize: int | None = None) -> Subscription:
        """An async iterator of events (same as ``subscribe(pattern)``)."""
        return self.subscribe(patterns or "*", maxsize=maxsize)

    # ---------------------------------------------------------------- link management
    def _ready_link(self) -> _Link:
        link = self._link
        if self._closing:
            raise AMIDisconnected("client is closed")
        if link is None or not link.alive or not link.logged_in:
            raise AMIDisconnected(f"AMI not connected (state {self.state})")
        return link

    async def _open(self, initial: bool) -> None:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port), self.connect_timeout)
        except asyncio.TimeoutError:
            raise AMITimeout(f"connect to {self.host}:{self.port} timed out") from None
        link = _Link(reader, writer, self.max_message_bytes)
        self._link = link
        link.tasks.append(asyncio.get_running_loop().create_task(self._read_loop(link)))
        try:
            try:
                banner = await asyncio.wait_for(asyncio.shield(link.banner), self.connect_timeout)
            except asyncio.TimeoutError:
                raise AMITimeout(f"no AMI banner from {self.host}:{self.port}") from None
            if not banner.startswith(BANNER_PREFIX):
                raise AMIProtocolError(f"not an AMI server at {self.host}:{self.port}: banner {banner[:60]!r}")
            await self._login(link)
            link.logged_in = True
            self.state = "connected"
            if not initial:
                self.reconnects += 1
            log.info("AMI connected to %s:%d as %s (%s)", self.host, self.port, self.username, banner)
            if self.keepalive:
                link.tasks.append(asyncio.get_running_loop().create_task(self._keepalive(link)))
            if self.events and (self.resync == "always" or (self.resync == "reconnect" and not initial)):
                await self._resync(link, reconnect=not initial)
        except BaseException as e:
            await self._drop(link, f"session setup failed: {type(e).__name__}")
            if isinstance(e, AMIDisconnected) and link.lost.done():
                raise AMIDisconnected(f"link lost during setup: {link.lost.result()}") from None
            raise

    async def _login(self, link: _Link) -> None:
        ev = "on" if self.events else "off"
        try:
            if self.auth == "md5":
                ch = await self._request(link, "Challenge", [("AuthType", "md5")])
                key = hashlib.md5((ch["Challenge"] + self._secret.reveal()).encode()).hexdigest()
                pairs = [("AuthType", "md5"), ("Username", self.username), ("Key", key), ("Events", ev)]
            else:
                pairs = [("Username", self.username), ("Secret", self._secret.reveal()), ("Events", ev)]
            await self._request(link, "Login", pairs)
        except AMIError as e:
            # Asterisk says "Authentication failed" and closes; do not echo anything we sent.
            raise AMIAuthError(f"AMI login as {self.username!r} refused: {e.message}", e.response) from None

    async def _supervise(self) -> None:
        def refused(e):
            log.error("AMI re-login refused (%s); not reconnecting until connect() is called", e.message)
            self._broadcast(_local_event("MadoguchiAuthFailed", Message=e.message))
        await supervise(self, "AMI", AMIAuthError, (OSError, AMIException, AMIProtocolError), refused)

    async def _read_loop(self, link: _Link) -> None:
        reason = "EOF"
        try:
            while True:
                data = await link.reader.read(65536)
                if not data:
                    break
                msgs = link.parser.feed(data)
                if link.parser.banner is not None and not link.banner.done():
                    link.banner.set_result(link.parser.banner)
                for msg in msgs:
                    self._on_message(link, msg)
        except AMIProtocolError as e:
            reason = f"protocol error: {e}"
            log.error("AMI %s:%d sent bad data (%s); dropping the connection", self.host, self.port, e)
        except (ConnectionError, OSError) as e:
            reason = f"{type(e).__name__}: {e}"
        except asyncio.CancelledError:
            reason = "cancelled"
            raise
        finally:
            self._lost(link, reason)

    async def _keepalive(self, link: _Link) -> None:
        # A half-dead TCP link (peer gone, no RST) is only noticed by asking.
        while link.alive:
            await asyncio.sleep(self.keepalive)
            if not link.alive:
                return
            try:
                await self._request(link, "Ping", [])
            except AMITimeout:
                log.warning("AMI keepalive Ping unanswered after %.1fs; dropping the link", self.action_timeout)
                await self._drop(link, "keepalive Ping timed out")
                return
            except AMIException:
                return

    def _lost(self, link: _Link, reason: str) -> None:
        if link.lost.done():
            return
        link.lost.set_result(reason)
        if not link.banner.done():
            link.banner.set_exception(AMIDisconnected(f"connection closed before banner ({reason})"))
            link.banner.exception()  # mark retrieved: nobody may be waiting any more
        try:
            link.writer.close()
        except Exception:  # transport already gone
            pass
        err = AMIDisconnected(f"AMI link lost: {reason}")
        for aid, p in list(self._pending.items()):
            if not p.future.done():
                p.future.set_exception(err)
        self._pending.clear()
        for t in link.tasks:
            if t is not asyncio.current_task() and not t.done():
                t.cancel()
        if link.logged_in and not self._closing:
            self._broadcast(_local_event("MadoguchiDisconnected", Reason=reason))

    async def _drop(self, link: _Link, reason: str) -> None:
        self._lost(link, reason)
        try:
            await asyncio.wait_for(link.writer.wait_closed(), 1.0)
        except (asyncio.TimeoutError, OSError, ConnectionError):
            pass
        await asyncio.gather(*[t for t in link.tasks if t is not asyncio.current_task()],
                             return_exceptions=True)

    # ---------------------------------------------------------------- request / response
    async def _request(self, link: _Link, name: str, pairs: list[tuple[str, str]], *,
                       kind: str = "plain", timeout: float | None = None, on_complete=None):
        if any(k.lower() == "actionid" for k, _ in pairs):
            raise ValueError("ActionID is set by the client")
        aid = f"madoguchi-{next(self._ids)}"
        data = encode([("Action", name), ("ActionID", aid)] + pairs)  # ValueError on CR/LF injection
        if not link.alive:
            raise AMIDisconnected(f"AMI link lost: {link.lost.result()}")
        fut = asyncio.get_running_loop().create_future()
        self._pending[aid] = _Pending(name, kind, fut, on_complete)
        t = self.action_timeout if timeout is None else timeout
        try:
            log.debug("AMI -> %s %s", name, aid)  # never the headers: Login carries the secret
            link.writer.write(data)
            async with asyncio.timeout(t):
                return await fut
        except TimeoutError:
            # (the deadline cancelled fut; an answer or a link loss would have raised its own error)
            raise AMITimeout(f"AMI {name} ({aid}) got no complete answer in {t:g}s") from None
        finally:
            self._pending.pop(aid, None)

    def _on_message(self, link: _Link, msg: Message) -> None:
        kind = msg.kind
        aid = msg.get("ActionID")
        p = self._pending.get(aid) if aid is not None else None
        if kind == "response":
            log.debug("AMI <- Response %s %s", msg.name, aid)
            if p is None:
                log.debug("AMI response for unknown ActionID %r (late or foreign); ignored", aid)
                return
            self._on_response(aid, p, msg)
        elif kind == "event":
            if p is not None and p.kind == "list" and p.response is not None:
                self._on_list_event(aid, p, msg)
                return
            self._track(msg)
            if p is not None and p.kind == "originate" and msg.name.lower() == "originateresponse":
                self._pending.pop(aid, None)
                if not p.future.done():
                    if (msg.get("Response") or "").lower() == "success":
                        p.future.set_result(msg)
                    else:
                        p.future.set_exception(AMIOriginateFailed(
                            f"Originate {msg.get('Channel')} failed (Reason {msg.get('Reason')})", msg))
            self._broadcast(msg)
        else:
            raise AMIProtocolError(f"unexpected AMI message starting with {msg.pairs[0]!r}"[:200])

    def _on_response(self, aid: str, p: _Pending, msg: Message) -> None:
        if p.future.done():
            return
        if (msg.get("Response") or "").lower() == "error":
            self._pending.pop(aid, None)
            p.future.set_exception(AMIError(msg.get("Message") or "Error", msg))
            return
        if p.kind == "list" and (msg.get("EventList") or "").lower() == "start":
            p.response = msg  # now collect events until EventList: Complete
            return
        if p.kind == "originate":
            p.response = msg  # now wait for OriginateResponse
            return
        self._pending.pop(aid, None)
        p.future.set_result(ListResult(msg, [], None) if p.kind == "list" else msg)

    def _on_list_event(self, aid: str, p: _Pending, msg: Message) -> None:
        if (msg.get("EventList") or "").lower() == "complete":
            self._pending.pop(aid, None)
            n = msg.get("ListItems")
            if n is not None and n.isdigit() and int(n) != len(p.events):
                log.warning("AMI %s: ListItems %s but %d events received", p.name, n, len(p.events))
            if not p.future.done():
                res = ListResult(p.response, p.events, msg)
                if p.on_complete is not None:
                    p.on_complete(res)
                p.future.set_result(res)
        else:
            p.events.append(msg)

    # ---------------------------------------------------------------- events and channel state
    def _broadcast(self, msg: Message) -> None:
        for sub in list(self._subs):
            if sub.matches(msg):
                sub._push(msg)

    def _track(self, msg: Message) -> None:
        name = msg.name.lower()
        uid = msg.get("Uniqueid")
        if not uid:
            return
        if name == "newchannel":
            fields = _channel_fields(msg)
            self._channels[uid] = fields
            if self._resync_log is not None:
                self._resync_log.append(("new", uid, fields))
        elif name == "hangup":
            self._channels.pop(uid, None)
            if self._resync_log is not None:
                self._resync_log.append(("hangup", uid, {}))
        elif name in _UPDATE_EVENTS and uid in self._channels:
            self._channels[uid].update(_channel_fields(msg))

    async def _resync(self, link: _Link, reconnect: bool) -> None:
        def apply(res: ListResult) -> None:
            # Runs in the reader at the Complete event, so no event can fall between the snapshot
            # and the live tracking that continues after it.
            snap = {ev["Uniqueid"]: _channel_fields(ev) for ev in res.events
                    if ev.name.lower() == "coreshowchannel" and ev.get("Uniqueid")}
            # Events interleaved with the list: births and deaths are facts whenever the snapshot was taken.
            for what, uid, fields in self._resync_log or ():
                if what == "new":
                    snap.setdefault(uid, dict(fields))
                else:
                    snap.pop(uid, None)
            self._resync_log = None
            self._channels = snap
            log.info("AMI channel resync: %d live channel(s)", len(snap))
            self._broadcast(_local_event("MadoguchiResync", Channels=len(snap),
                                         Reconnect="yes" if reconnect else "no"))

        self._resync_log = []
        try:
            await self._request(link, "CoreShowChannels", [], kind="list", on_complete=apply)
        finally:
            self._resync_log = None


def _channel_fields(msg: Message) -> dict[str, str]:
    return {k: v for k, v in msg.pairs if k in CHANNEL_FIELDS}


def _pairs(headers: dict[str, Any]) -> list[tuple[str, str]]:
    out = []
    for k, v in headers.items():
        if isinstance(v, (list, tuple)):
            out += [(k, str(x)) for x in v]
        elif v is not None:
            out.append((k, str(v)))
    return out
