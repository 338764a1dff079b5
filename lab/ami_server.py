"""AMI server of the lab PBX (Asterisk is the AMI server).

Texts, header order, ActionID position and CRLF follow ami/*.jsonl of the golden set.
Each client gets a bounded outgoing queue drained by its own writer task, so a slow
client never blocks the PBX; a client whose queue overflows is dropped.
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from cti.ami_protocol import AMIProtocolError, Message, Parser, encode

if TYPE_CHECKING:
    from .pbx import LabPBX

BANNER = b"Asterisk Call Manager/11.0.0\r\n"
_CLOSE = object()


def _tv(t: float) -> str:
    d = datetime.fromtimestamp(t, timezone.utc)
    return d.strftime("%Y-%m-%dT%H:%M:%S.") + f"{int(d.microsecond / 1000):03d}+0000"


def _hms(secs: float) -> str:
    s = int(secs)
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


class AMIServer:
    def __init__(self, pbx: "LabPBX", host: str, port: int):
        self.pbx, self.host, self.port = pbx, host, port
        self.server: asyncio.AbstractServer | None = None
        self.sessions: set[AMISession] = set()

    async def start(self):
        self.server = await asyncio.start_server(self._accept, self.host, self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self):
        if self.server:
            self.server.close()
        for s in list(self.sessions):
            s.drop()
        if self.server:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 1.0)

    async def _accept(self, reader, writer):
        s = AMISession(self, reader, writer)
        self.sessions.add(s)
        try:
            await s.run()
        finally:
            self.sessions.discard(s)


class AMISession:
    def __init__(self, server: AMIServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.server, self.pbx = server, server.pbx
        self.reader, self.writer = reader, writer
        self.q: asyncio.Queue = asyncio.Queue(maxsize=self.pbx.ami_queue_limit)
        self.authenticated = False
        self.events_on = False
        self.challenge: str | None = None
        self.username = ""
        self.dropped = False
        self.login_at = time.time()

    # --- output --------------------------------------------------------
    def send(self, pairs):
        if self.dropped:
            return
        try:
            self.q.put_nowait(encode(pairs))
        except asyncio.QueueFull:
            self.drop()  # a client this far behind would only see stale state

    def send_raw(self, item):
        if not self.dropped:
            try:
                self.q.put_nowait(item)
            except asyncio.QueueFull:
                self.drop()

    def on_event(self, msg):
        if self.events_on:
            self.send(msg)

    def drop(self):
        if not self.dropped:
            self.dropped = True
            self.pbx.bus.unsubscribe(self.on_event)
            with contextlib.suppress(Exception):
                self.writer.close()

    async def _writer(self):
        while True:
            item = await self.q.get()
            if item is _CLOSE:
                with contextlib.suppress(Exception):
                    await self.writer.drain()
                    self.writer.close()
                self.dropped = True
                return
            self.writer.write(item)
            await self.writer.drain()

    def respond(self, m: Message, status: str, *pairs):
        out = [("Response", status)]
        aid = m.get("ActionID")
        if aid is not None:
            out.append(("ActionID", aid))
        out += list(pairs)
        self.send(out)

    def error(self, m: Message, text: str):
        self.respond(m, "Error", ("Message", text))

    # --- input ---------------------------------------------------------
    async def run(self):
        self.writer.write(BANNER)
        wtask = asyncio.ensure_future(self._writer())
        parser = Parser()
        try:
            while not self.dropped:
                data = await self.reader.read(65536)
                if not data:
                    break
                try:
                    msgs = parser.feed(data)
                except AMIProtocolError:
                    break
                for m in msgs:
                    await self.handle(m)
                    if self.dropped:
                        break
        except (ConnectionError, OSError):
            pass
        finally:
            self.pbx.bus.unsubscribe(self.on_event)
            if not self.dropped:
                self.send_raw(_CLOSE)
            with contextlib.suppress(asyncio.TimeoutError, Exception):
                await asyncio.wait_for(wtask, 2.0)
            wtask.cancel()
            with contextlib.suppress(Exception):
                self.writer.close()

    async def handle(self, m: Message):
        action = (m.get("Action") or "").strip()
        low = action.lower()
        if not self.authenticated and low not in ("login", "challenge", "logoff"):
            return self.error(m, "Permission denied")
        fn = getattr(self, "a_" + low, None) if low else None
        if fn is None:
            if not action:
                return self.error(m, "Missing action in request")
            return self.error(m, f"Invalid/unknown command: {action}. Use Action: ListCommands to show available commands.")
        await fn(m)

    # --- session actions ---------------------------------------------------
    async def a_challenge(self, m):
        if (m.get("AuthType") or "").lower() != "md5":
            return self.error(m, "Must specify AuthType")
        self.challenge = str(random.randint(100000000, 999999999))
        self.respond(m, "Success", ("Challenge", self.challenge))

    async def a_login(self, m):
        user = m.get("Username") or ""
        secret = self.pbx.ami_users.get(user)
        ok = False
        if secret is not None:
            if (m.get("AuthType") or "").lower() == "md5" and self.challenge:
                ok = (m.get("Key") or "").lower() == hashlib.md5((self.challenge + secret).encode()).hexdigest()
            else:
                ok = m.get("Secret") == secret
        if not ok:
            await self.pbx.clock.sleep(self.pbx.ami_auth_delay)  # Asterisk's anti brute-force pause
            self.error(m, "Authentication failed")
            self.send_raw(_CLOSE)
            return
        self.authenticated = True
        self.username = user
        self.login_at = time.time()
        self.respond(m, "Success", ("Message", "Authentication accepted"))
        ev = (m.get("Events") or "on").strip().lower()
        self.events_on = ev not in ("off", "no", "false", "0", "")
        if self.events_on:
            up = str(int(time.time() - self.pbx.started))
            self.send([("Event", "FullyBooted"), ("Privilege", "system,all"), ("Uptime", up),
                       ("LastReload", up), ("Status", "Fully Booted")])
            sock = self.writer.get_extra_info("sockname") or ("127.0.0.1", 0)
            peer = self.writer.get_extra_info("peername") or ("127.0.0.1", 0)
            tv = _tv(self.login_at)
            self.send([("Event", "SuccessfulAuth"), ("Privilege", "security,all"), ("EventTV", tv),
                       ("Severity", "Informational"), ("Service", "AMI"), ("EventVersion", "1"),
                       ("AccountID", user), ("SessionID", hex(id(self))),
                       ("LocalAddress", f"IPV4/TCP/{sock[0]}/{sock[1]}"),
                       ("RemoteAddress", f"IPV4/TCP/{peer[0]}/{peer[1]}"), ("UsingPassword", "0"),
                       ("SessionTV", tv)])
        self.pbx.bus.subscribe(self.on_event)

    async def a_logoff(self, m):
        self.respond(m, "Goodbye", ("Message", "Thanks for all the fish."))
        self.send_raw(_CLOSE)
        self.pbx.bus.unsubscribe(self.on_event)
        self.dropped = True  # stop reading; the writer flushes and closes

    async def a_ping(self, m):
        t = time.time()
        self.respond(m, "Success", ("Ping", "Pong"), ("Timestamp", f"{int(t)}.{int(t % 1 * 1e6):06d}"))

    async def a_events(self, m):
        mask = (m.get("EventMask") or "").strip().lower()
        self.events_on = mask not in ("off", "no", "false", "0", "")
        self.respond(m, "Success", ("Events", "On" if self.events_on else "Off"))

    async def a_command(self, m):
        cmd = " ".join((m.get("Command") or "").split())
        reg = self.pbx.reg
        if cmd == "core show version":
            when = datetime.fromtimestamp(self.pbx.started, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
            out = [f"Asterisk 22.10.1 built by root @ vm on a x86_64 running Linux on {when}"]
        elif cmd == "core show channels count":
            n = len(reg.channels)
            calls = len([c for c in reg.channels.values() if c.name.startswith("PJSIP/caller-")])
            out = [f"{n} active channel{'s' if n != 1 else ''}", f"{calls} active call{'s' if calls != 1 else ''}",
                   f"{reg.calls_processed} call{'s' if reg.calls_processed != 1 else ''} processed"]
        elif cmd == "core show uptime seconds":
            up = int(time.time() - self.pbx.started)
            out = [f"System uptime: {up}", f"Last reload: {up}"]
        else:
            out = [f"No such command '{cmd}' (type 'core show help {cmd}' for other possible commands)"]
        self.respond(m, "Success", ("Message", "Command output follows"), *[("Output", o) for o in out])

    async def a_coresettings(self, m):
        self.respond(m, "Success", ("AMIversion", "11.0.0"), ("AsteriskVersion", "22.10.1"), ("SystemName", ""),
                     ("CoreMaxCalls", "0"), ("CoreMaxLoadAvg", "0.000000"), ("CoreRunUser", ""),
                     ("CoreRunGroup", ""), ("CoreMaxFilehandles", "0"), ("CoreRealTimeEnabled", "No"),
                     ("CoreCDRenabled", "Yes"), ("CoreHTTPenabled", "No"), ("SoundsSearchCustomDir", "No"))

    async def a_listcommands(self, m):
        names = sorted(a[2:] for a in dir(self) if a.startswith("a_"))
        self.respond(m, "Success", *[(n, n) for n in names])

    # --- variables --------------------------------------------------------
    def _chan(self, m):
        name = m.get("Channel")
        return (None, False) if not name else (self.pbx.reg.get(name), True)

    async def a_setvar(self, m):
        var = m.get("Variable")
        ch, given = self._chan(m)
        if given and ch is None:
            return self.error(m, "No such channel")
        if not var:
            return self.error(m, "No variable specified")
        val = m.get("Value") or ""
        if ch:
            ch.set_var(var, val)
        else:
            self.pbx.reg.globals[var] = val
        self.respond(m, "Success", ("Message", "Variable Set"))

    async def a_getvar(self, m):
        var = m.get("Variable")
        if not var:
            return self.error(m, "No variable specified")
        ch, given = self._chan(m)
        if given and ch is None:
            return self.error(m, "No such channel")
        val = ch.get_var(var) if ch else self.pbx.reg.globals.get(var)
        self.respond(m, "Success", ("Variable", var), ("Value", val or ""))

    # --- channels ---------------------------------------------------------
    async def a_hangup(self, m):
        ch, given = self._chan(m)
        if not given:
            return self.error(m, "No channel specified")
        if ch is None:
            return self.error(m, "No such channel")
        cause = m.get("Cause")
        cause = int(cause) if cause and cause.isdigit() else 16
        ch.hangupcause = cause if ch.tech != "Local" else 0  # golden: PJSIP leg 16, Local legs 0
        ch.request_hangup(cause, soft=True)
        self.respond(m, "Success", ("Message", "Channel Hungup"))

    async def a_redirect(self, m):
        ch, given = self._chan(m)
        if not given:
            return self.error(m, "Channel not specified")
        if ch is None:
            return self.error(m, f"Channel does not exist: {m.get('Channel')}")
        ch.context = m.get("Context") or ch.context
        ch.newexten("Redirect", "", exten=m.get("Exten") or ch.exten, priority=int(m.get("Priority") or 1))
        ch.redirect_to = (ch.context, ch.exten, ch.priority)
        self.respond(m, "Success", ("Message", "Redirect successful"))

    def _list_start(self, m, text):
        self.respond(m, "Success", ("EventList", "start"), ("Message", text))

    def _aid(self, m):
        aid = m.get("ActionID")
        return [("ActionID", aid)] if aid is not None else []

    async def a_coreshowchannels(self, m):
        self._list_start(m, "Channels will follow")
        chans = list(self.pbx.reg.channels.values())
        for ch in chans:
            self.send([("Event", "CoreShowChannel")] + self._aid(m) + ch.snapshot() + [
                ("Application", ch.app), ("ApplicationData", ch.appdata),
                ("Duration", _hms(time.time() - ch.created)), ("BridgeId", ch.bridge.id if ch.bridge else "")])
        self.send([("Event", "CoreShowChannelsComplete")] + self._aid(m) + [
            ("EventList", "Complete"), ("ListItems", str(len(chans)))])

    async def a_status(self, m):
        ch, given = self._chan(m)
        if given and ch is None:
            return self.error(m, "No such channel")
        self._list_start(m, "Channel status will follow")
        chans = [ch] if ch else list(self.pbx.reg.channels.values())
        for c in chans:
            fmt = "slin" if c.tech == "Local" else "ulaw"
            self.send([("Event", "Status"), ("Privilege", "Call")] + c.snapshot() + [
                ("Type", c.tech), ("DNID", c.dnid), ("EffectiveConnectedLineNum", c.cl_num),
                ("EffectiveConnectedLineName", c.cl_name), ("TimeToHangup", "0"),
                ("BridgeID", c.bridge.id if c.bridge else ""), ("Application", c.app), ("Data", c.appdata),
                ("Nativeformats", f"({fmt})"), ("Readformat", fmt), ("Readtrans", ""), ("Writeformat", fmt),
                ("Writetrans", ""), ("Callgroup", "0"), ("Pickupgroup", "0"),
                ("Seconds", str(int(time.time() - c.created)))] + self._aid(m))
        n = str(len(chans))
        self.send([("Event", "StatusComplete")] + self._aid(m) + [
            ("EventList", "Complete"), ("ListItems", n), ("Items", n)])

    async def a_originate(self, m):
        chan = m.get("Channel")
        if not chan:
            return self.error(m, "Channel not specified")
        if not m.get("Exten") and not m.get("Application"):
            return self.error(m, "Exten not specified")
        tm = m.get("Timeout")
        variables = {}
        for v in m.get_all("Variable"):
            for part in v.split(","):
                k, _, val = part.partition("=")
                if k:
                    variables[k] = val
        is_async = (m.get("Async") or "").lower() in ("true", "yes", "1", "on")
        kw = dict(channel=chan, context=m.get("Context"), exten=m.get("Exten"), priority=m.get("Priority"),
                  application=m.get("Application"), data=m.get("Data"), callerid=m.get("CallerID"),
                  timeout_ms=int(tm) if tm and tm.isdigit() else None, variables=variables,
                  action_id=m.get("ActionID"))
        if is_async:
            self.respond(m, "Success", ("Message", "Originate successfully queued"))
            self.pbx._spawn(self.pbx.originate(**kw))
        else:
            # synchronous: no OriginateResponse event, the response waits for the outcome
            got = asyncio.get_running_loop().create_future()

            def catch(msg):
                if msg[0][1] == "OriginateResponse" and not got.done() and (
                        dict(msg).get("ActionID") == kw["action_id"]):
                    got.set_result(dict(msg).get("Response") == "Success")
            kw["action_id"] = kw["action_id"] or f"sync-{id(got)}"
            self.pbx.bus.subscribe(catch)
            try:
                self.pbx._spawn(self.pbx.originate(**kw, ))
                ok = await got
            finally:
                self.pbx.bus.unsubscribe(catch)
            if ok:
                self.respond(m, "Success", ("Message", "Originate successfully queued"))
            else:
                self.error(m, "Originate failed")

    # --- queues -------------------------------------------------------------
    def _member_status(self, iface):
        agent = self.pbx.agents.get(iface)
        if agent is None:
            return "1", "0"
        if agent.behaviour == "unreachable":
            return "5", "0"
        busy = self.pbx.agent_busy(agent)
        return ("2" if busy else "1"), ("1" if busy else "0")

    async def a_queuestatus(self, m):
        want = m.get("Queue")
        self._list_start(m, "Queue status will follow")
        n = 0
        for name, q in self.pbx.queues.items():
            if want and want != name:
                continue
            self.send([("Event", "QueueParams"), ("Queue", name), ("Max", "0"), ("Strategy", q["strategy"]),
                       ("Calls", "0"), ("Holdtime", "0"), ("TalkTime", "0"), ("Completed", "0"),
                       ("Abandoned", "0"), ("ServiceLevel", "0"), ("ServicelevelPerf", "0.0"),
                       ("ServicelevelPerf2", "0.0"), ("Weight", "0")] + self._aid(m))
            n += 1
            for mem in q["members"]:
                st, incall = self._member_status(mem["interface"])
                self.send([("Event", "QueueMember"), ("Queue", name), ("Name", mem["name"]),
                           ("Location", mem["interface"]), ("StateInterface", mem["interface"]),
                           ("Membership", mem["membership"]), ("Penalty", str(mem["penalty"])),
                           ("CallsTaken", "0"), ("LastCall", "0"), ("LastPause", str(mem["lastpause"])),
                           ("LoginTime", str(mem["login"])), ("InCall", incall), ("Status", st),
                           ("Paused", "1" if mem["paused"] else "0"), ("PausedReason", mem["reason"]),
                           ("Wrapuptime", "0")] + self._aid(m))
                n += 1
        self.send([("Event", "QueueStatusComplete")] + self._aid(m) + [
            ("EventList", "Complete"), ("ListItems", str(n))])

    async def a_queuesummary(self, m):
        want = m.get("Queue")
        self._list_start(m, "Queue summary will follow")
        n = 0
        for name, q in self.pbx.queues.items():
            if want and want != name:
                continue
            logged = len(q["members"])
            avail = sum(1 for mem in q["members"] if not mem["paused"] and self._member_status(mem["interface"])[0] == "1")
            self.send([("Event", "QueueSummary"), ("Queue", name), ("LoggedIn", str(logged)),
                       ("Available", str(avail)), ("Callers", "0"), ("HoldTime", "0"), ("TalkTime", "0"),
                       ("LongestHoldTime", "0")] + self._aid(m))
            n += 1
        self.send([("Event", "QueueSummaryComplete")] + self._aid(m) + [
            ("EventList", "Complete"), ("ListItems", str(n))])

    def _queue_member(self, m):
        q = self.pbx.queues.get(m.get("Queue") or "")
        iface = m.get("Interface") or ""
        mem = next((x for x in q["members"] if x["interface"] == iface), None) if q else None
        return q, iface, mem

    async def a_queueadd(self, m):
        q, iface, mem = self._queue_member(m)
        if not m.get("Queue") or not iface:
            return self.error(m, "'Queue' and 'Interface' not set.")
        if q is None:
            return self.error(m, "Unable to add interface to queue: No such queue")
        if mem is not None:
            return self.error(m, "Unable to add interface: Already there")
        paused = (m.get("Paused") or "").lower() in ("true", "yes", "1")
        now = int(time.time())
        q["members"].append({"interface": iface, "name": m.get("MemberName") or iface, "membership": "dynamic",
                             "penalty": int(m.get("Penalty") or 0), "paused": paused, "reason": "",
                             "lastpause": 0, "login": now})
        self.respond(m, "Success", ("Message", "Added interface to queue"))

    async def a_queueremove(self, m):
        q, iface, mem = self._queue_member(m)
        if not m.get("Queue") or not iface:
            return self.error(m, "Need 'Queue' and 'Interface' parameters.")
        if q is None:
            return self.error(m, "Unable to remove interface from queue: No such queue")
        if mem is None:
            return self.error(m, "Unable to remove interface: Not there")
        q["members"].remove(mem)
        self.respond(m, "Success", ("Message", "Removed interface from queue"))

    async def a_queuepause(self, m):
        iface = m.get("Interface")
        if not iface:
            return self.error(m, "Need 'Interface' and 'Paused' parameters.")
        paused = (m.get("Paused") or "").lower() in ("true", "yes", "1")
        found = False
        for name, q in self.pbx.queues.items():
            if m.get("Queue") and m.get("Queue") != name:
                continue
            for mem in q["members"]:
                if mem["interface"] == iface:
                    found = True
                    mem["paused"], mem["reason"] = paused, (m.get("Reason") or "") if paused else ""
                    if paused:
                        mem["lastpause"] = int(time.time())
        if not found:
            return self.error(m, "Interface not found")
        self.respond(m, "Success", ("Message", f"Interface {'paused' if paused else 'unpaused'} successfully"))

    # --- astdb ------------------------------------------------------------
    async def a_dbput(self, m):
        fam, key = m.get("Family"), m.get("Key")
        if not fam:
            return self.error(m, "No family specified")
        if not key:
            return self.error(m, "No key specified")
        self.pbx.reg.astdb[(fam, key)] = m.get("Val") or ""
        self.respond(m, "Success", ("Message", "Updated database successfully"))

    async def a_dbget(self, m):
        fam, key = m.get("Family"), m.get("Key")
        if not fam:
            return self.error(m, "No family specified.")
        if not key:
            return self.error(m, "No key specified.")
        val = self.pbx.reg.astdb.get((fam, key))
        if val is None:
            return self.error(m, "Database entry not found")
        self._list_start(m, "Result will follow")
        self.send([("Event", "DBGetResponse"), ("Family", fam), ("Key", key), ("Val", val)] + self._aid(m))
        self.send([("Event", "DBGetComplete")] + self._aid(m) + [("EventList", "Complete"), ("ListItems", "1")])

    async def a_dbdel(self, m):
        fam, key = m.get("Family"), m.get("Key")
        if not fam:
            return self.error(m, "No family specified.")
        if not key:
            return self.error(m, "No key specified.")
        if self.pbx.reg.astdb.pop((fam, key), None) is None:
            return self.error(m, "Database entry not found")
        self.respond(m, "Success", ("Message", "Key deleted successfully"))

    async def a_dbdeltree(self, m):
        fam = m.get("Family")
        if not fam:
            return self.error(m, "No family specified.")
        keys = [k for k in self.pbx.reg.astdb if k[0] == fam and (not m.get("Key") or k[1].startswith(m.get("Key")))]
        if not keys:
            return self.error(m, "Database entry not found")
        for k in keys:
            del self.pbx.reg.astdb[k]
        self.respond(m, "Success", ("Message", "Key tree deleted successfully"))
