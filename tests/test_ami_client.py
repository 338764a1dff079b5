"""cti.ami.AMIClient against replayed golden Asterisk 22 AMI transcripts and against broken peers."""
from __future__ import annotations

import asyncio
import faulthandler
import hashlib
import logging
import time

import pytest

import golden
from ami_replay import ReplayServer, app, eof, exchange, exchanges, golden_messages, pbx, skip
from cti.ami import (AMIAuthError, AMIClient, AMIDisconnected, AMIError, AMIOriginateFailed, AMIProtocolError,
                     AMITimeout)
from cti.ami_protocol import Message, Parser

BANNER = pbx("Asterisk Call Manager/11.0.0\r\n")
ACTIONS = golden.load("ami/ami_actions.jsonl")            # Events: off session
ORIGINATE = golden.load("ami/ami_actions_originate.jsonl")  # Events: on session
LIFECYCLE = "ami/ami_call_lifecycle.jsonl"


@pytest.fixture(autouse=True)
def no_hang():
    """A hung test kills the run with a traceback instead of stalling CI (there is no pytest-timeout)."""
    faulthandler.dump_traceback_later(20, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


def client_for(server: ReplayServer, **kw) -> AMIClient:
    # Golden sessions have no CoreShowChannels after Login, so the first-connect resync is off
    # unless a test is about it; keepalive off so no unrecorded Ping disturbs the replay.
    opts = dict(username="ceo", secret="ceo", resync="reconnect", keepalive=None,
                action_timeout=2.0, connect_timeout=2.0, backoff=(0.02, 0.1))
    opts.update(kw)
    return AMIClient("127.0.0.1", server.port, **opts)


def without_id(msg: Message) -> list[tuple[str, str]]:
    return [(k, v) for k, v in msg.pairs if k != "ActionID"]


async def next_event(sub, name: str, timeout: float = 5.0) -> Message:
    async with asyncio.timeout(timeout):
        async for ev in sub:
            if ev.name == name:
                return ev
    raise AssertionError(f"subscription ended without {name}")


async def until(pred, timeout: float = 5.0):
    async with asyncio.timeout(timeout):
        while not pred():
            await asyncio.sleep(0.01)


LOGIN_OFF = exchanges(ACTIONS)[0] + exchange(ACTIONS, "Login")      # banner + Login (Events: off) -> Success
LOGIN_ON = exchanges(ORIGINATE)[0] + exchange(ORIGINATE, "Login")   # banner + Login -> Success, FullyBooted, ...
PING_Q = app("Action: Ping\r\nActionID: p-1\r\n\r\n")
PING_A = pbx("Response: Success\r\nActionID: p-1\r\nPing: Pong\r\nTimestamp: 1795311858.139418\r\n\r\n")
PING2_Q = app("Action: Ping\r\nActionID: p-2\r\n\r\n")
PING2_A = pbx("Response: Success\r\nActionID: p-2\r\nPing: Pong\r\nTimestamp: 1795311858.139999\r\n\r\n")


# ------------------------------------------------------------------ framing
@pytest.mark.parametrize("rel", ["ami/ami_actions_originate.jsonl", LIFECYCLE])
def test_parser_one_byte_at_a_time_equals_whole(rel):
    data = golden.stream(golden.load(rel), from_pbx=True)
    whole = Parser(expect_banner=True).feed(data)
    p, trickled = Parser(expect_banner=True), []
    for i in range(len(data)):
        trickled += p.feed(data[i:i + 1])
    assert p.banner == "Asterisk Call Manager/11.0.0"
    assert [m.pairs for m in trickled] == [m.pairs for m in whole] and len(whole) > 100


# ------------------------------------------------------------------ login
async def test_raw_action_before_login_is_permission_denied_and_ids_are_rewritten():
    """The replay itself: ActionIDs follow the client's, and an id is inserted where Asterisk would echo it."""
    async with ReplayServer("ami/ami_login_and_ping.jsonl") as srv:
        r, w = await asyncio.open_connection("127.0.0.1", srv.port)
        p = Parser(expect_banner=True)

        async def ask(text: str) -> list[Message]:
            w.write(text.encode())
            got = []
            async with asyncio.timeout(3):
                while not any(m.kind == "response" for m in got):
                    got += p.feed(await r.read(4096))
            return got

        denied = (await ask("Action: Ping\r\nActionID: raw-1\r\n\r\n"))[0]
        assert p.banner == "Asterisk Call Manager/11.0.0"
        assert denied.pairs == [("Response", "Error"), ("ActionID", "raw-1"), ("Message", "Permission denied")]
        ok = await ask("Action: Login\r\nActionID: raw-2\r\nUsername: ceo\r\nSecret: ceo\r\n\r\n")
        assert ok[0]["ActionID"] == "raw-2" and ok[0]["Message"] == "Authentication accepted"
        await ask("Action: Ping\r\nActionID: raw-3\r\n\r\n")
        # recorded without ActionID: the replay inserts ours as the 2nd line
        pong = [m for m in await ask("Action: Ping\r\nActionID: raw-4\r\n\r\n") if m.kind == "response"][0]
        assert pong.pairs[:3] == [("Response", "Success"), ("ActionID", "raw-4"), ("Ping", "Pong")]
        w.close()
    assert srv.errors == []


async def test_login_and_ping_events_on(caplog):
    caplog.set_level(logging.DEBUG)
    secret = "S3cr3t-do-not-log"
    async with ReplayServer(skip(golden.load("ami/ami_login_and_ping.jsonl"), 1)) as srv:
        client = client_for(srv, secret=secret)
        events = client.subscribe("*")
        async with client:
            assert client.connected
            p1 = await client.ping()
            p2 = await client.action("Ping")
            assert (p1["Ping"], p1["Timestamp"]) == ("Pong", "1795311856.132028")
            assert p2["Timestamp"] == "1795311856.132511"
        assert client.state == "closed" and not client.connected
        await client.close()  # idempotent
        names = [ev.name async for ev in events]
    assert names == ["FullyBooted", "SuccessfulAuth"]
    sent = srv.received
    assert [m["Action"] for m in sent] == ["Login", "Ping", "Ping", "Logoff"]
    ids = [m["ActionID"] for m in sent]
    assert len(set(ids)) == 4 and all(i.startswith("madoguchi-") for i in ids)
    assert sent[0].get("Events") == "on" and sent[0]["Secret"] == secret
    assert srv.errors == []
    leaks = [r for r in caplog.records if secret in r.getMessage()]
    assert leaks == [] and secret not in repr(client)
    with pytest.raises(AMIDisconnected):
        await client.ping()


async def test_md5_challenge_login_events_off():
    async with ReplayServer("ami/ami_login_events_off_md5.jsonl") as srv:
        async with client_for(srv, auth="md5", events=False) as client:
            assert (await client.ping())["Ping"] == "Pong"
    challenge, login = srv.received[0], srv.received[1]
    assert challenge["Action"] == "Challenge" and challenge["AuthType"] == "md5"
    assert hashlib.md5(b"181777780ceo").hexdigest() == "49e1c1496658dc84bed41f2663973114"
    assert without_id(login) == [("Action", "Login"), ("AuthType", "md5"), ("Username", "ceo"),
                                 ("Key", "49e1c1496658dc84bed41f2663973114"), ("Events", "off")]
    assert "Secret" not in login
    assert srv.errors == []


async def test_wrong_password_raises_and_does_not_retry(caplog):
    caplog.set_level(logging.DEBUG)

    class Vault:  # secrets may come from a store object
        def reveal(self):
            return "wrong"

    async with ReplayServer("ami/ami_login_wrong_password.jsonl") as srv:
        client = client_for(srv, secret=Vault())
        with pytest.raises(AMIAuthError) as ei:
            async with asyncio.timeout(5):
                await client.connect()
        assert ei.value.message.endswith("Authentication failed")
        assert ei.value.response["Response"] == "Error"
        assert client.state == "auth_failed" and not client.connected
        await asyncio.sleep(0.3)  # 15x the base backoff: a retry storm would show here
        assert srv.connections == 1
        await client.close()
    assert srv.received[0]["Secret"] == "wrong"
    text = " ".join(r.getMessage() for r in caplog.records) + str(ei.value) + repr(client) + repr(ei.value)
    assert "wrong" not in text.replace("wrong_password", "")


async def test_auth_failure_on_reconnect_stops_reconnecting():
    async with ReplayServer(LOGIN_OFF + [eof()], "ami/ami_login_wrong_password.jsonl") as srv:
        client = client_for(srv, events=False)
        events = client.subscribe("*")
        await client.connect()
        ev = await next_event(events, "MadoguchiAuthFailed")
        assert "Authentication failed" in ev["Message"] and client.state == "auth_failed"
        await asyncio.sleep(0.3)
        assert srv.connections == 2
        await client.close()


async def test_bad_banner_and_refused_connect():
    async with ReplayServer([pbx("HTTP/1.1 400 Bad Request\r\n\r\n")]) as srv:
        client = client_for(srv)
        with pytest.raises(AMIProtocolError, match="not an AMI server"):
            await client.connect()
        await asyncio.sleep(0.1)
        assert srv.connections == 1
        await client.close()
    port = srv.port  # closed now
    with pytest.raises(OSError):
        await AMIClient(port=port, username="ceo", secret="x").connect()


# ------------------------------------------------------------------ actions
async def drive(client: AMIClient, records) -> list[tuple[Message, Message, object]]:
    """Re-issue every recorded action (but Login/Logoff) and compare with the recorded answer."""
    out = []
    for ex in exchanges(records)[1:]:
        act = Parser().feed(ex[0].raw)[0]
        name = act["Action"]
        if name in ("Login", "Logoff", "Challenge"):
            continue
        answers = Parser().feed(b"".join(r.raw for r in ex[1:]))
        resp = next(m for m in answers if m.kind == "response")
        headers = {k: v for k, v in act.pairs if k not in ("Action", "ActionID")}
        try:
            if resp.get("EventList") == "start":
                got = await client.list_action(name, **headers)
                items = [m for m in answers if m.kind == "event" and m.get("ActionID") == resp["ActionID"]
                         and m.get("EventList") != "Complete"]
                assert [without_id(e) for e in got.events] == [without_id(e) for e in items]
                assert got.complete["EventList"] == "Complete"
                assert without_id(got.response) == without_id(resp)
            else:
                got = await client.action(name, **headers)
                assert without_id(got) == without_id(resp), name
        except AMIError as e:
            assert resp["Response"] == "Error" and e.message == resp["Message"], name
            got = e
        out.append((act, resp, got))
    return out


@pytest.mark.parametrize("chunk", [None, 1], ids=["recorded-segments", "one-byte-segments"])
async def test_ami_actions(chunk):
    async with ReplayServer(ACTIONS, chunk=chunk) as srv:
        async with client_for(srv, events=False) as client:
            results = await drive(client, ACTIONS)
    assert srv.errors == [] and len(results) == 29
    by = {}
    for act, _, got in results:
        by.setdefault(act["Action"], []).append(got)
    assert by["Command"][1].get_all("Output") == ["0 active channels", "0 active calls", "3 calls processed"]
    assert by["Getvar"][0]["Value"] == "hello world" and by["Getvar"][1]["Value"] == ""
    qs = by["QueueStatus"]
    assert [e.name for e in qs[1].events] == ["QueueParams", "QueueMember", "QueueMember"]
    assert qs[1].events[2]["PausedReason"] == "lunch" and qs[1].complete["ListItems"] == "3"
    assert qs[2].events == [] and qs[2].complete["ListItems"] == "0"  # unknown queue: empty list
    assert by["CoreShowChannels"][0].events == [] and by["Status"][0].complete["Items"] == "0"
    assert [(e.name, e["Val"]) for e in by["DBGet"][0].events] == [("DBGetResponse", "v 1")]
    assert isinstance(by["DBGet"][1], AMIError) and by["DBGet"][1].message == "Database entry not found"
    assert str(by["FooBar"][0]).startswith("Invalid/unknown command: FooBar.")
    assert isinstance(by["QueueAdd"][1], AMIError) and isinstance(by["QueueRemove"][1], AMIError)
    assert [type(x) for x in by["Originate"]] == [AMIError]


async def test_originate_status_and_channel_tracking():
    async with ReplayServer(ORIGINATE) as srv:
        async with client_for(srv, events=True) as client:
            ev = await client.originate("Local/7090@golden", context="golden", exten="7091", priority=1,
                                        caller_id='"Golden Test" <5550100>', timeout=15,
                                        variables={"GOLDEN_VAR": "1"})
            assert (ev.name, ev["Response"], ev["Reason"]) == ("OriginateResponse", "Success", "4")
            assert ev["Channel"] == "Local/7090@golden-00000001;1"
            ev2 = await client.originate("PJSIP/agent1001", context="golden", exten="7090",
                                         caller_id='"Golden Test" <5550101>', timeout=15)
            assert ev2["Uniqueid"] == "1795312195.40"
            resp, chans = await client.list_action("CoreShowChannels")
            assert resp["EventList"] == "start" and len(chans) == 3
            # channels learned from events agree with Asterisk's own snapshot
            assert {c["Uniqueid"]: c["Channel"] for c in chans} == \
                   {u: c["Channel"] for u, c in client.channels.items()}
            assert client.channels["1795312195.40"]["ChannelStateDesc"] == "Up"
            _, status = await client.list_action("Status")
            assert sorted(e["Uniqueid"] for e in status) == sorted(client.channels)
            chan = "Local/7090@golden-00000001;1"
            await client.action("Setvar", Channel=chan, Variable="GOLDEN_CHANVAR", Value="abc def")
            assert (await client.action("Getvar", Channel=chan, Variable="GOLDEN_CHANVAR"))["Value"] == "abc def"
            await client.action("Getvar", Channel=chan, Variable="CALLERID(num)")
            assert len((await client.list_action("Status", Channel=chan)).events) == 1
            await client.action("Redirect", Channel=chan, Context="golden", Exten="7091", Priority=1)
            await client.action("Hangup", Channel=chan)
            await client.action("Hangup", Channel="PJSIP/agent1001-00000024", Cause=16)
            with pytest.raises(AMIOriginateFailed) as ei:
                await client.originate("PJSIP/agent1002", context="golden", exten="7090", timeout=10)
            assert ei.value.reason == "0" and ei.value.response["Uniqueid"] == "<unknown>"
            r = await client.action("Originate", Channel="Local/7092@golden", Application="Wait", Data="1",
                                    Timeout=10000)
            assert r["Message"] == "Originate successfully queued"
        assert dict(client.channels) == {}
    assert srv.errors == []
    sent = [m for m in srv.received if m["Action"] == "Originate"][0]
    assert without_id(sent) == [("Action", "Originate"), ("Channel", "Local/7090@golden"), ("Context", "golden"),
                                ("Exten", "7091"), ("Priority", "1"), ("CallerID", '"Golden Test" <5550100>'),
                                ("Timeout", "15000"), ("Variable", "GOLDEN_VAR=1"), ("Async", "true")]


# ------------------------------------------------------------------ events
def lifecycle_with_ping():
    """ami_call_lifecycle with a Ping answered after the calls are up and before the hangups.

    The rest only comes after a second Ping: the reader handles a whole read at once, so the first
    Ping's answer alone would not stop later events of the same read from being applied before the
    test looks."""
    recs = golden.load(LIFECYCLE)
    msgs = golden_messages(LIFECYCLE)
    events = [m for m in msgs if m.kind == "event"]
    cut = next(i for i, m in enumerate(events) if m.name == "Hangup")
    login = exchange(recs, "Login")
    script = (exchanges(recs)[0] + login[:1] + [pbx(msgs[0])] + [pbx(m) for m in events[:cut]]
              + [PING_Q, PING_A, PING2_Q, PING2_A] + [pbx(m) for m in events[cut:]] + exchange(recs, "Logoff"))
    return script, events, cut


async def test_call_lifecycle_events_in_order_and_channel_tracking():
    script, golden_events, cut = lifecycle_with_ping()
    async with ReplayServer(script) as srv:
        client = client_for(srv)
        everything = client.subscribe("*")
        hangups = client.subscribe("Hangup")
        async with client:
            await client.ping()  # everything before the first Hangup has been read
            assert sorted(c["Channel"] for c in client.channels.values()) == \
                   ["PJSIP/agent1001-00000014", "PJSIP/caller-00000013"]
            assert client.channels["1795312109.19"]["ChannelStateDesc"] == "Up"
            await client.ping()
        got = [ev async for ev in everything]
        hung = [ev async for ev in hangups]
    assert srv.errors == []
    # same events, same order, headers in the order Asterisk sent them
    assert [ev.pairs for ev in got] == [ev.pairs for ev in golden_events]
    assert len(got) > 100 and {"DialBegin", "BridgeEnter", "DTMFEnd", "Cdr"} <= {e.name for e in got}
    assert [e["Channel"] for e in hung] == ["PJSIP/agent1001-00000014", "PJSIP/caller-00000013"]
    assert dict(client.channels) == {}  # the call ended: no live channels


async def test_slow_consumer_does_not_block_actions():
    script, golden_events, cut = lifecycle_with_ping()
    async with ReplayServer(script) as srv:
        client = client_for(srv)
        stuck = asyncio.Event()

        async def slow(ev):
            stuck.set()
            await asyncio.sleep(60)

        slow_sub = client.subscribe(slow, maxsize=5)
        lazy = client.subscribe("*", maxsize=5)  # never read until the end
        async with client:
            t0 = time.monotonic()
            await client.ping()
            assert time.monotonic() - t0 < 1.0
            assert stuck.is_set() and slow_sub.pending() <= 5 and slow_sub.dropped >= cut - 6
            assert lazy.dropped == cut - 5
            marker = await lazy.get()
            assert (marker.name, marker["Dropped"]) == ("MadoguchiEventsDropped", str(cut - 5))
            rest = [await lazy.get() for _ in range(5)]
            assert [e.pairs for e in rest] == [e.pairs for e in golden_events[cut - 5:cut]]
            await client.ping()
        assert dict(client.channels) == {}  # tracking does not depend on consumers
    assert srv.errors == []


# ------------------------------------------------------------------ failure paths
async def test_server_closes_mid_action_then_reconnect_and_resync():
    newchannel = next(m for m in golden_messages(LIFECYCLE) if m.name == "Newchannel")  # caller-00000013
    first = LOGIN_ON + exchange(ACTIONS, "CoreShowChannels") + [pbx(newchannel), PING_Q, eof()]
    second = LOGIN_ON + exchange(ORIGINATE, "CoreShowChannels")
    async with ReplayServer(first, second) as srv:
        client = client_for(srv, resync="always")
        events = client.subscribe("Madoguchi*")
        async with client:
            ev = await next_event(events, "MadoguchiResync")
            assert (ev["Channels"], ev["Reconnect"]) == ("0", "no")
            await until(lambda: "1795312109.19" in client.channels)
            with pytest.raises(AMIDisconnected):
                async with asyncio.timeout(5):  # a missing failure path must fail the test, not hang it
                    await client.ping()
            assert "EOF" in (await next_event(events, "MadoguchiDisconnected"))["Reason"]
            ev = await next_event(events, "MadoguchiResync")
            assert (ev["Channels"], ev["Reconnect"]) == ("3", "yes")
            assert client.connected and client.reconnects == 1
            # the channel that died while we were away is gone; the live ones are back
            want = {"1795312195.40": "PJSIP/agent1001-00000024", "1795312195.38": "Local/7090@golden-00000001;1",
                    "1795312195.39": "Local/7090@golden-00000001;2"}
            assert {u: c["Channel"] for u, c in client.channels.items()} == want
            assert client.channels["1795312195.38"]["Linkedid"] == "1795312195.38"
    assert srv.errors == [] and srv.connections == 2


async def test_action_timeout_keeps_link():
    async with ReplayServer(LOGIN_OFF + [PING_Q]) as srv:
        async with client_for(srv, events=False, action_timeout=0.3) as client:
            t0 = time.monotonic()
            with pytest.raises(AMITimeout, match="Ping"):
                async with asyncio.timeout(5):  # TimeoutError from here would not match AMITimeout's text
                    await client.ping()
            assert 0.25 < time.monotonic() - t0 < 1.5
            assert client._pending == {} and client.connected
            with pytest.raises(AMITimeout):
                await client.action("Ping", timeout=0.05)
            with pytest.raises(ValueError):  # no header injection
                await client.action("Ping", Foo="x\r\nAction: Hangup")


async def test_unanswered_keepalive_reconnects():
    async with ReplayServer(LOGIN_OFF + [PING_Q], LOGIN_OFF) as srv:
        async with client_for(srv, events=False, keepalive=0.2, action_timeout=0.3) as client:
            await until(lambda: client.reconnects == 1 and client.connected)
            assert srv.connections == 2
    assert srv.errors == []


@pytest.mark.parametrize("bad, error", [
    ("Event: Big\r\nData: " + "x" * 5000 + "\r\n\r\n", "over 2048 bytes"),
    ("Event: Endless\r\nData: " + "x" * 5000, "over 2048 bytes"),         # no newline ever
    ("this is not AMI\r\n\r\n", "unexpected AMI message"),
], ids=["oversized-line", "oversized-no-newline", "garbage"])
async def test_bad_input_drops_and_reconnects(bad, error, caplog):
    async with ReplayServer(LOGIN_OFF + [PING_Q, pbx(bad)], LOGIN_OFF + exchange(ACTIONS, "Logoff")) as srv:
        async with client_for(srv, events=False, max_message_bytes=2048) as client:
            with pytest.raises(AMIDisconnected, match="protocol error"):
                async with asyncio.timeout(5):
                    await client.ping()
            await until(lambda: client.reconnects == 1 and client.connected)
    assert any(error in r.getMessage() and r.levelno == logging.ERROR for r in caplog.records)
    assert srv.errors == []
