"""The FastAGI adapter for the call flow: runs dialplan.flow over an AGISession.

Everything decided here is about *how* to carry out an action on Asterisk (which AGI commands,
which Dial string); *what* to do comes from the flow engine and the ACD engine.
"""
from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone

from acd.engine import ACD, ACDError, Fallback, Offer, Refused
from dialplan import flow
from dialplan.modes import CongestionMonitor, ServiceState
from ivr_prompts.catalog import sound_name

from .session import AGIClosed, AGIHangup, AGISession

log = logging.getLogger("madoguchi.call")

DIAL_RING_SECONDS = 20      # how long a department's phone rings on a transfer
MAX_CALL_SECONDS = 4 * 3600  # bound on one bridged conversation (EXEC Dial blocks for its length)
ALL_KEYS = "0123456789*#"


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class CallHandler:
    site: object
    store: object                        # cti.calls.CallStore
    acd: ACD
    modes: object = None                 # cti.modes.ModeLog, or None: always normal
    queue_log: object = None             # acd.queue_log.QueueLogStore
    agent_states: object = None          # acd.queue_log.AgentStateStore
    now: callable = utcnow               # wall clock for calendars, the ACD and the logs (the lab runs it fast)
    listener: object = None              # agi.speech.AGIListener, or None: speech nodes use keys
    dial_watch: object = None            # cti.dial_watch.DialWatch fed by AMI, or None
    recorder: object = None              # recorder.store.Recorder, or None: calls are not recorded
    recording: set = field(default_factory=set)    # uniqueids whose MixMonitor runs
    finalizing: set = field(default_factory=set)   # recordings being archived after their call
    tick_seconds: float = 1.0            # how often a waiting caller's ACD timers are checked
    live: dict = field(default_factory=dict)       # uniqueid -> Trail, for views and tests
    inboxes: dict = field(default_factory=dict)    # uniqueid -> offers and fallbacks for a waiting caller
    congestion: CongestionMonitor = field(default_factory=CongestionMonitor)
    _persist_lock: threading.Lock = field(default_factory=threading.Lock)

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
        started_at = self.now()
        started = asyncio.ensure_future(self._record(self.store.start, call_id, dialed=dnid,
                                                     channel=env["channel"], caller=env["callerid"],
                                                     started_at=started_at))
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
            if any(c.id == call_id for c in self.acd.calls()):
                self._leave(call_id)              # the link dropped while the caller waited
            if await started:
                await self._record(self._close_record, call_id, trail, cause)
            if call_id in self.recording:
                self.recording.discard(call_id)
                await self._stop_recording(session, call_id, trail, started_at)
            log.info("call %s to %s: %s via %s", call_id, dnid, trail.outcome, trail.path or "-")

    async def _stop_recording(self, s: AGISession, call_id: str, trail: flow.Trail, started_at) -> None:
        """Close MixMonitor's file and archive it in the background (encrypted, see recorder/)."""
        from recorder.store import RecordingMeta
        if not s.closed:
            try:
                await s.exec("StopMixMonitor")
            except AGIClosed:
                pass
        meta = RecordingMeta(started_at=started_at, ended_at=self.now(),
                             operators=(trail.agent,) if trail.agent else (), queue=trail.queue,
                             language=trail.language)
        task = asyncio.ensure_future(self._record(self.recorder.finalize_sync, call_id, meta))
        self.finalizing.add(task)
        task.add_done_callback(self.finalizing.discard)

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
            if self.recorder is not None:       # the whole call, from the answer on [Sendai 1.5]
                await s.exec("MixMonitor", str(self.recorder.spool_path(call_id)))
                self.recording.add(call_id)
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

    # ------------------------------------------------------------ queueing (acd.engine decides)

    def _t(self) -> float:
        """The ACD's clock: Unix seconds of the handler's wall clock (simulated in the lab)."""
        return self.now().timestamp()

    async def _connect(self, s: AGISession, action: flow.Connect, call_id: str) -> flow.Connected:
        acd = self.acd
        res = acd.enqueue(call_id, action.queue, action.language, action.priority, self._t(),
                          extra_skills=action.skills)
        if isinstance(res, Refused):               # the queue is full: the congestion message
            self._flush()
            await s.stream_file(sound_name("congestion"))
            return flow.Connected(False, None, "full")
        inbox: asyncio.Queue = asyncio.Queue()
        self.inboxes[call_id] = inbox
        self._dispatch()
        music = False
        try:
            if inbox.empty():
                await s.stream_file(sound_name("please-wait"))
                await s.command("SET MUSIC", "on", "default")
                music = True
            while True:
                item = await self._next(s, inbox)
                if item is None:                     # the caller hung up while waiting
                    self._leave(call_id)
                    raise AGIHangup("caller hung up while waiting")
                if music:
                    await s.command("SET MUSIC", "off")
                    music = False
                if isinstance(item, Fallback):
                    if item.kind == "message" and item.value:
                        await s.stream_file(sound_name(item.value))
                    return flow.Connected(False, None, item.kind)
                result = await self._ring(s, call_id, item)
                if result is not None:
                    return result
                await s.command("SET MUSIC", "on", "default")
                music = True
        finally:
            self.inboxes.pop(call_id, None)

    async def _next(self, s: AGISession, inbox: asyncio.Queue):
        """The next offer or fallback for this caller; None when the caller is gone. Ticks the
        ACD while waiting, so overflow stages and timeouts happen on time."""
        gone = asyncio.ensure_future(s.wait_gone())
        try:
            while True:
                get = asyncio.ensure_future(inbox.get())
                done, _ = await asyncio.wait({get, gone}, timeout=self.tick_seconds,
                                             return_when=asyncio.FIRST_COMPLETED)
                if get in done:
                    return get.result()
                get.cancel()
                if gone in done:
                    return None
                self._tick()
        finally:
            gone.cancel()

    async def _ring(self, s: AGISession, call_id: str, offer: Offer) -> flow.Connected | None:
        """Dial the offered operator. Connected when answered; None (back in line) when not."""
        answered_at = self.dial_watch.expect(call_id) if self.dial_watch is not None else None
        dial = asyncio.ensure_future(s.exec("Dial", offer.endpoint, int(offer.ring_timeout),
                                            timeout=offer.ring_timeout + MAX_CALL_SECONDS))
        picked_up = False
        try:
            if answered_at is not None:
                await asyncio.wait({dial, answered_at}, return_when=asyncio.FIRST_COMPLETED)
                if answered_at.done() and not answered_at.cancelled():
                    self.acd.answered(call_id, offer.agent_id, self._t())
                    self._flush()
                    picked_up = True
            await dial
            status = await s.get_variable("DIALSTATUS")
        except BaseException:
            if picked_up:
                self.acd.ended(call_id, self._t(), by="caller")
            else:
                self._leave(call_id)
            raise
        finally:
            if self.dial_watch is not None:
                self.dial_watch.forget(call_id)
        if status == "ANSWER":
            if not picked_up:
                self.acd.answered(call_id, offer.agent_id, self._t())
            self.acd.ended(call_id, self._t(), by="caller" if s.hungup else "agent")
            self._dispatch()
            return flow.Connected(True, offer.agent_id, "answered")
        if s.hungup or status == "CANCEL":
            self.acd.ring_no_answer(call_id, offer.agent_id, self._t())
            self._leave(call_id)
            raise AGIHangup("caller hung up while ringing")
        self.acd.ring_no_answer(call_id, offer.agent_id, self._t())
        self._dispatch()
        return None

    def _leave(self, call_id: str) -> None:
        """The caller left the queue (hung up, or the link dropped): log the abandon."""
        try:
            self.acd.abandon(call_id, self._t())
        except (KeyError, ACDError):
            pass                                     # already connected, ended or timed out
        self._dispatch()

    def _tick(self) -> None:
        for fb in self.acd.tick(self._t()):
            box = self.inboxes.get(fb.call_id)
            if box is not None:
                box.put_nowait(fb)
        self._dispatch()

    def _dispatch(self) -> None:
        """Match waiting callers with free operators and hand each offer to its caller."""
        for offer in self.acd.offers(self._t()):
            box = self.inboxes.get(offer.call_id)
            if box is not None:
                box.put_nowait(offer)
            else:                                    # the caller is gone: free the operator again
                self.acd.ring_no_answer(offer.call_id, offer.agent_id, self._t())
                self._leave(offer.call_id)
        self._flush()

    def _flush(self) -> None:
        """Queue events to the queue log, agent states to their table, congestion to the mode log."""
        events = self.acd.drain_events()
        if events and self.queue_log is not None:
            asyncio.ensure_future(self._record(self._persist, events, self.acd.snapshot()))
        waiting = [c for c in self.acd.calls() if c.state == "waiting"]
        oldest = self._t() - min((c.enqueued for c in waiting), default=self._t())
        change = self.congestion.observe(len(waiting), oldest)
        if change is not None and self.modes is not None:
            asyncio.ensure_future(self._record(self.modes.set_congestion, change, by="auto",
                                               reason="queue thresholds", at=self.now()))

    def _persist(self, events, snapshot) -> None:
        with self._persist_lock:
            self.queue_log.append(events)
            if self.agent_states is not None:
                self.agent_states.save(snapshot)

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
