"""The FreeSWITCH side of the Event Socket, emulated after the golden transcripts of FreeSWITCH
1.10.12 (../shared/golden/freeswitch-1.10): header order, reply texts, Content-Length placement,
URL encoding (agi.esl_protocol.url_encode re-encodes every recorded event byte for byte).

* ``LabFreeSWITCH.start_inbound()``: the inbound ESL server (port 8021): ``auth/request`` banner,
  ``auth`` (``-ERR invalid`` + disconnect-notice + close on a wrong password), ``-ERR command not
  found`` before auth, ``api``/``bgapi`` (with Job-UUID, BACKGROUND_JOB when subscribed),
  ``event plain|json``, ``filter``, ``nixevent``, ``noevents``, ``log``/``nolog``, ``exit``; every
  channel event of the emulated calls is streamed to subscribers (like ``event plain ALL``).
* ``LabFreeSWITCH.call(host, port, Caller(...))``: the dialplan ``socket`` app: connects to the
  app's outbound server, answers ``connect`` with the channel data, ``myevents``, ``linger``,
  ``event plain``, ``sendmsg`` execute (``+OK`` then CHANNEL_EXECUTE / CHANNEL_EXECUTE_COMPLETE,
  honouring ``Event-UUID``), ``api``, ``bgapi``, ``exit``. Applications: answer, playback,
  play_and_get_digits, set, bridge (agent answers / no answer / busy), record_session,
  stop_record_session, hangup; any other app completes at once with ``_none_``. A caller hang-up
  follows the recorded sequence (CHANNEL_HANGUP, EXECUTE_COMPLETE of the running app with
  ``PLAYBACK ERROR`` for playback, UNPARK, EXECUTE_COMPLETE socket, STATE CS_HANGUP/CS_REPORTING,
  HANGUP_COMPLETE, then the linger or disconnect notice).
* Failure knobs for tests: ``stall`` (verbs never answered, e.g. ``{"api"}``), ``stall_apps``
  (applications that never complete), ``drop_inbound()`` (close every inbound connection).

Not emulated: conference, eavesdrop, mod_callcenter, ``event xml``, audio.
"""
from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from dataclasses import dataclass, field
from email.utils import formatdate

from agi import esl_protocol as P

log = logging.getLogger("madoguchi.lab.esl")

VERSION = "FreeSWITCH Version 1.10.12-release~64bit ( 64bit)"
# the event names ``event plain`` accepts (a subset of switch_event.c's EVENT_NAMES)
EVENT_NAMES = {
    "CUSTOM", "CLONE", "CHANNEL_CREATE", "CHANNEL_DESTROY", "CHANNEL_STATE", "CHANNEL_CALLSTATE",
    "CHANNEL_ANSWER", "CHANNEL_HANGUP", "CHANNEL_HANGUP_COMPLETE", "CHANNEL_EXECUTE",
    "CHANNEL_EXECUTE_COMPLETE", "CHANNEL_HOLD", "CHANNEL_UNHOLD", "CHANNEL_BRIDGE", "CHANNEL_UNBRIDGE",
    "CHANNEL_PROGRESS", "CHANNEL_PROGRESS_MEDIA", "CHANNEL_OUTGOING", "CHANNEL_PARK", "CHANNEL_UNPARK",
    "CHANNEL_APPLICATION", "CHANNEL_ORIGINATE", "CHANNEL_UUID", "API", "LOG", "INBOUND_CHAN",
    "OUTBOUND_CHAN", "STARTUP", "SHUTDOWN", "PUBLISH", "UNPUBLISH", "TALK", "NOTALK", "SESSION_CRASH",
    "MODULE_LOAD", "MODULE_UNLOAD", "DTMF", "MESSAGE", "PRESENCE_IN", "NOTIFY_IN", "PRESENCE_OUT",
    "PRESENCE_PROBE", "MESSAGE_WAITING", "MESSAGE_QUERY", "ROSTER", "CODEC", "BACKGROUND_JOB",
    "DETECTED_SPEECH", "DETECTED_TONE", "PRIVATE_COMMAND", "HEARTBEAT", "TRAP", "ADD_SCHEDULE",
    "DEL_SCHEDULE", "EXE_SCHEDULE", "RE_SCHEDULE", "RELOADXML", "NOTIFY", "PHONE_FEATURE",
    "PHONE_FEATURE_SUBSCRIBE", "SEND_MESSAGE", "RECV_MESSAGE", "REQUEST_PARAMS", "CHANNEL_DATA",
    "GENERAL", "COMMAND", "SESSION_HEARTBEAT", "CLIENT_DISCONNECTED", "SERVER_DISCONNECTED",
    "SEND_INFO", "RECV_INFO", "RECV_RTCP_MESSAGE", "SEND_RTCP_MESSAGE", "CALL_SECURE", "NAT",
    "RECORD_START", "RECORD_STOP", "PLAYBACK_START", "PLAYBACK_STOP", "CALL_UPDATE", "FAILURE",
    "SOCKET_DATA", "MEDIA_BUG_START", "MEDIA_BUG_STOP", "CONFERENCE_DATA_QUERY", "CONFERENCE_DATA",
    "CALL_SETUP_REQ", "CALL_SETUP_RESULT", "CALL_DETAIL", "DEVICE_STATE", "TEXT", "SHUTDOWN_REQUESTED",
    "ALL",
}
# what ``myevents`` subscribes (mod_event_socket.c)
MYEVENTS = {
    "CHANNEL_ANSWER", "CHANNEL_APPLICATION", "CHANNEL_BRIDGE", "CHANNEL_CREATE", "CHANNEL_DATA",
    "CHANNEL_DESTROY", "CHANNEL_EXECUTE", "CHANNEL_EXECUTE_COMPLETE", "CHANNEL_HANGUP",
    "CHANNEL_HANGUP_COMPLETE", "CHANNEL_ORIGINATE", "CHANNEL_UUID", "CHANNEL_OUTGOING", "CHANNEL_PARK",
    "CHANNEL_PROGRESS", "CHANNEL_PROGRESS_MEDIA", "CHANNEL_STATE", "CHANNEL_UNBRIDGE", "CHANNEL_UNPARK",
    "DETECTED_SPEECH", "DTMF", "NOTALK", "TALK",
}
STATE_NUMBERS = {"CS_NEW": 0, "CS_INIT": 1, "CS_ROUTING": 2, "CS_SOFT_EXECUTE": 3, "CS_EXECUTE": 4,
                 "CS_HANGUP": 10, "CS_REPORTING": 11, "CS_DESTROY": 12}
_TONE = re.compile(r"%\((\d+),(\d+),[\d,]+\)(?:;loops=(\d+))?")


def _status_text(uptime_s: float, sessions: int) -> str:
    d, rem = divmod(int(uptime_s), 86400)
    h, rem = divmod(rem, 3600)
    m, s = divmod(rem, 60)
    ms = int((uptime_s % 1) * 1000)
    return (f"UP 0 years, {d} days, {h} hours, {m} minutes, {s} seconds, {ms} milliseconds, 0 microseconds\n"
            "FreeSWITCH (Version 1.10.12-release  64bit) is ready\n"
            f"{sessions} session(s) since startup\n"
            f"0 session(s) - peak 0, last 5min 0 \n"
            "0 session(s) per Sec out of max 30, peak 0, last 5min 0 \n"
            "1000 session(s) max\nmin idle cpu 0.00/99.47\nCurrent Stack Size/Max 240K/8192K\n")


@dataclass
class Caller:
    """The scripted caller of one outbound-socket call."""

    number: str = "1002"
    destination: str = "9101"
    hangup_after: float | None = None     # seconds after connect when the caller hangs up (BYE)
    digits: str = ""                      # keys pressed during play_and_get_digits ('#' terminates)
    digit_gap: float = 0.4
    agent: str = "answer"                 # bridge: answer | noanswer | busy
    agent_ring: float = 1.0
    agent_talk: float = 2.0
    prompt_seconds: float = 0.5           # playback length for files (tone_streams compute their own)
    variables: dict[str, str] = field(default_factory=dict)   # extra channel variables (madoguchi_route…)


@dataclass
class CallResult:
    uuid: str
    commands: list[str] = field(default_factory=list)     # first line of each command the app sent
    apps: list[tuple[str, str]] = field(default_factory=list)
    hangup_cause: str | None = None
    hung_up_by: str | None = None                         # caller | app | freeswitch
    app_exited: bool = False                              # the app sent ``exit``
    variables: dict[str, str] = field(default_factory=dict)
    sent: bytearray = field(default_factory=bytearray)    # every byte the emulator sent


class LabFreeSWITCH:
    def __init__(self, password: str = "ClueCon", *, hostname: str = "vm", time_scale: float = 1.0,
                 core_uuid: str | None = None):
        self.password = password
        self.hostname = hostname
        self.time_scale = time_scale
        self.core_uuid = core_uuid or P.new_uuid()
        self.seq = 500
        self.started = time.time()
        self.sessions_since_startup = 0
        self.globals = {"domain": "127.0.0.1", "hostname": hostname}
        self.hash: dict[str, str] = {}
        self.stall: set[str] = set()          # command verbs never answered (inbound and outbound)
        self.stall_apps: set[str] = set()     # applications that never complete
        self.silent_jobs = False              # bgapi answered, BACKGROUND_JOB never sent
        self.channels: dict[str, "_Channel"] = {}
        self._inbound: set["_InboundConn"] = set()
        self._server: asyncio.base_events.Server | None = None
        self.port = 0
        self.api_log: list[str] = []

    # ------------------------------------------------------------ event building
    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def base(self, name: str, file: str, func: str, line: int, subclass: str | None = None):
        now = time.time()
        pairs = [("Event-Subclass", subclass)] if subclass else []
        pairs += [("Event-Name", name), ("Core-UUID", self.core_uuid), ("FreeSWITCH-Hostname", self.hostname),
                  ("FreeSWITCH-Switchname", self.hostname), ("FreeSWITCH-IPv4", "192.0.2.2"),
                  ("FreeSWITCH-IPv6", "fd00::2"),
                  ("Event-Date-Local", time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))),
                  ("Event-Date-GMT", formatdate(now, usegmt=True)),
                  ("Event-Date-Timestamp", str(int(now * 1e6))), ("Event-Calling-File", file),
                  ("Event-Calling-Function", func), ("Event-Calling-Line-Number", str(line)),
                  ("Event-Sequence", str(self.next_seq()))]
        return pairs

    def publish(self, pairs: list[tuple[str, str]], body: str | None = None) -> None:
        """Deliver an event to every inbound connection whose subscription and filters match."""
        for c in list(self._inbound):
            c.offer(pairs, body)

    # ------------------------------------------------------------ api
    def api(self, cmd: str, owner: "_Channel | None" = None) -> str:
        self.api_log.append(cmd)
        verb, _, arg = cmd.strip().partition(" ")
        arg = arg.strip()
        if verb == "status":
            return _status_text(time.time() - self.started, self.sessions_since_startup)
        if verb == "version":
            return VERSION + "\n"
        if verb == "uptime":
            return f"{int(time.time() - self.started)}\n"
        if verb == "show" and arg.startswith("channels"):
            n = len([c for c in self.channels.values() if not c.gone])
            if arg.endswith("as json"):
                return json.dumps({"row_count": n}) + "\n"
            return f"\n{n} total.\n"
        if verb == "global_getvar":
            return self.globals.get(arg, "")
        if verb == "eval":
            return re.sub(r"\$\{([^}]+)\}", lambda m: self.globals.get(m.group(1), ""), arg)
        if verb == "reloadxml":
            return "+OK [Success]\n"
        if verb in ("uuid_getvar", "uuid_setvar", "uuid_kill"):
            parts = arg.split(" ", 2)
            ch = self.channels.get(parts[0]) if parts and parts[0] else None
            if ch is None or ch.gone:
                return "-ERR No such channel!\n"
            if verb == "uuid_getvar":
                return ch.vars.get(parts[1], "_undef_") if len(parts) > 1 else "-ERR Usage\n"
            if verb == "uuid_setvar":
                if len(parts) < 2:
                    return "-ERR Usage\n"
                ch.vars[parts[1]] = parts[2] if len(parts) > 2 else ""
                return "+OK\n"
            ch.request_hangup(parts[1] if len(parts) > 1 else "NORMAL_CLEARING", by="app")
            return "+OK\n"
        if verb == "hash":
            op, _, key = arg.partition("/")
            if op == "select":
                return self.hash.get(key, "")
            if op == "insert":
                k, _, v = key.rpartition("/")
                self.hash[k] = v
                return "+OK\n"
        return f"-ERR {verb} Command not found!\n"

    def background_job(self, job_uuid: str, cmd: str, owner: "_Channel | None" = None):
        verb, _, arg = cmd.strip().partition(" ")
        out = self.api(cmd, owner)
        pairs = self.base("BACKGROUND_JOB", "mod_event_socket.c", "api_exec", 1572)
        pairs.append(("Job-UUID", job_uuid))
        if owner is not None:
            pairs.append(("Job-Owner-UUID", owner.uuid))
        pairs.append(("Job-Command", verb))
        if arg:
            pairs.append(("Job-Command-Arg", arg))
        return pairs, out

    # ------------------------------------------------------------ inbound server
    async def start_inbound(self, host: str = "127.0.0.1", port: int = 0) -> "LabFreeSWITCH":
        self._server = await asyncio.start_server(self._inbound_conn, host, port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _inbound_conn(self, reader, writer):
        conn = _InboundConn(self, reader, writer)
        self._inbound.add(conn)
        try:
            await conn.run()
        finally:
            self._inbound.discard(conn)

    def drop_inbound(self) -> None:
        for c in list(self._inbound):
            c.writer.transport.abort()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for c in list(self._inbound):
            c.writer.close()
        for ch in list(self.channels.values()):
            if ch.task is not None:
                ch.task.cancel()
        if self._server is not None:
            await self._server.wait_closed()

    async def __aenter__(self):
        return await self.start_inbound()

    async def __aexit__(self, *exc):
        await self.stop()

    # ------------------------------------------------------------ outbound socket
    async def call(self, host: str, port: int, caller: Caller | None = None, *, linger_max: float = 30.0,
                   timeout: float = 60.0) -> CallResult:
        """One call through ``socket host:port async full``; returns when FreeSWITCH closes the socket."""
        ch = _Channel(self, caller or Caller())
        self.channels[ch.uuid] = ch
        self.sessions_since_startup += 1
        try:
            await asyncio.wait_for(ch.run(host, port, linger_max), timeout)
        finally:
            ch.gone = True
        return ch.result


class _InboundConn:
    def __init__(self, fs: LabFreeSWITCH, reader, writer):
        self.fs, self.reader, self.writer = fs, reader, writer
        self.authed = False
        self.fmt: str | None = None
        self.events: set[str] = set()
        self.custom: set[str] = set()
        self.filters: list[tuple[str, str]] = []
        self.closed = False

    def send(self, data: bytes) -> None:
        if not self.closed and not self.writer.is_closing():
            self.writer.write(data)

    def wants(self, pairs) -> bool:
        if self.fmt is None:
            return False
        d = dict(pairs)
        name = d.get("Event-Name", "")
        if name == "CUSTOM":
            ok = d.get("Event-Subclass", "") in self.custom or "ALL" in self.events
        else:
            ok = name in self.events or "ALL" in self.events
        if ok and self.filters:
            ok = any(d.get(h) == v for h, v in self.filters)
        return ok

    def offer(self, pairs, body=None) -> None:
        if not self.wants(pairs):
            return
        if self.fmt == "json":
            d = dict(pairs)
            if body is not None:
                d["Content-Length"] = str(len(body.encode()))
                d["_body"] = body
            data = json.dumps(d, separators=(",", ":")).encode()
            self.send(P.frame([("Content-Length", len(data)), ("Content-Type", "text/event-json")], data))
        else:
            self.send(P.event_plain(pairs, body))

    async def run(self) -> None:
        self.send(P.frame([("Content-Type", "auth/request")]))
        parser = P.CommandParser()
        try:
            while True:
                data = await self.reader.read(65536)
                if not data:
                    return
                for line, hdrs in parser.feed(data):
                    if not await self.handle(line, hdrs):
                        return
        except (ConnectionError, P.ESLProtocolError):
            return
        finally:
            self.closed = True
            self.writer.close()

    async def handle(self, line: str, hdrs) -> bool:
        verb, _, arg = line.partition(" ")
        if verb in self.fs.stall:
            return True
        if not self.authed:
            if verb == "auth":
                if arg == self.fs.password:
                    self.authed = True
                    self.send(P.reply("+OK accepted"))
                    return True
                self.send(P.reply("-ERR invalid") + P.disconnect_notice())
                await self.writer.drain()
                return False
            self.send(P.reply("-ERR command not found"))
            return True
        return await handle_common(self, self.fs, verb, arg, hdrs, owner=None)


async def handle_common(conn, fs: LabFreeSWITCH, verb: str, arg: str, hdrs, owner) -> bool:
    """Commands both socket kinds accept. Returns False when the connection must close."""
    if verb == "api":
        conn.send(P.api_response(fs.api(arg, owner)))
    elif verb == "bgapi":
        job = dict((k.lower(), v) for k, v in hdrs).get("job-uuid") or P.new_uuid()
        conn.send(P.reply(f"+OK Job-UUID: {job}", ("Job-UUID", job)))
        if not fs.silent_jobs:
            pairs, out = fs.background_job(job, arg, owner)
            conn.offer(pairs, out)
    elif verb == "event":
        fmt, _, names = arg.partition(" ")
        words = names.split()
        plain, custom, in_custom = set(), set(), False
        for w in words:
            if in_custom:
                custom.add(w)
            elif w.upper() == "CUSTOM":
                in_custom = True
            elif w.upper() in EVENT_NAMES:
                plain.add(w.upper())
        if fmt not in ("plain", "json", "xml") or not (plain or custom or in_custom):
            conn.send(P.reply("-ERR no keywords supplied"))
        else:
            conn.fmt = "json" if fmt == "json" else "plain"
            conn.events |= plain
            conn.custom |= custom
            conn.send(P.reply(f"+OK event listener enabled {fmt}"))
    elif verb == "nixevent":
        for w in arg.split():
            conn.events.discard(w.upper())
        conn.send(P.reply("+OK events nixed"))
    elif verb == "noevents":
        conn.events.clear()
        conn.custom.clear()
        conn.send(P.reply("+OK no longer listening for events"))
    elif verb == "filter":
        parts = arg.split(" ", 2)
        if parts[0] == "delete" and len(parts) >= 2:
            h, v = parts[1], parts[2] if len(parts) > 2 else ""
            conn.filters = [f for f in conn.filters if f != (h, v)]
            conn.send(P.reply(f"+OK filter deleted. [{h}][{v}]"))
        elif len(parts) >= 2:
            h, v = parts[0], " ".join(parts[1:])
            conn.filters.append((h, v))
            conn.send(P.reply(f"+OK filter added. [{h}]=[{v}]"))
        else:
            conn.send(P.reply("-ERR invalid syntax"))
    elif verb == "log":
        lvl = arg.strip() or "7"
        conn.send(P.reply(f"+OK log level {lvl} [{lvl}]"))
    elif verb == "nolog":
        conn.send(P.reply("+OK no longer logging"))
    elif verb == "exit":
        uuid = owner.uuid if owner is not None else None
        conn.send(P.reply("+OK bye") + P.disconnect_notice(uuid))
        return False
    else:
        conn.send(P.reply("-ERR command not found"))
    return True


class _Channel:
    """One emulated inbound SIP leg running the ``socket`` app."""

    def __init__(self, fs: LabFreeSWITCH, caller: Caller):
        self.fs, self.caller = fs, caller
        self.uuid = P.new_uuid()
        self.name = f"sofia/internal/{caller.number}@127.0.0.1"
        self.created = int(time.time() * 1e6)
        self.answered = 0
        self.callee: tuple[str, str] | None = None
        self.hangup_time = 0
        self.state = "CS_EXECUTE"
        self.state_number = 4
        self.call_state = "RINGING"
        self.answer_state = "ringing"
        self.hangup_cause: str | None = None
        self.gone = False
        self.vars: dict[str, str] = self._initial_vars()
        self.result = CallResult(self.uuid)
        self.writer = None
        self.myevents = False
        self.events: set[str] = set()
        self.custom: set[str] = set()
        self.fmt = "plain"
        self.linger: int | None = None
        self.apps: asyncio.Queue = asyncio.Queue()
        self.parked = False
        self.task: asyncio.Task | None = None
        self.running_app: tuple[str, str, str] | None = None
        self.last_response = "_none_"
        self.hangup_event = asyncio.Event()
        self.closed = asyncio.Event()
        self.t0 = time.monotonic()
        self.socket_app_uuid = P.new_uuid()

    def _initial_vars(self) -> dict[str, str]:
        c = self.caller
        sdp = ("v=0\r\no=- 53655765 2353687637 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
               "m=audio 16310 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n"
               "a=fmtp:101 0-15\r\na=ptime:20\r\n")
        v = {
            "direction": "inbound", "uuid": self.uuid, "session_id": str(self.fs.sessions_since_startup + 1),
            "sip_from_user": c.number, "sip_from_uri": f"{c.number}@127.0.0.1", "sip_from_host": "127.0.0.1",
            "video_media_flow": "disabled", "text_media_flow": "disabled", "channel_name": self.name,
            "sip_call_id": f"1-{self.uuid[:5]}@127.0.0.1", "sip_local_network_addr": "127.0.0.1",
            "sip_network_ip": "127.0.0.1", "sip_network_port": "5362", "sip_invite_stamp": str(self.created),
            "sip_received_ip": "127.0.0.1", "sip_received_port": "5362", "sip_via_protocol": "udp",
            "sip_from_user_stripped": c.number, "sip_from_tag": "17795SIPpTag001",
            "sofia_profile_name": "internal", "sofia_profile_url": "sip:mod_sofia@127.0.0.1:5260",
            "recovery_profile_name": "internal",
            "sip_full_via": "SIP/2.0/UDP 127.0.0.1:5362;branch=z9hG4bK-17795-1-0",
            "sip_from_display": c.number,
            "sip_full_from": f'"{c.number}" <sip:{c.number}@127.0.0.1>;tag=17795SIPpTag001',
            "sip_full_to": f"<sip:{c.destination}@127.0.0.1:5260>", "sip_req_user": c.destination,
            "sip_req_port": "5260", "sip_req_uri": f"{c.destination}@127.0.0.1:5260", "sip_req_host": "127.0.0.1",
            "sip_to_user": c.destination, "sip_to_port": "5260", "sip_to_uri": f"{c.destination}@127.0.0.1:5260",
            "sip_to_host": "127.0.0.1", "sip_contact_user": c.number, "sip_contact_port": "5362",
            "sip_contact_uri": f"{c.number}@127.0.0.1:5362", "sip_contact_host": "127.0.0.1",
            "sip_user_agent": "SIPp golden UAC", "sip_via_host": "127.0.0.1", "sip_via_port": "5362",
            "max_forwards": "70", "switch_r_sdp": sdp, "ep_codec_string": "CORE_PCM_MODULE.PCMU@8000h@20i@64000b",
            "rtp_use_codec_string": "PCMU,PCMA", "remote_video_media_flow": "inactive",
            "remote_text_media_flow": "inactive", "remote_audio_media_flow": "sendrecv",
            "audio_media_flow": "sendrecv", "remote_media_ip": "127.0.0.1", "remote_media_port": "16310",
            "rtp_audio_recv_pt": "0", "rtp_use_codec_name": "PCMU", "rtp_use_codec_rate": "8000",
            "rtp_use_codec_ptime": "20", "rtp_use_codec_channels": "1",
            "rtp_last_audio_codec_string": "PCMU@8000h@20i@1c", "read_codec": "PCMU",
            "original_read_codec": "PCMU", "read_rate": "8000", "original_read_rate": "8000",
            "write_codec": "PCMU", "write_rate": "8000", "dtmf_type": "rfc2833",
            "endpoint_disposition": "RECEIVED", "DP_MATCH": f"ARRAY::{c.destination}|:{c.destination}",
            "call_uuid": self.uuid,
        }
        v.update(c.variables)
        v.update({"current_application_data": "127.0.0.1:8084 async full", "current_application": "socket",
                  "socket_host": "127.0.0.1"})
        return v

    # -- headers in FreeSWITCH's order
    def _profile(self, prefix: str) -> list[tuple[str, str]]:
        c = self.caller
        p = prefix
        return [(f"{p}-Direction", "inbound"), (f"{p}-Logical-Direction", "inbound"), (f"{p}-Username", c.number),
                (f"{p}-Dialplan", "XML"), (f"{p}-Caller-ID-Name", c.number), (f"{p}-Caller-ID-Number", c.number),
                (f"{p}-Orig-Caller-ID-Name", c.number), (f"{p}-Orig-Caller-ID-Number", c.number),
                *([(f"{p}-Callee-ID-Name", self.callee[0]), (f"{p}-Callee-ID-Number", self.callee[1])]
                  if self.callee else []),
                (f"{p}-Network-Addr", "127.0.0.1"), (f"{p}-ANI", c.number),
                (f"{p}-Destination-Number", c.destination), (f"{p}-Unique-ID", self.uuid),
                (f"{p}-Source", "mod_sofia"), (f"{p}-Context", "default"), (f"{p}-Channel-Name", self.name),
                (f"{p}-Profile-Index", "1"), (f"{p}-Profile-Created-Time", str(self.created)),
                (f"{p}-Channel-Created-Time", str(self.created)),
                (f"{p}-Channel-Answered-Time", str(self.answered)), (f"{p}-Channel-Progress-Time", "0"),
                (f"{p}-Channel-Progress-Media-Time", "0"), (f"{p}-Channel-Hangup-Time", str(self.hangup_time)),
                (f"{p}-Channel-Transfer-Time", "0"), (f"{p}-Channel-Resurrect-Time", "0"),
                (f"{p}-Channel-Bridged-Time", "0"), (f"{p}-Channel-Last-Hold", "0"),
                (f"{p}-Channel-Hold-Accum", "0"), (f"{p}-Screen-Bit", "true"),
                (f"{p}-Privacy-Hide-Name", "false"), (f"{p}-Privacy-Hide-Number", "false")]

    def _chan(self) -> list[tuple[str, str]]:
        out = [("Channel-State", self.state), ("Channel-Call-State", self.call_state),
               ("Channel-State-Number", str(self.state_number)), ("Channel-Name", self.name),
               ("Unique-ID", self.uuid), ("Call-Direction", "inbound"), ("Presence-Call-Direction", "inbound"),
               ("Channel-HIT-Dialplan", "true"), ("Channel-Call-UUID", self.uuid), ("Answer-State", self.answer_state)]
        if self.hangup_cause:
            out.append(("Hangup-Cause", self.hangup_cause))
        out += [("Channel-Read-Codec-Name", "PCMU"), ("Channel-Read-Codec-Rate", "8000"),
                ("Channel-Read-Codec-Bit-Rate", "64000"), ("Channel-Write-Codec-Name", "PCMU"),
                ("Channel-Write-Codec-Rate", "8000"), ("Channel-Write-Codec-Bit-Rate", "64000")]
        return out + self._profile("Caller")

    def _vars(self) -> list[tuple[str, str]]:
        return [("variable_" + k, v) for k, v in self.vars.items()]

    def event(self, name: str, where: tuple[str, str, int], *, variables: bool = True, pre=(), post=()):
        pairs = self.fs.base(name, *where) + list(pre) + self._chan()
        if variables:
            pairs += self._vars()
        return pairs + list(post)

    def connect_reply(self) -> bytes:
        pairs = (self.fs.base("CHANNEL_DATA", "mod_event_socket.c", "parse_command", 2021)
                 + self._profile("Channel") + self._chan() + self._vars())
        hdrs = [(k, P.url_encode(v)) for k, v in pairs]
        hdrs += [("Content-Type", "command/reply"), ("Reply-Text", P.url_encode("+OK\n")),
                 ("Socket-Mode", "async"), ("Control", "full")]
        return P.frame(hdrs)

    # -- delivery
    def send(self, data: bytes) -> None:
        if self.writer is not None and not self.writer.is_closing():
            self.result.sent += data
            self.writer.write(data)

    def offer(self, pairs, body=None) -> None:
        d = dict(pairs)
        name = d.get("Event-Name")
        mine = d.get("Unique-ID") in (None, self.uuid) or name == "BACKGROUND_JOB"
        want = (self.myevents and name in MYEVENTS and d.get("Unique-ID") == self.uuid) or (
            mine and (name in self.events or (name == "CUSTOM" and d.get("Event-Subclass") in self.custom)))
        if want:
            self.send(P.event_plain(pairs, body))

    def emit(self, name: str, where, **kw) -> None:
        pairs = self.event(name, where, **kw)
        self.offer(pairs)
        self.fs.publish(pairs)

    # -- the socket session
    async def run(self, host: str, port: int, linger_max: float) -> None:
        self.emit_inbound_only("CHANNEL_CREATE", ("switch_core_state_machine.c", "switch_core_session_run", 626))
        reader, self.writer = await asyncio.open_connection(host, port)
        parser = P.CommandParser()
        self.task = asyncio.current_task()
        runner = asyncio.get_running_loop().create_task(self._app_runner())
        hangup_timer = None
        if self.caller.hangup_after is not None:
            hangup_timer = asyncio.get_running_loop().call_later(
                self.caller.hangup_after / self.fs.time_scale, self.request_hangup, "NORMAL_CLEARING", "caller")
        try:
            while not self.closed.is_set():
                rd = asyncio.ensure_future(reader.read(65536))
                cl = asyncio.ensure_future(self.closed.wait())
                done, _ = await asyncio.wait({rd, cl}, return_when=asyncio.FIRST_COMPLETED)
                if rd not in done:
                    rd.cancel()
                    break
                cl.cancel()
                data = rd.result()
                if not data:
                    break
                for line, hdrs in parser.feed(data):
                    self.result.commands.append(line)
                    if not await self._handle(line, hdrs):
                        self.closed.set()
                        break
        except (ConnectionError, P.ESLProtocolError):
            pass
        finally:
            if hangup_timer is not None:
                hangup_timer.cancel()
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)
            if not self.gone and self.hangup_cause is None:
                # socket app returned with the channel up: the dialplan would go on; the lab call ends
                self.hangup_cause = "NORMAL_CLEARING"
            self.result.hangup_cause = self.result.hangup_cause or self.hangup_cause
            self.result.variables = dict(self.vars)
            try:
                await self.writer.drain()
            except ConnectionError:
                pass
            self.writer.close()

    def emit_inbound_only(self, name, where) -> None:
        self.fs.publish(self.event(name, where))

    async def _handle(self, line: str, hdrs) -> bool:
        verb, _, arg = line.partition(" ")
        if verb in self.fs.stall:
            return True
        if verb == "connect":
            self.send(self.connect_reply())
        elif verb == "myevents":
            self.myevents = True
            self.send(P.reply("+OK Events Enabled"))
        elif verb == "linger":
            n = arg.strip()
            self.linger = int(n) if n.lstrip("-").isdigit() else -1
            self.send(P.reply(f"+OK will linger {n} seconds" if n else "+OK will linger"))
        elif verb == "nolinger":
            self.linger = None
            self.send(P.reply("+OK will not linger"))
        elif verb == "sendmsg":
            h = {k.lower(): v for k, v in hdrs}
            self.send(P.reply("+OK"))
            if not self.parked:
                self.parked = True
                self.emit("CHANNEL_PARK", ("switch_ivr.c", "switch_ivr_park", 1002))
            if self.hangup_cause is None:
                cmd = h.get("call-command", "")
                if cmd == "execute":
                    await self.apps.put((h.get("execute-app-name", ""), h.get("execute-app-arg", ""),
                                         h.get("event-uuid") or P.new_uuid()))
                elif cmd == "hangup":
                    self.request_hangup(h.get("hangup-cause", "NORMAL_CLEARING"), "app")
        elif verb == "exit":
            self.result.app_exited = True
            self.send(P.reply("+OK bye") + P.disconnect_notice(self.uuid))
            return False
        elif verb == "event":
            fmt, _, names = arg.partition(" ")
            words, in_custom, ok = names.split(), False, False
            for w in words:
                if in_custom:
                    self.custom.add(w)
                    ok = True
                elif w.upper() == "CUSTOM":
                    in_custom = True
                elif w.upper() in EVENT_NAMES:
                    self.events.add(w.upper())
                    ok = True
            self.send(P.reply(f"+OK event listener enabled {fmt}" if ok else "-ERR no keywords supplied"))
        else:
            return await handle_common(self, self.fs, verb, arg, hdrs, owner=self)
        return True

    # -- applications
    def sleep(self, seconds: float):
        return asyncio.sleep(seconds / self.fs.time_scale)

    async def _app_runner(self) -> None:
        while True:
            app, arg, au = await self.apps.get()
            self.result.apps.append((app, arg))
            expanded = re.sub(r"\$\{([^}]+)\}", lambda m: self.vars.get(m.group(1), ""), arg)
            self.running_app = (app, expanded, au)
            self.vars["current_application_data"] = expanded
            self.vars["current_application"] = app
            exec_hdrs = [("Application", app)] + ([("Application-Data", expanded)] if expanded else []) + \
                [("Application-UUID", au)]
            await self.sleep(0.02)
            self.emit("CHANNEL_EXECUTE", ("switch_core_session.c", "switch_core_session_exec", 2944), post=exec_hdrs)
            if app in self.fs.stall_apps:
                await self.hangup_event.wait()
                return
            if app == "hangup":
                self._complete(await self._app(app, expanded))
                self._finish_hangup()
                return
            work = asyncio.ensure_future(self._app(app, expanded))
            hup = asyncio.ensure_future(self.hangup_event.wait())
            done, _ = await asyncio.wait({work, hup}, return_when=asyncio.FIRST_COMPLETED)
            if work not in done:
                work.cancel()
                hup.cancel()
                await asyncio.gather(work, return_exceptions=True)
                return   # _hangup_sequence completes the running app
            hup.cancel()
            response = work.result() or "_none_"
            if self.hangup_cause is not None:
                return
            self._complete(response)

    def _complete(self, response: str) -> None:
        if self.running_app is None:
            return
        app, data, au = self.running_app
        self.running_app = None
        self.last_response = response
        post = [("Application", app)] + ([("Application-Data", data)] if data else []) + \
            [("Application-Response", response), ("Application-UUID", au)]
        self.emit("CHANNEL_EXECUTE_COMPLETE", ("switch_core_session.c", "switch_core_session_exec", 2967), post=post)

    async def _app(self, app: str, arg: str) -> str:
        c = self.caller
        if app == "answer":
            await self.sleep(0.02)
            self._answer()
            return "_none_"
        if app == "playback":
            m = _TONE.search(arg)
            secs = (int(m.group(1)) + int(m.group(2))) / 1000 * int(m.group(3) or 1) if m else c.prompt_seconds
            await self.sleep(secs)
            self.vars.update({"playback_last_offset_pos": str(int(secs * 8000)), "playback_seconds": str(int(secs)),
                              "playback_ms": str(int(secs * 1000)), "playback_samples": str(int(secs * 8000)),
                              "current_application_response": "FILE PLAYED"})
            return "FILE PLAYED"
        if app == "play_and_get_digits":
            a = arg.split()
            var = a[7] if len(a) > 7 else "pagd_input"
            maxd = int(a[1]) if len(a) > 1 and a[1].isdigit() else 128
            term = a[4] if len(a) > 4 else "#"
            got = ""
            await self.sleep(1.0)
            for d in c.digits:
                await self.sleep(c.digit_gap)
                self.emit("DTMF", ("switch_channel.c", "switch_channel_dequeue_dtmf", 537), variables=False,
                          post=[("DTMF-Digit", d), ("DTMF-Duration", "2560"), ("DTMF-Source", "RTP")])
                if d in term:
                    self.vars["read_terminator_used"] = d
                    break
                got += d
                if len(got) >= maxd:
                    break
            self.vars["read_result"] = "success" if got else "timeout"
            self.vars[var] = got
            return "_none_"
        if app == "set":
            k, _, v = arg.partition("=")
            self.vars[k] = v
            return "_none_"
        if app == "bridge":
            return await self._bridge(arg)
        if app == "record_session":
            self.vars["record_file"] = arg
            self.emit("RECORD_START", ("switch_ivr_async.c", "record_callback", 1396),
                      post=[("Record-File-Path", arg)])
            self.recording = arg
            return "_none_"
        if app == "stop_record_session":
            path = getattr(self, "recording", "")
            self.emit("RECORD_STOP", ("switch_ivr_async.c", "record_callback", 1458),
                      post=[("Record-File-Path", path), ("Record-Completion-Cause", "success-maxtime")])
            return "_none_"
        if app == "hangup":
            self._start_hangup(arg or "NORMAL_CLEARING", "app")
            return "_none_"
        await self.sleep(0.01)
        return "_none_"

    async def _bridge(self, arg: str) -> str:
        c = self.caller
        leg = P.new_uuid()
        m = re.search(r"leg_timeout=(\d+)", arg) or re.search(r"call_timeout=(\d+)", arg)
        ring_limit = float(m.group(1)) if m else float(self.vars.get("call_timeout", 60) or 60)
        self.vars["originated_legs"] = f"{leg};Outbound Call;agent"
        if c.agent == "busy":
            await self.sleep(0.02)
            self.vars.update({"originate_disposition": "USER_BUSY", "DIALSTATUS": "USER_BUSY",
                              "originate_failed_cause": "USER_BUSY"})
            self._start_hangup("USER_BUSY", "freeswitch")
            return "_none_"
        if c.agent == "noanswer" or c.agent_ring >= ring_limit:
            self.callee = ("Outbound Call", "agent")     # set by the 180 Ringing, as recorded
            await self.sleep(min(ring_limit, 3600))
            self.vars.update({"last_bridge_hangup_cause": "NO_ANSWER", "originate_disposition": "NO_ANSWER",
                              "DIALSTATUS": "NOANSWER", "originate_causes": f"{leg};NO_ANSWER",
                              "originate_failed_cause": "NO_ANSWER"})
            return "_none_"
        await self.sleep(c.agent_ring)
        other = [("Other-Type", "originatee"), ("Other-Leg-Direction", "outbound"),
                 ("Other-Leg-Unique-ID", leg), ("Other-Leg-Channel-Name", arg.split("}")[-1])]
        self.vars.update({"originate_disposition": "SUCCESS", "DIALSTATUS": "SUCCESS",
                          "originate_causes": f"{leg};NONE", "last_bridge_to": leg,
                          "bridge_channel": arg.split("}")[-1], "bridge_uuid": leg, "signal_bond": leg})
        self.callee = ("Outbound Call", "agent")
        ab = [("Bridge-A-Unique-ID", self.uuid), ("Bridge-B-Unique-ID", leg)]
        self.emit("CHANNEL_BRIDGE", ("switch_ivr_bridge.c", "switch_ivr_multi_threaded_bridge", 1750),
                  pre=ab, post=other)
        await self.sleep(c.agent_talk)
        self.vars.update({"last_bridge_hangup_cause": "NORMAL_CLEARING", "bridge_hangup_cause": "NORMAL_CLEARING"})
        self.emit("CHANNEL_UNBRIDGE", ("switch_ivr_bridge.c", "switch_ivr_multi_threaded_bridge", 1880),
                  pre=ab, post=other)
        return "_none_"

    def _answer(self) -> None:
        if self.answered:
            return
        self.answered = int(time.time() * 1e6)
        self.call_state, self.answer_state = "ACTIVE", "answered"
        self.vars["endpoint_disposition"] = "ANSWER"
        self.emit("CHANNEL_ANSWER", ("switch_channel.c", "switch_channel_perform_mark_answered", 3991))

    # -- hangup, in the recorded order
    def request_hangup(self, cause: str, by: str) -> None:
        if self.hangup_cause is not None or self.closed.is_set():
            return
        self._start_hangup(cause, by)
        if self.running_app is not None and self.running_app[0] != "hangup":
            app = self.running_app[0]
            self._complete("PLAYBACK ERROR" if app == "playback" else "_none_")
        if not (self.running_app and self.running_app[0] == "hangup"):
            self._finish_hangup()

    def _start_hangup(self, cause: str, by: str) -> None:
        if self.hangup_cause is not None:
            return
        self.hangup_cause = cause
        self.result.hung_up_by = by
        self.result.hangup_cause = cause
        self.state_number = 10
        self.answer_state = "hangup"
        self.vars.update({"hangup_cause": cause, "hangup_cause_q850": "16" if cause == "NORMAL_CLEARING" else "17"})
        self.emit("CHANNEL_HANGUP", ("switch_channel.c", "switch_channel_perform_hangup", 3445))
        self.hangup_event.set()
        if by != "app" and self.running_app is not None:
            app = self.running_app[0]
            self._complete("PLAYBACK ERROR" if app == "playback" else "_none_")
            self._finish_hangup()

    def _finish_hangup(self) -> None:
        if getattr(self, "_finished", False):
            return
        self._finished = True
        self.emit("CHANNEL_UNPARK", ("switch_ivr.c", "switch_ivr_park", 1432))
        self.emit("CHANNEL_EXECUTE_COMPLETE", ("switch_core_session.c", "switch_core_session_exec", 2967),
                  post=[("Application", "socket"), ("Application-Data", "127.0.0.1:8084 async full"),
                        ("Application-Response", self.last_response), ("Application-UUID", self.socket_app_uuid)])
        self.hangup_time = int(time.time() * 1e6)
        self.state, self.call_state = "CS_HANGUP", self.call_state
        self.emit("CHANNEL_STATE", ("switch_channel.c", "switch_channel_perform_set_running_state", 2408),
                  variables=False)
        self.state, self.state_number, self.call_state = "CS_REPORTING", 11, "HANGUP"
        self.emit("CHANNEL_STATE", ("switch_channel.c", "switch_channel_perform_set_running_state", 2408),
                  variables=False)
        self.emit("CHANNEL_HANGUP_COMPLETE", ("switch_core_state_machine.c", "switch_core_session_reporting_state", 943),
                  pre=[("Hangup-Cause", self.hangup_cause)])
        self.emit_inbound_only("CHANNEL_DESTROY", ("switch_core_session.c", "switch_core_session_perform_destroy", 1753))
        if self.linger is not None:
            self.send(P.disconnect_notice(self.uuid, linger=self.linger, channel_name=self.name))
            if self.linger >= 0:
                asyncio.get_running_loop().call_later(self.linger / self.fs.time_scale, self._linger_over)
        else:
            self.send(P.disconnect_notice(self.uuid))
            self.closed.set()

    def _linger_over(self) -> None:
        if not self.closed.is_set():
            self.send(P.disconnect_notice(self.uuid))
            self.closed.set()
