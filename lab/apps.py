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
    return 0


async def app_stopmixmonitor(s: "AGISession", data: str) -> int:
    if s.chan.mixmonitor:
        s.chan.mixmonitor = None
        s.chan.event("MixMonitorStop", "call")
    return 0


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
