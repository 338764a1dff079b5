"""The FastAGI adapter for the call flow: runs dialplan.flow over an AGISession.

Everything decided here is about *how* to carry out an action on Asterisk (which AGI commands,
which Dial string); *what* to do comes from the flow engine, the ACD pool and the waiting list.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

from acd.pool import AgentPool
from acd.waiting import WaitingList
from dialplan import flow
from dialplan.modes import CongestionMonitor, ServiceState
from ivr_prompts.catalog import sound_name

from .session import AGIClosed, AGIHangup, AGISession

log = logging.getLogger("madoguchi.call")

DIAL_RING_SECONDS = 20      # how long one operator's phone rings before the next is tried
HOLD_POLL_SECONDS = 2       # how often a waiting caller is re-offered to free operators
MAX_CALL_SECONDS = 4 * 3600  # bound on one bridged conversation (EXEC Dial blocks for its length)
ALL_KEYS = "0123456789*#"


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class CallHandler:
    site: object
    store: object                        # cti.calls.CallStore
    pool: AgentPool
    modes: object = None                 # cti.modes.ModeLog, or None: always normal
    now: callable = utcnow               # wall clock for calendars and the call log (tests move it)
    monotonic: callable = time.monotonic
    listener: object = None              # agi.speech.AGIListener, or None: speech nodes use keys
    live: dict = field(default_factory=dict)       # uniqueid -> Trail, for views and tests
    waiting: WaitingList = field(default_factory=WaitingList)
    congestion: CongestionMonitor = field(default_factory=CongestionMonitor)

    def state(self) -> ServiceState:
        return self.modes.state() if self.modes is not None else ServiceState()

    async def __call__(self, session: AGISession) -> None:
        env = session.env
        dnid = env.params.get("number") or env["dnid"]
        call_id = env["uniqueid"]
        trail = flow.Trail()
        self.live[call_id] = trail
        # The call log is written off the event loop and never on the caller's critical path: the
        # IVR starts while the row is inserted, and a failing database never drops a call.
        started = asyncio.ensure_future(self._record(self.store.start, call_id, dialed=dnid,
                                                     channel=env["channel"], caller=env["callerid"],
                                                     started_at=self.now()))
        if self.modes is not None:
            await asyncio.to_thread(self.modes.refresh)   # a mode switched by the CLI applies from this call on
        gen = flow.run(self.site, dnid, trail, flow.Context(now=self.now, state=self.state))
        outcome = None
        cause = None
        try:
            while True:
                action = gen.send(outcome)
                outcome = await self._do(session, action, call_id)
        except StopIteration:
            pass
        except AGIHangup:
            cause = "caller hangup"   # the trail keeps its outcome: "abandoned" unless one was reached
        except AGIClosed as e:
            cause = str(e)[:60]
        finally:
            gen.close()
            self.live.pop(call_id, None)
            self._left_queue(call_id)
            if await started:
                await self._record(self._close_record, call_id, trail, cause)
            log.info("call %s to %s: %s via %s", call_id, dnid, trail.outcome, trail.path or "-")

    def _close_record(self, call_id: str, trail: flow.Trail, cause: str | None) -> None:
        self.store.update(call_id, ivr_path=trail.path[:255], language=trail.language,
                          queue=trail.queue, agent=trail.agent)
        self.store.finish(call_id, trail.outcome, hangup_cause=cause, ended_at=self.now())

    @staticmethod
    async def _record(fn, *args, **kw) -> bool:
        try:
            await asyncio.to_thread(fn, *args, **kw)
            return True
        except Exception as e:  # the caller is served whatever the database does
            log.error("call log: %s failed for %s: %s", fn.__name__, args[0] if args else "?", e)
            return False

    async def _do(self, s: AGISession, action, call_id: str):
        if isinstance(action, flow.Play):
            digit, _ = await s.stream_file(sound_name(action.prompt), ALL_KEYS if action.interruptible else "")
            return flow.Digits(digit) if digit else None
        if isinstance(action, flow.Collect):
            # Asterisk's GET DATA always ends on '#'; other terminators end by length or timeout
            digits, timed_out = await s.get_data(sound_name(action.prompt), int(action.timeout * 1000),
                                                 action.max_digits)
            return flow.Digits(digits, timed_out)
        if isinstance(action, flow.SetLanguage):
            await s.set_variable("CHANNEL(language)", action.language)
            return None
        if isinstance(action, flow.Answer):
            await s.answer()
            return None
        if isinstance(action, flow.Connect):
            return await self._connect(s, action, call_id)
        if isinstance(action, flow.Transfer):
            return await self._transfer(s, action)
        if isinstance(action, flow.Listen):
            return await self._listen(s, action, call_id)
        if isinstance(action, flow.Hangup):
            # tells the dialplan the flow finished the call: no fallback (dialplan/templates)
            await s.set_variable("MADOGUCHI_STATUS", "DONE")
            await s.hangup()
            return None
        raise TypeError(f"unknown flow action {action!r}")

    # ------------------------------------------------------------ queueing

    async def _connect(self, s: AGISession, action: flow.Connect, call_id: str) -> flow.Connected:
        queue = self.site.queues[action.queue]
        skills = frozenset((queue.skill, *action.skills))
        language = action.language if action.language in queue.languages else None
        joined = self.monotonic()
        self.waiting.add(call_id, skills, action.priority, joined)
        self._observe_queues()
        deadline = joined + queue.max_wait
        tried: set[str] = set()
        announced = False
        try:
            while self.monotonic() < deadline:
                candidates = [a for a in self.pool.candidates(skills, language, exclude=tried)
                              if self.waiting.is_next(call_id, a.skills)]
                if not candidates:
                    tried.clear()  # everyone was tried once: a new round after the hold poll
                    if not announced:
                        await s.stream_file(sound_name("please-wait"))
                        announced = True
                    r = await s.exec("Wait", HOLD_POLL_SECONDS, timeout=HOLD_POLL_SECONDS + 30)
                    if r.value < 0 or s.hungup:
                        raise AGIHangup("caller hung up while waiting")
                    self._observe_queues()      # the oldest wait grows while nobody joins or leaves
                    continue
                agent = candidates[0]
                self.pool.claim(agent.id)
                self._left_queue(call_id)   # while it rings, callers behind may take other operators
                try:
                    await s.exec("Dial", agent.endpoint, DIAL_RING_SECONDS,
                                 timeout=DIAL_RING_SECONDS + MAX_CALL_SECONDS)
                    status = await s.get_variable("DIALSTATUS")
                finally:
                    self.pool.release(agent.id, self.monotonic())
                if status == "ANSWER":
                    return flow.Connected(True, agent.id, "answered")
                if s.hungup or status == "CANCEL":
                    raise AGIHangup("caller hung up while ringing")
                tried.add(agent.id)
                self.waiting.add(call_id, skills, action.priority, joined)   # keeps its place in line
            return flow.Connected(False, None, "timeout")
        finally:
            self._left_queue(call_id)

    def _left_queue(self, call_id: str) -> None:
        if call_id in self.waiting.waiters:
            self.waiting.remove(call_id)
            self._observe_queues()

    def _observe_queues(self) -> None:
        """Automatic congestion: recorded as a mode change by 'auto' when it starts and ends."""
        change = self.congestion.observe(*self.waiting.stats(self.monotonic()))
        if change is not None and self.modes is not None:
            asyncio.ensure_future(self._record(self.modes.set_congestion, change, by="auto",
                                               reason="queue thresholds", at=self.now()))

    # ------------------------------------------------------------ transfer and speech

    async def _transfer(self, s: AGISession, action: flow.Transfer) -> flow.Connected:
        entry = self.site.directory[action.entry]
        if self.site.trunk is None:
            return flow.Connected(False, None, "notrunk")
        # the gateway is one pjsip endpoint named after the trunk; the digits select the department
        await s.exec("Dial", f"PJSIP/{entry.trunk_number}@{self.site.trunk.id}", DIAL_RING_SECONDS,
                     timeout=DIAL_RING_SECONDS + MAX_CALL_SECONDS)
        status = await s.get_variable("DIALSTATUS")
        if s.hungup or status == "CANCEL":
            return flow.Connected(False, None, "hangup")
        return flow.Connected(status == "ANSWER", None, "answered" if status == "ANSWER" else (status or "failed").lower())

    async def _listen(self, s: AGISession, action: flow.Listen, call_id: str) -> flow.Heard:
        if self.listener is None or not self.listener.available:
            log.info("call %s: speech node without a recogniser; using keys instead", call_id)
            return flow.Heard(False)
        return await self.listener.listen(s, action, call_id)
