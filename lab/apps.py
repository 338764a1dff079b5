"""Dialplan applications reachable through AGI ``EXEC``: return values as pbx_exec gives them.

Dial follows exec_dial_agent_{answer,noanswer,busy} and ami_call_lifecycle: the variable
resets, DialBegin/DialState/DialEnd, the bridge events, and ``-1`` when the callee hung up
(no ``g`` option). Note: DIALEDTIME and ANSWEREDTIME are both measured from the caller
channel's creation in the golden data (both 3538 ms), so the lab does the same.
"""
from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from .channels import Bridge, ChannelHungUp
from .media import play, wait_any

if TYPE_CHECKING:
    from .agi_client import AGISession


async def app_playback(s: "AGISession", data: str) -> int:
    files, _, opts = data.partition(",")
    status = "SUCCESS"
    for f in filter(None, files.split("&")):
        with s.chan.listen() as q:
            try:
                r = await play(s.chan, s.pbx.sounds, s.pbx.clock, f, "", q)
            except ChannelHungUp:
                s.chan.set_var("PLAYBACKSTATUS", "FAILED")
                return -1
        if r is None:
            status = "FAILED"
    s.chan.set_var("PLAYBACKSTATUS", status)
    return 0


async def app_background(s: "AGISession", data: str) -> int:
    files = data.partition(",")[0]
    for f in filter(None, files.split("&")):
        with s.chan.listen() as q:
            try:
                r = await play(s.chan, s.pbx.sounds, s.pbx.clock, f, "0123456789*#", q)
            except ChannelHungUp:
                return -1
        if r and r[0]:
            return ord(r[0])
    return 0


async def app_wait(s: "AGISession", data: str) -> int:
    secs = float(data or 0)
    if not s.chan.alive:
        # caller_hangs_up_during_exec_wait: on a dead channel Wait really waits and returns 0
        await s.pbx.clock.sleep(secs)
        return 0
    try:
        await wait_any(s.chan, None, secs, s.pbx.clock)
    except ChannelHungUp:
        return -1
    return 0


async def app_answer(s: "AGISession", data: str) -> int:
    if s.chan.state != 6 and s.chan.alive:
        await s.pbx.clock.sleep(s.pbx.answer_delay)
        s.chan.set_state(6)
    return 0 if s.chan.alive else -1


async def app_hangup(s: "AGISession", data: str) -> int:
    cause = int(data) if data.strip().isdigit() else 16
    s.chan.request_hangup(cause, soft=True)
    return -1


async def app_noop(s: "AGISession", data: str) -> int:
    return 0


async def app_set(s: "AGISession", data: str) -> int:
    name, sep, value = data.partition("=")
    if not sep:
        return 0
    if name.upper() == "AGISIGHUP":
        s.sighup = value.lower() not in ("no", "false", "0")
    s.chan.set_var(name, value)
    return 0


async def app_mixmonitor(s: "AGISession", data: str) -> int:
    fname = data.split(",")[0]
    s.chan.mixmonitor = fname
    s.chan.set_var("MIXMONITOR_FILENAME", fname)
    s.chan.event("MixMonitorStart", "call")
    s.pbx.recordings.append((s.chan.name, fname))
    _MixRecording(s.pbx.clock, s.chan, fname).start()
    return 0


async def app_stopmixmonitor(s: "AGISession", data: str) -> int:
    if s.chan.mixmonitor:
        s.chan.mixmonitor = None
        rec = getattr(s.chan, "_mixrecording", None)
        if rec is not None:
            rec.stop()
        s.chan.event("MixMonitorStop", "call")
    return 0


# --- MixMonitor's file ---------------------------------------------------------------
# The lab has no audio path, so the recording is synthesised when it stops (StopMixMonitor or
# the channel's hangup): an 8 kHz mono 16-bit WAV as long as the recording ran in simulated
# time, a quiet 160 Hz hum with the channel's DTMF digits as their dual tones where they were
# pressed. Like Asterisk, a file that cannot be written is logged and the call goes on; unlike
# Asterisk the lab does not create missing folders (so replayed golden paths write nothing).

MIX_RATE = 8000
_DTMF_HZ = {"1": (697, 1209), "2": (697, 1336), "3": (697, 1477), "A": (697, 1633),
            "4": (770, 1209), "5": (770, 1336), "6": (770, 1477), "B": (770, 1633),
            "7": (852, 1209), "8": (852, 1336), "9": (852, 1477), "C": (852, 1633),
            "*": (941, 1209), "0": (941, 1336), "#": (941, 1477), "D": (941, 1633)}


class _MixRecording:
    """One MixMonitor on one channel: taps DTMF like a listener, writes the WAV once at the end."""

    def __init__(self, clock, chan, path: str):
        self.clock, self.chan, self.path = clock, chan, path
        self.marks: list[tuple[float, str]] = []
        self.t0 = 0.0
        self.done = False

    def start(self):
        old = getattr(self.chan, "_mixrecording", None)
        if old is not None:          # a second MixMonitor replaces the first (the lab keeps one)
            old.stop()
        self.t0 = self.clock.now()
        self.chan._mixrecording = self
        self.chan._listeners.append(self)      # receives put_nowait(digit) like a DTMF listener
        self.chan.on_hangup.append(self.stop)

    def put_nowait(self, digit: str):
        self.marks.append((self.clock.now() - self.t0, digit))

    def stop(self):
        if self.done:
            return
        self.done = True
        seconds = max(0.0, self.clock.now() - self.t0)
        for lst in (self.chan._listeners, self.chan.on_hangup):
            for item in (self, self.stop):
                if item in lst:
                    lst.remove(item)
        if getattr(self.chan, "_mixrecording", None) is self:
            self.chan._mixrecording = None
        try:
            write_mix_wav(self.path, seconds, self.marks)
        except (OSError, ValueError) as e:
            import logging
            logging.getLogger("lab.pbx").warning("MixMonitor: cannot write %s: %s", self.path, e)


def write_mix_wav(path: str, seconds: float, marks: list[tuple[float, str]] = ()) -> bool:
    """Write the synthetic recording; False (nothing written) for a path the lab will not create."""
    import array
    import math
    import os
    import sys
    import wave
    if not os.path.isabs(path) or not path.lower().endswith(".wav") or not os.path.isdir(os.path.dirname(path)):
        return False
    n = int(round(seconds * MIX_RATE))
    period = array.array("h", (int(600 * math.sin(2 * math.pi * i / 50)) for i in range(50)))  # 160 Hz
    samples = period * (n // 50 + 1)
    del samples[n:]
    tone = int(0.2 * MIX_RATE)
    for t, digit in marks:
        f1, f2 = _DTMF_HZ.get(digit.upper(), (0, 0))
        start = int(t * MIX_RATE)
        for i in range(max(0, start), min(n, start + tone)):
            x = 2 * math.pi * (i - start) / MIX_RATE
            samples[i] = int(6000 * (math.sin(f1 * x) + math.sin(f2 * x)))
    if sys.byteorder == "big":
        samples.byteswap()
    with wave.open(path, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(MIX_RATE)
        w.writeframes(samples.tobytes())
    return True


DIAL_VARS = ("DIALSTATUS", "DIALEDPEERNUMBER", "DIALEDPEERNAME", "ANSWEREDTIME", "ANSWEREDTIME_MS",
             "DIALEDTIME", "DIALEDTIME_MS", "RINGTIME", "RINGTIME_MS", "PROGRESSTIME", "PROGRESSTIME_MS")


async def app_dial(s: "AGISession", data: str) -> int:
    parts = data.split(",")
    target = parts[0].split("&")[0]
    timeout = float(parts[1]) if len(parts) > 1 and parts[1].strip() else None
    opts = parts[2] if len(parts) > 2 else ""
    return await dial(s.pbx, s.chan, target, timeout, opts, session=s)


async def dial(pbx, caller, target: str, timeout: float | None, opts: str = "", session=None) -> int:
    """Dial one endpoint from ``caller``; returns the app result (0 or -1)."""
    for v in DIAL_VARS:
        caller.set_var(v, "")
    if not caller.alive:
        caller.set_var("DIALSTATUS", "CANCEL")
        return -1
    t_dial = time.monotonic()
    peer_def, resource, dialstring = pbx.resolve(target)
    if peer_def is None:  # no such endpoint: the channel cannot even be created
        caller.hangupcause = 66 if not target.upper().startswith("PJSIP/") else 20
        caller.set_var("DIALSTATUS", "CHANUNAVAIL")
        return 0
    peer = pbx.reg.new(resource, cid_num=peer_def.number, cid_name=peer_def.name, context=caller.context,
                       exten="s", priority=1, state=0, linkedid=caller.linkedid)
    peer.set_var("DIALEDPEERNUMBER", dialstring)
    peer.cl_num, peer.cl_name = caller.cid_num, caller.cid_name
    peer.newexten("AppDial", "(Outgoing Line)", exten=caller.exten, priority=1)
    peer.event("NewConnectedLine", "call")
    caller.reg.bus.emit("DialBegin", "call", caller.snapshot() + peer.snapshot("Dest") + [("DialString", dialstring)])

    def end_dial(status: str):
        caller.reg.bus.emit("DialEnd", "call", caller.snapshot() + peer.snapshot("Dest") + [("DialStatus", status)])

    behaviour = peer_def.behaviour
    if pbx.agent_busy(peer_def) and behaviour == "answer":
        behaviour = "busy"
    if behaviour in ("busy", "unreachable"):
        cause, tech, status = (17, "486", "BUSY") if behaviour == "busy" else (20, "503", "CHANUNAVAIL")
        caller.set_connected(peer_def.number, peer_def.name)
        peer.request_hangup(cause, tech_cause=tech)
        end_dial(status)
        caller.set_var("DIALSTATUS", status)
        caller.hangupcause = cause
        asyncio.get_running_loop().call_soon(peer.destroy, cause, tech)
        return 0

    pbx.agent_claim(peer_def)
    try:
        caller.set_connected(peer_def.number, peer_def.name)
        peer.set_state(5)
        caller.set_var("RINGTIME", "0")
        caller.set_var("RINGTIME_MS", "1")
        caller.reg.bus.emit("DialState", "call", caller.snapshot() + peer.snapshot("Dest") + [("DialStatus", "RINGING")])
        ring = peer_def.ring_delay if behaviour == "answer" else None
        wait = ring if timeout is None else (timeout if ring is None else min(ring, timeout))
        try:
            await _wait_either(pbx, caller, peer, wait)
        except ChannelHungUp:
            # caller gave up while it rang (or the AMI hung up the peer)
            status = "CANCEL" if not caller.alive else "NOANSWER"
            peer.request_hangup(0 if not caller.alive else None)
            end_dial(status)
            caller.set_var("DIALSTATUS", status)
            asyncio.get_running_loop().call_soon(peer.destroy, 0)
            return -1 if not caller.alive else 0
        if ring is None or (timeout is not None and timeout < ring):
            end_dial("NOANSWER")
            caller.set_var("DIALSTATUS", "NOANSWER")
            asyncio.get_running_loop().call_soon(peer.destroy, 0)
            return 0

        # answered
        peer.set_state(6)
        caller.set_var("DIALSTATUS", "ANSWER")
        caller.set_var("DIALEDPEERNAME", peer.name)
        caller.set_var("DIALEDPEERNUMBER", dialstring)
        end_dial("ANSWER")
        if session is not None:
            pbx.note_answered(caller, peer_def.endpoint)
        bridge = Bridge(pbx.reg)
        bridge.create()
        peer.newexten("AppDial", "(Outgoing Line)", exten="")
        bridge.enter(peer)
        bridge.enter(caller)
        caller.bridge_peer, peer.bridge_peer = peer, caller
        peer.set_var("BRIDGEPEER", caller.name)
        caller.set_var("BRIDGEPEER", peer.name)
        callee_hung_up = False
        try:
            await _wait_either(pbx, caller, peer, peer_def.talk_time)
            callee_hung_up = True  # talk time over: the agent hangs up
            peer.request_hangup(16)
        except ChannelHungUp:
            callee_hung_up = caller.alive
            if not caller.alive and peer.alive:
                peer.request_hangup(16)
        for ch in (peer, caller):
            ch.set_var("BRIDGEPEER", "")
        caller.bridge_peer = peer.bridge_peer = None
        bridge.leave(peer)
        bridge.leave(caller)
        bridge.destroy()
        secs = (time.monotonic() - caller.created_mono) / pbx.clock.scale
        for v in ("ANSWEREDTIME", "DIALEDTIME"):
            caller.set_var(v, str(int(secs)))
            caller.set_var(v + "_MS", str(int(secs * 1000)))
        caller.set_var("DIALSTATUS", "ANSWER")
        caller.hangupcause = 16
        asyncio.get_running_loop().call_soon(peer.destroy, 16)
        if callee_hung_up and "g" in opts:
            return 0
        return -1
    finally:
        pbx.agent_release(peer_def)
        _ = t_dial


async def _wait_either(pbx, a, b, secs):
    """Sleep ``secs`` simulated seconds; raise ChannelHungUp if either channel hangs up first."""
    ha = asyncio.ensure_future(a.hungup.wait())
    hb = asyncio.ensure_future(b.hungup.wait())
    try:
        done, _ = await asyncio.wait({ha, hb}, timeout=None if secs is None else pbx.clock.real(secs),
                                     return_when=asyncio.FIRST_COMPLETED)
        if done:
            raise ChannelHungUp()
    finally:
        ha.cancel()
        hb.cancel()


APPS = {
    "playback": app_playback, "background": app_background, "wait": app_wait, "answer": app_answer,
    "hangup": app_hangup, "noop": app_noop, "set": app_set, "mixmonitor": app_mixmonitor,
    "stopmixmonitor": app_stopmixmonitor, "dial": app_dial, "verbose": app_noop, "progress": app_noop,
    "ringing": app_noop, "musiconhold": app_wait, "startmusiconhold": app_noop, "stopmusiconhold": app_noop,
}
