"""The FastAGI adapter for the IVR flow: runs dialplan.flow over an AGISession.

Everything decided here is about *how* to carry out an action on Asterisk (which AGI commands,
which Dial string); *what* to do comes from the flow engine and the ACD pool.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from acd.pool import AgentPool
from dialplan import flow
from ivr_prompts.catalog import sound_name

from .session import AGIClosed, AGIHangup, AGISession

log = logging.getLogger("madoguchi.call")

DIAL_RING_SECONDS = 20      # how long one operator's phone rings before the next is tried
HOLD_POLL_SECONDS = 2       # how often a waiting caller is re-offered to free operators
MAX_CALL_SECONDS = 4 * 3600  # bound on one bridged conversation (EXEC Dial blocks for its length)


@dataclass
class CallHandler:
    site: object
    store: object                       # cti.calls.CallStore
    pool: AgentPool
    clock: callable = time.time
    live: dict = field(default_factory=dict)   # uniqueid -> Trail, for `calls` views and tests

    async def __call__(self, session: AGISession) -> None:
        env = session.env
        dnid = env.params.get("number") or env["dnid"]
        call_id = env["uniqueid"]
        trail = flow.Trail()
        self.live[call_id] = trail
        # The call log is written off the event loop and never on the caller's critical path: the
        # IVR starts while the row is inserted, and a failing database never drops a call.
        started = asyncio.ensure_future(self._record(self.store.start, call_id, dialed=dnid,
                                                     channel=env["channel"], caller=env["callerid"]))
        gen = flow.run(self.site, dnid, trail)
        outcome = None
        cause = None
        try:
            while True:
                action = gen.send(outcome)
                outcome = await self._do(session, action)
        except StopIteration:
            pass
        except AGIHangup:
            cause = "caller hangup"   # the trail keeps its outcome: "abandoned" unless one was reached
        except AGIClosed as e:
            cause = str(e)[:60]
        finally:
            gen.close()
            self.live.pop(call_id, None)
            if await started:
                await self._record(self._close_record, call_id, trail, cause)
            log.info("call %s to %s: %s via %s", call_id, dnid, trail.outcome, trail.path or "-")

    def _close_record(self, call_id: str, trail: flow.Trail, cause: str | None) -> None:
        self.store.update(call_id, ivr_path=trail.path[:255], language=trail.language,
                          queue=trail.queue, agent=trail.agent)
        self.store.finish(call_id, trail.outcome, hangup_cause=cause)

    @staticmethod
    async def _record(fn, *args, **kw) -> bool:
        try:
            await asyncio.to_thread(fn, *args, **kw)
            return True
        except Exception as e:  # the caller is served whatever the database does
            log.error("call log: %s failed for %s: %s", fn.__name__, args[0] if args else "?", e)
            return False

    async def _do(self, s: AGISession, action):
        if isinstance(action, flow.Answer):
            await s.answer()
            return None
        if isinstance(action, flow.Play):
            await s.stream_file(sound_name(action.prompt, action.language))
            return None
        if isinstance(action, flow.Collect):
            digits, timed_out = await s.get_data(sound_name(action.prompt, action.language),
                                                 int(action.timeout * 1000), action.max_digits)
            return flow.Digits(digits, timed_out)
        if isinstance(action, flow.Connect):
            return await self._connect(s, action)
        if isinstance(action, flow.Transfer):
            return await self._transfer(s, action)
        if isinstance(action, flow.Hangup):
            await s.hangup()
            return None
        raise TypeError(f"unknown flow action {action!r}")

    async def _connect(self, s: AGISession, action: flow.Connect) -> flow.Connected:
        queue = self.site.queues[action.queue]
        deadline = self.clock() + queue.max_wait
        tried: set[str] = set()
        announced = False
        while self.clock() < deadline:
            language = action.language if action.language in queue.languages else None
            candidates = self.pool.candidates(queue.skill, language, exclude=tried)
            if not candidates:
                tried.clear()  # everyone was tried once: start a new round after the hold poll
                if not announced:
                    await s.stream_file(sound_name("please-wait", action.language))
                    announced = True
                r = await s.exec("Wait", HOLD_POLL_SECONDS, timeout=HOLD_POLL_SECONDS + 30)
                if r.value < 0:
                    raise AGIHangup("caller hung up while waiting")
                continue
            agent = candidates[0]
            self.pool.claim(agent.id)
            try:
                await s.exec("Dial", agent.endpoint, DIAL_RING_SECONDS,
                             timeout=DIAL_RING_SECONDS + MAX_CALL_SECONDS)
                status = await s.get_variable("DIALSTATUS")
            finally:
                self.pool.release(agent.id, self.clock())
            if status == "ANSWER":
                return flow.Connected(True, agent.id, "answered")
            tried.add(agent.id)
            if s.hungup or status == "CANCEL":
                raise AGIHangup("caller hung up while ringing")
        return flow.Connected(False, None, "timeout")

    async def _transfer(self, s: AGISession, action: flow.Transfer) -> flow.Connected:
        entry = self.site.directory[action.entry]
        if self.site.trunk is None:
            return flow.Connected(False, None, "notrunk")
        # the gateway is one pjsip endpoint named after the trunk; the digits select the department
        await s.exec("Dial", f"PJSIP/{entry.trunk_number}@{self.site.trunk.id}", DIAL_RING_SECONDS,
                     timeout=DIAL_RING_SECONDS + MAX_CALL_SECONDS)
        status = await s.get_variable("DIALSTATUS")
        return flow.Connected(status == "ANSWER", None, "answered" if status == "ANSWER" else (status or "failed").lower())
