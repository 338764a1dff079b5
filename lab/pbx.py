"""LabPBX: a small simulated Asterisk 22.10.1 for tests (FastAGI client + AMI server).

Callers are scripted (CallerScript), agents are simulated endpoints (LabAgent), the
outbound trunk reaches simulated departments. The wire behaviour follows the golden
transcripts in ../shared/golden/asterisk-22; see lab/agi_wire.py and lab/ami_server.py.

Run standalone: ``python -m lab.pbx --agi 127.0.0.1:4573 --ami 127.0.0.1:5038 --config lab.json``
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import time
from dataclasses import dataclass, field

from . import apps as _apps
from .agi_client import AGISession, thread_id
from .channels import Channel, ChannelRegistry, Clock, EventBus
from .media import Sounds

__all__ = ["LabPBX", "LabAgent", "CallerScript", "CallResult"]


@dataclass
class LabAgent:
    endpoint: str                       # "PJSIP/op1001"
    name: str = ""
    ring_delay: float = 2.0
    talk_time: float = 20.0
    behaviour: str = "answer"           # answer | noanswer | busy | unreachable
    number: str | None = None           # caller id number of the agent leg (default: digits of the resource)

    def __post_init__(self):
        if self.behaviour not in ("answer", "noanswer", "busy", "unreachable"):
            raise ValueError(f"unknown behaviour {self.behaviour!r}")
        res = self.resource
        if self.number is None:
            digits = re.sub(r"\D", "", res.split("@")[0])
            self.number = digits or res
        if not self.name:
            self.name = self.number

    @property
    def resource(self) -> str:
        return self.endpoint.split("/", 1)[1] if "/" in self.endpoint else self.endpoint


@dataclass
class CallerScript:
    caller_id: str
    dialed: str
    digits: list[tuple[float, str]] = field(default_factory=list)  # (seconds after AGI start, digit)
    patience: float | None = None       # hang up if not bridged to an agent by then (from call start)
    hangup_at: float | None = None      # hang up at this time regardless (from call start)
    caller_name: str | None = None
    hangup_during: tuple[str, float] | None = None  # (command prefix, seconds into it): BYE mid-command


@dataclass
class CallResult:
    channel: str
    uniqueid: str
    agistatus: str | None
    dialstatus: str | None
    hangup_cause: int
    answered_by: str | None
    trace: list[tuple[float, str, str]]   # (simulated seconds since AGI start, direction, line)
    variables: dict[str, str]
    duration: float = 0.0                 # simulated seconds


class LabPBX:
    def __init__(self, agi_host: str = "127.0.0.1", agi_port: int = 4573, routes: dict | None = None,
                 agents: list[LabAgent] | None = None, sounds: dict[str, float] | None = None,
                 sounds_dir: str | None = None, ami_host: str = "127.0.0.1", ami_port: int = 0,
                 ami_users: dict[str, str] | None = None, time_scale: float = 1.0, agisighup: bool = True,
                 agiexitonhangup: bool = False, context: str = "madoguchi", trunk: str = "odtrunk",
                 trunk_ring_delay: float = 3.0, trunk_talk_time: float = 30.0,
                 departments: dict[str, LabAgent] | None = None, queues: dict | None = None,
                 answer_delay: float = 0.5, say_seconds: float = 0.8, ami_queue_limit: int = 10000,
                 ami_auth_delay: float = 1.0):
        self.agi_host, self.agi_port = agi_host, agi_port
        self.routes = dict(routes or {})
        self.agents = {a.endpoint: a for a in (agents or [])}
        self.sounds = Sounds(sounds, sounds_dir)
        self.ami_host, self.ami_port = ami_host, ami_port
        self.ami_users = dict(ami_users or {})
        self.clock = Clock(time_scale)
        self.agisighup, self.agiexitonhangup = agisighup, agiexitonhangup
        self.context = context
        self.trunk = trunk
        self.trunk_ring_delay, self.trunk_talk_time = trunk_ring_delay, trunk_talk_time
        self.departments = dict(departments or {})
        self.answer_delay, self.say_seconds = answer_delay, say_seconds
        self.ami_queue_limit, self.ami_auth_delay = ami_queue_limit, ami_auth_delay
        self.bus = EventBus()
        self.reg = ChannelRegistry(self.bus)
        self.started = time.time()
        self.queues = _load_queues(queues or {}, self.started)
        self.recordings: list[tuple[str, str]] = []
        self._in_use: dict[str, int] = {}
        self._answered: dict[str, str] = {}
        self._ami = None
        self._tasks: set[asyncio.Task] = set()

    # --- lifecycle ------------------------------------------------------
    async def start(self):
        from .ami_server import AMIServer
        self.started = time.time()
        self._ami = AMIServer(self, self.ami_host, self.ami_port)
        await self._ami.start()
        self.ami_port = self._ami.port

    async def stop(self):
        for ch in list(self.reg.channels.values()):
            ch.request_hangup(16)
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._ami:
            await self._ami.stop()

    def _spawn(self, coro) -> asyncio.Task:
        t = asyncio.ensure_future(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)
        return t

    # --- endpoints --------------------------------------------------------
    def resolve(self, target: str):
        """Dial target -> (LabAgent-like definition, channel resource, DialString) or (None, ..)."""
        if target in self.agents:
            a = self.agents[target]
            return a, a.resource.split("@")[0], a.resource
        tech, _, res = target.partition("/")
        if tech.upper() == "PJSIP" and "@" in res:
            number, _, trunk = res.partition("@")
            if trunk == self.trunk:
                dept = self.departments.get(number) or LabAgent(
                    f"PJSIP/{number}@{trunk}", name=number, ring_delay=self.trunk_ring_delay,
                    talk_time=self.trunk_talk_time, number=number)
                return dept, trunk, res
        return None, None, None

    def agent_busy(self, a: LabAgent) -> bool:
        # only configured agents are single-line; trunk departments take any number of calls
        return a.endpoint in self.agents and self._in_use.get(a.endpoint, 0) > 0

    def agent_claim(self, a: LabAgent):
        self._in_use[a.endpoint] = self._in_use.get(a.endpoint, 0) + 1

    def agent_release(self, a: LabAgent):
        self._in_use[a.endpoint] = max(0, self._in_use.get(a.endpoint, 0) - 1)

    def note_answered(self, caller: Channel, endpoint: str):
        self._answered[caller.name] = endpoint

    def find_app(self, name: str):
        return _apps.APPS.get(name.lower())

    def _route(self, exten: str) -> dict | None:
        r = self.routes.get(exten)
        if r is None:
            return None
        if isinstance(r, str):
            r = {"script": r}
        return {"script": r["script"], "args": list(r.get("args", [])), "answer": bool(r.get("answer", False)),
                "vars": dict(r.get("vars", {})), "host": r.get("host", self.agi_host),
                "port": int(r.get("port", self.agi_port)), "priority": r.get("priority")}

    def agi_env(self, chan: Channel, url: str, script: str, priority: int) -> dict[str, str]:
        return {
            "network": "yes", "network_script": script, "request": url, "channel": chan.name,
            "language": chan.language, "type": chan.tech, "uniqueid": chan.uniqueid, "version": "22.10.1",
            "callerid": chan.cid_num or "unknown", "calleridname": chan.cid_name or "unknown",
            "callingpres": "0", "callingani2": "0", "callington": "0", "callingtns": "0",
            "dnid": chan.dnid or "unknown", "rdnis": "unknown", "context": chan.context,
            "extension": chan.exten, "priority": str(priority), "enhanced": "0.0",
            "accountcode": chan.accountcode, "threadid": str(thread_id()),
        }

    # --- running a channel through the dialplan ------------------------------
    async def run_dialplan(self, chan: Channel, exten: str, hangup_during=None) -> tuple[str | None, AGISession | None]:
        """``[answer,] [Set(..)...,] AGI(url), NoOp, Hangup`` for a routed extension."""
        route = self._route(exten)
        if route is None:
            chan.newexten("Hangup", "", exten=exten)
            chan.request_hangup(1, soft=True)
            return None, None
        prio = 1
        if route["answer"]:
            chan.newexten("Answer", "", priority=prio)
            await self.clock.sleep(self.answer_delay)  # a ringing PJSIP channel took ~0.5 s to answer
            chan.set_state(6)
            prio += 1
        sighup, exit_on = self.agisighup, self.agiexitonhangup
        for k, v in route["vars"].items():
            chan.newexten("Set", f"{k}={v}", priority=prio)
            chan.set_var(k, str(v))
            if k.upper() == "AGISIGHUP":
                sighup = str(v).lower() not in ("no", "false", "0")
            if k.upper() == "AGIEXITONHANGUP":
                exit_on = str(v).lower() in ("yes", "true", "1")
            prio += 1
        prio = int(route["priority"] or prio)  # e.g. 2 when the real dialplan had a NoOp first
        session = AGISession(self, chan, route["host"], route["port"], route["script"], route["args"],
                             sighup=sighup, exit_on_hangup=exit_on, priority=prio, hangup_during=hangup_during)
        chan.newexten("AGI", ",".join([session.url] + route["args"]), priority=prio)
        status = await session.run()
        chan.set_var("AGISTATUS", status)
        return status, session

    def _finish_channel(self, chan: Channel):
        if chan.alive:
            chan.newexten("Hangup", "")
            chan.request_hangup(16, soft=True)
            chan.hangupcause = chan.hangupcause or 16
        else:
            chan.event("SoftHangupRequest", "call", ("Cause", "16"))
        chan.newexten("NoOp", f"h: AGISTATUS={chan.vars.get('AGISTATUS', '')} DIALSTATUS={chan.vars.get('DIALSTATUS', '')}",
                      exten="h", priority=1)
        chan.destroy()

    async def call(self, script: CallerScript) -> CallResult:
        """One inbound call from a scripted caller; returns when its channel is gone."""
        loop = asyncio.get_running_loop()
        t_start = loop.time()
        chan = self.reg.new("caller", cid_num=script.caller_id, cid_name=script.caller_name or script.caller_id,
                            context=self.context, exten=script.dialed, priority=1, state=4, dnid=script.dialed)
        self.reg.calls_processed += 1
        chan.set_var("SIPDOMAIN", "127.0.0.1")
        timers = []
        for t, d in script.digits:
            timers.append(loop.call_at(t_start + self.clock.real(t), chan.dtmf, d))
        if script.hangup_at is not None:
            timers.append(loop.call_at(t_start + self.clock.real(script.hangup_at), chan.request_hangup))
        if script.patience is not None:
            def impatient():
                if chan.name not in self._answered:
                    chan.request_hangup()
            timers.append(loop.call_at(t_start + self.clock.real(script.patience), impatient))
        try:
            status, session = await self.run_dialplan(chan, script.dialed, script.hangup_during)
        finally:
            for h in timers:
                h.cancel()
        self._finish_channel(chan)
        return CallResult(
            channel=chan.name, uniqueid=chan.uniqueid, agistatus=status,
            dialstatus=chan.vars.get("DIALSTATUS") or None, hangup_cause=chan.hangupcause,
            answered_by=self._answered.pop(chan.name, None), trace=session.trace if session else [],
            variables=dict(chan.vars), duration=(loop.time() - t_start) / self.clock.scale)

    # --- AMI Originate -----------------------------------------------------------
    async def originate(self, *, channel: str, context: str | None, exten: str | None, priority: str | None,
                        application: str | None, data: str | None, callerid: str | None,
                        timeout_ms: int | None, variables: dict[str, str], action_id: str | None):
        """Async originate: ring the endpoint, then OriginateResponse; then run exten/app."""
        cid_name, cid_num = _split_callerid(callerid)
        ctx = context or self.context
        ext = exten or "s"

        def respond(ok: bool, ch: Channel | None):
            pairs = []
            if action_id is not None:
                pairs.append(("ActionID", action_id))
            pairs += [("Response", "Success" if ok else "Failure"),
                      ("Channel", ch.name if ok else channel), ("Context", ctx), ("Exten", ext),
                      ("Reason", "4" if ok else "0"), ("Uniqueid", ch.uniqueid if ok else "<unknown>"),
                      ("CallerIDNum", (cid_num or "<unknown>") if ok else "<unknown>"),
                      ("CallerIDName", (cid_name or "<unknown>") if ok else "<unknown>")]
            self.bus.emit("OriginateResponse", "call", pairs)

        tech, _, res = channel.partition("/")
        if tech.lower() == "local":
            ch = self.reg.new(res, local=True, cid_num=cid_num, cid_name=cid_name, context=ctx,
                              exten=res.split("@")[0], priority=1, state=0)
            peer_def = None
        else:
            peer_def, resource, dialstring = self.resolve(channel)
            if peer_def is None:
                respond(False, None)
                return
            ch = self.reg.new(resource, cid_num=cid_num, cid_name=cid_name, context=ctx, exten="s",
                              priority=1, state=0)
            ch.cl_num, ch.cl_name = cid_num or "<unknown>", cid_name or "<unknown>"
            self.bus.emit("DialBegin", "call", ch.snapshot("Dest") + [("DialString", dialstring)])
            behaviour = peer_def.behaviour
            if behaviour == "answer" and self.agent_busy(peer_def):
                behaviour = "busy"
            if behaviour in ("busy", "unreachable"):
                cause, tech_cause, st = (17, "486", "BUSY") if behaviour == "busy" else (20, "503", "CHANUNAVAIL")
                respond(False, None)
                ch.request_hangup(cause, tech_cause=tech_cause)
                self.bus.emit("DialEnd", "call", ch.snapshot("Dest") + [("DialStatus", st)])
                ch.destroy(cause, tech_cause)
                return
            self.agent_claim(peer_def)
            ch.set_state(5)
            self.bus.emit("DialState", "call", ch.snapshot("Dest") + [("DialStatus", "RINGING")])
            limit = (timeout_ms or 30000) / 1000
            ring = peer_def.ring_delay if behaviour == "answer" else None
            if ring is None or ring > limit:
                await self.clock.sleep(limit)
                respond(False, None)
                ch.request_hangup(0)
                self.bus.emit("DialEnd", "call", ch.snapshot("Dest") + [("DialStatus", "NOANSWER")])
                ch.destroy(0)
                self.agent_release(peer_def)
                return
            await self.clock.sleep(ring)
        for k, v in variables.items():
            ch.set_var(k, v, emit=False)
        ch.set_state(6)
        if peer_def is not None:
            self.bus.emit("DialEnd", "call", ch.snapshot("Dest") + [("DialStatus", "ANSWER")])
        else:
            self.bus.emit("DialBegin", "call", ch.snapshot("Dest") + [("DialString", res)])
            self.bus.emit("DialEnd", "call", ch.snapshot("Dest") + [("DialStatus", "ANSWER")])
        respond(True, ch)
        self._spawn(self._run_originated(ch, peer_def, ctx, ext, application, data))

    async def _run_originated(self, ch: Channel, peer_def, ctx, ext, application, data):
        try:
            hang_timer = None
            if peer_def is not None:  # the simulated person on that leg hangs up after talk_time
                hang_timer = asyncio.get_running_loop().call_later(
                    self.clock.real(peer_def.talk_time), ch.request_hangup, 16)
            if application:
                ch.newexten(application, data or "")
                app = self.find_app(application)
                if app:
                    await app(_AppShim(self, ch), data or "")
                else:
                    await ch.hungup.wait()
            else:
                ch.context = ctx
                ch.exten, ch.priority = ext, 1
                if self._route(ext):
                    await self.run_dialplan(ch, ext)
                else:
                    ch.newexten("Wait", "", priority=1)
                    await ch.hungup.wait()
            if hang_timer:
                hang_timer.cancel()
        finally:
            if peer_def is not None:
                self.agent_release(peer_def)
            if not ch.destroyed:
                self._finish_channel(ch)


class _AppShim:
    """What an app needs from an AGI session, for originated channels running an application."""

    def __init__(self, pbx: LabPBX, ch: Channel):
        self.pbx, self.chan, self.sighup = pbx, ch, True


def _split_callerid(cid: str | None) -> tuple[str, str]:
    if not cid:
        return "", ""
    m = re.match(r'\s*"?([^"<]*?)"?\s*<([^>]*)>', cid)
    if m:
        return m.group(1), m.group(2)
    return cid, cid


def _load_queues(spec: dict, login_time: float) -> dict:
    """queues={"support": {"strategy": "ringall", "members": [["PJSIP/agent1002", "Agent 1002"]]}}"""
    out = {}
    for name, q in spec.items():
        members = []
        for m in q.get("members", []):
            iface, mname = (m, m) if isinstance(m, str) else (m[0], m[1] if len(m) > 1 else m[0])
            members.append({"interface": iface, "name": mname, "membership": "static", "penalty": 0,
                            "paused": False, "reason": "", "lastpause": 0, "login": int(login_time)})
        out[name] = {"strategy": q.get("strategy", "ringall"), "members": members}
    return out


# --- standalone process -----------------------------------------------------------
def _hostport(s: str) -> tuple[str, int]:
    host, _, port = s.rpartition(":")
    return host or "127.0.0.1", int(port)


async def _main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m lab.pbx", description=__doc__.splitlines()[0])
    ap.add_argument("--agi", default="127.0.0.1:4573", help="where the app's FastAGI server listens")
    ap.add_argument("--ami", default="127.0.0.1:5038", help="where to listen for AMI (port 0 = any)")
    ap.add_argument("--config", help="JSON: routes, agents, sounds, ami_users, time_scale, ...")
    ns = ap.parse_args(argv)
    cfg = json.loads(open(ns.config).read()) if ns.config else {}
    agi_host, agi_port = _hostport(ns.agi)
    ami_host, ami_port = _hostport(ns.ami)
    agents = [LabAgent(**a) for a in cfg.pop("agents", [])]
    depts = {k: LabAgent(**v) for k, v in cfg.pop("departments", {}).items()}
    cfg.setdefault("ami_users", {"madoguchi": "secret"})
    pbx = LabPBX(agi_host=agi_host, agi_port=agi_port, ami_host=ami_host, ami_port=ami_port,
                 agents=agents, departments=depts, **cfg)
    await pbx.start()
    print(pbx.ami_port, flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await pbx.stop()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main())
