"""Simulated channels, bridges and the AMI event bus of the lab PBX.

A Channel carries the fields Asterisk puts in every channel event (the 14-line block
``Channel .. Linkedid`` in ami_call_lifecycle.jsonl), its variables, its DTMF listeners and
a hangup flag. Everything is asyncio; simulated durations go through ``Clock``.
"""
from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from typing import Callable

STATE_DESC = {0: "Down", 4: "Ring", 5: "Ringing", 6: "Up"}
CAUSE_TXT = {0: "Unknown", 16: "Normal Clearing", 17: "User busy", 19: "No user responding",
             20: "Subscriber absent", 21: "Call Rejected", 32: "Circuit/channel congestion",
             34: "Circuit/channel congestion", 127: "Interworking, unspecified"}


class ChannelHungUp(Exception):
    """The channel hung up while a media operation ran; ``endpos`` is where playback stopped."""

    def __init__(self, endpos: int = 0):
        super().__init__("hangup")
        self.endpos = endpos


class Clock:
    """Simulated time: every simulated duration is multiplied by ``scale`` before sleeping."""

    def __init__(self, scale: float):
        if scale <= 0:
            raise ValueError("time_scale must be > 0")
        self.scale = scale

    def real(self, sim_seconds: float) -> float:
        return sim_seconds * self.scale

    async def sleep(self, sim_seconds: float):
        await asyncio.sleep(max(0.0, sim_seconds) * self.scale)

    def now(self) -> float:
        """Simulated seconds on the loop clock (only differences are meaningful)."""
        return asyncio.get_running_loop().time() / self.scale


class EventBus:
    """Fan-out of AMI events to subscribers (the AMI server's client sessions)."""

    def __init__(self):
        self._subs: list[Callable[[list[tuple[str, str]]], None]] = []

    def subscribe(self, fn):
        self._subs.append(fn)

    def unsubscribe(self, fn):
        with contextlib.suppress(ValueError):
            self._subs.remove(fn)

    def emit(self, name: str, privilege: str, pairs: list[tuple[str, str]]):
        msg = [("Event", name), ("Privilege", f"{privilege},all")] + list(pairs)
        for fn in list(self._subs):
            fn(msg)


class Channel:
    def __init__(self, registry: "ChannelRegistry", name: str, uniqueid: str, *, linkedid: str | None = None,
                 cid_num: str = "", cid_name: str = "", context: str = "default", exten: str = "s",
                 priority: int = 1, state: int = 0, dnid: str = "", tech: str = "PJSIP"):
        self.reg = registry
        self.name = name
        self.uniqueid = uniqueid
        self.linkedid = linkedid or uniqueid
        self.cid_num, self.cid_name = cid_num, cid_name
        self.cl_num = self.cl_name = "<unknown>"
        self.context, self.exten, self.priority = context, exten, priority
        self.state = state
        self.dnid = dnid
        self.tech = tech
        self.language = "en"
        self.accountcode = ""
        self.vars: dict[str, str] = {}
        self.hangupcause = 0
        self.hungup = asyncio.Event()
        self.destroyed = False
        self.app = ""
        self.appdata = ""
        self.created = time.time()
        self.created_mono = time.monotonic()
        self.answered_mono: float | None = None
        self.bridge: "Bridge | None" = None
        self.bridge_peer: "Channel | None" = None
        self.mixmonitor: str | None = None
        self._listeners: list[asyncio.Queue] = []
        self.on_hangup: list[Callable[[], None]] = []  # e.g. stop a Dial's bridge
        self.redirect_to: tuple[str, str, int] | None = None

    # --- event helpers -------------------------------------------------
    def snapshot(self, prefix: str = "") -> list[tuple[str, str]]:
        p = prefix
        return [
            (f"{p}Channel", self.name), (f"{p}ChannelState", str(self.state)),
            (f"{p}ChannelStateDesc", STATE_DESC.get(self.state, "Unknown")),
            (f"{p}CallerIDNum", self.cid_num or "<unknown>"), (f"{p}CallerIDName", self.cid_name or "<unknown>"),
            (f"{p}ConnectedLineNum", self.cl_num), (f"{p}ConnectedLineName", self.cl_name),
            (f"{p}Language", self.language), (f"{p}AccountCode", self.accountcode),
            (f"{p}Context", self.context), (f"{p}Exten", self.exten), (f"{p}Priority", str(self.priority)),
            (f"{p}Uniqueid", self.uniqueid), (f"{p}Linkedid", self.linkedid),
        ]

    def event(self, name: str, privilege: str, *extra: tuple[str, str]):
        self.reg.bus.emit(name, privilege, self.snapshot() + list(extra))

    def set_var(self, name: str, value: str, emit: bool = True):
        if name.upper() == "CHANNEL(LANGUAGE)":
            # a function write, not a variable: Asterisk changes the channel (no VarSet event)
            if value:
                self.language = value
            return
        self.vars[name] = value
        if emit:
            self.event("VarSet", "dialplan", ("Variable", name), ("Value", value))

    def set_state(self, state: int):
        if state != self.state:
            self.state = state
            if state == 6 and self.answered_mono is None:
                self.answered_mono = time.monotonic()
            self.event("Newstate", "call")

    def newexten(self, app: str, data: str, exten: str | None = None, priority: int | None = None):
        if exten is not None:
            self.exten = exten
        if priority is not None:
            self.priority = priority
        self.app, self.appdata = app, data
        self.event("Newexten", "dialplan", ("Extension", self.exten), ("Application", app), ("AppData", data))

    def set_connected(self, num: str, name: str):
        self.cl_num, self.cl_name = num or "<unknown>", name or "<unknown>"
        self.event("NewConnectedLine", "call")

    @property
    def alive(self) -> bool:
        return not self.hungup.is_set()

    # --- hangup --------------------------------------------------------
    def request_hangup(self, cause: int | None = None, *, soft: bool = False, tech_cause: str | None = None):
        """Mark the channel hung up (BYE from the far end, AMI Hangup, HANGUP command...).

        A BYE gives ``HangupRequest`` without Cause (ami_during_caller_hangs_up_midcommand);
        the AGI HANGUP command gives ``SoftHangupRequest Cause: 32``.
        """
        if self.hungup.is_set():
            return
        extra = []
        if cause is not None:
            extra.append(("Cause", str(cause)))
            if cause and not soft:  # soft hangups (AGI HANGUP 32, end of dialplan 16) keep the cause
                self.hangupcause = cause
        if tech_cause:
            extra.append(("TechCause", tech_cause))
        self.event("SoftHangupRequest" if soft else "HangupRequest", "call", *extra)
        self.hungup.set()
        for cb in list(self.on_hangup):
            cb()

    def destroy(self, cause: int | None = None, tech_cause: str | None = None):
        """The final ``Hangup`` event; removes the channel from the registry."""
        if self.destroyed:
            return
        if cause is not None:
            self.hangupcause = cause
        self.hungup.set()
        self.destroyed = True
        extra = [("Cause", str(self.hangupcause)), ("Cause-txt", CAUSE_TXT.get(self.hangupcause, "Unknown"))]
        if tech_cause:
            extra.append(("TechCause", tech_cause))
        self.event("Hangup", "call", *extra)
        self.reg.remove(self)

    # --- DTMF ----------------------------------------------------------
    @contextlib.contextmanager
    def listen(self):
        """Digits that arrive while nobody listens are dropped, like res_agi's idle ast_read()."""
        q: asyncio.Queue = asyncio.Queue()
        self._listeners.append(q)
        try:
            yield q
        finally:
            self._listeners.remove(q)

    def dtmf(self, digit: str, duration_ms: int = 320):
        if not self.alive:
            return
        peer = self.bridge_peer
        self.event("DTMFBegin", "dtmf", ("Digit", digit), ("Direction", "Received"))
        if peer:
            peer.event("DTMFBegin", "dtmf", ("Digit", digit), ("Direction", "Sent"))
        self.event("DTMFEnd", "dtmf", ("Digit", digit), ("DurationMs", str(duration_ms)), ("Direction", "Received"))
        if peer:
            peer.event("DTMFEnd", "dtmf", ("Digit", digit), ("DurationMs", str(duration_ms)), ("Direction", "Sent"))
        for q in self._listeners:
            q.put_nowait(digit)

    # --- variables -----------------------------------------------------
    def get_var(self, name: str) -> str | None:
        """Channel variables plus the builtins/functions the app reads."""
        up = name.upper()
        builtin = {
            "CHANNEL": self.name, "UNIQUEID": self.uniqueid, "LINKEDID": self.linkedid,
            "EXTEN": self.exten, "CONTEXT": self.context, "PRIORITY": str(self.priority),
            "HANGUPCAUSE": str(self.hangupcause), "CALLERID(NUM)": self.cid_num,
            "CALLERID(NAME)": self.cid_name, "CALLERID(ALL)": f'"{self.cid_name}" <{self.cid_num}>',
            "CALLERID(DNID)": self.dnid, "CHANNEL(STATE)": STATE_DESC.get(self.state, "Unknown"),
            "CHANNEL(NAME)": self.name, "CHANNEL(UNIQUEID)": self.uniqueid, "CHANNEL(LANGUAGE)": self.language,
            "CONNECTEDLINE(NUM)": "" if self.cl_num == "<unknown>" else self.cl_num,
            "CONNECTEDLINE(NAME)": "" if self.cl_name == "<unknown>" else self.cl_name,
        }
        if name in self.vars:
            return self.vars[name]
        if up in builtin:
            return builtin[up]
        if up.startswith("DB(") and up.endswith(")"):
            fam, _, key = name[3:-1].partition("/")
            return self.reg.astdb.get((fam, key))
        return self.reg.globals.get(name)

    def expand(self, text: str) -> str:
        """``${VAR}`` substitution (nested braces allowed), enough for GET FULL VARIABLE."""
        out, i = [], 0
        while i < len(text):
            if text.startswith("${", i):
                depth, j = 1, i + 2
                while j < len(text) and depth:
                    if text.startswith("${", j):
                        depth += 1
                        j += 2
                        continue
                    if text[j] == "}":
                        depth -= 1
                    j += 1
                inner = self.expand(text[i + 2: j - 1])
                out.append(self.get_var(inner) or "")
                i = j
            else:
                out.append(text[i])
                i += 1
        return "".join(out)

    def seconds_up(self) -> int:
        return int(time.monotonic() - self.created_mono)


class Bridge:
    def __init__(self, registry: "ChannelRegistry"):
        self.reg = registry
        self.id = str(uuid.uuid4())
        self.members: list[Channel] = []

    def _fields(self):
        return [("BridgeUniqueid", self.id), ("BridgeType", "basic"), ("BridgeTechnology", "simple_bridge"),
                ("BridgeCreator", "<unknown>"), ("BridgeName", "<unknown>"),
                ("BridgeNumChannels", str(len(self.members))), ("BridgeVideoSourceMode", "none")]

    def create(self):
        self.reg.bus.emit("BridgeCreate", "call", self._fields())

    def enter(self, ch: Channel):
        self.members.append(ch)
        ch.bridge = self
        self.reg.bus.emit("BridgeEnter", "call", self._fields() + ch.snapshot())

    def leave(self, ch: Channel):
        if ch in self.members:
            self.members.remove(ch)
            ch.bridge = None
            self.reg.bus.emit("BridgeLeave", "call", self._fields() + ch.snapshot())

    def destroy(self):
        self.reg.bus.emit("BridgeDestroy", "call", self._fields())


class ChannelRegistry:
    """Names, uniqueids and the live channel table, shared by AGI, Dial, Originate and AMI."""

    def __init__(self, bus: EventBus):
        self.bus = bus
        self.channels: dict[str, Channel] = {}
        self.globals: dict[str, str] = {}
        self.astdb: dict[tuple[str, str], str] = {}
        self._name_seq = 0
        self._uid_seq = 0
        self._local_seq = 0
        self.calls_processed = 0

    def new(self, resource: str, *, tech: str = "PJSIP", local: bool = False, **kw) -> Channel:
        if local:
            self._local_seq += 1
            name = f"Local/{resource}-{self._local_seq:08x};1"
        else:
            name = f"{tech}/{resource}-{self._name_seq:08x}"
            self._name_seq += 1
        uid = f"{int(time.time())}.{self._uid_seq}"
        self._uid_seq += 1
        ch = Channel(self, name, uid, tech="Local" if local else tech, **kw)
        self.channels[name] = ch
        ch.event("Newchannel", "call")
        return ch

    def remove(self, ch: Channel):
        self.channels.pop(ch.name, None)

    def get(self, name: str) -> Channel | None:
        return self.channels.get(name)
