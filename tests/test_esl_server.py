"""The outbound ESL server/session against the recorded FreeSWITCH side and misbehaving peers."""
from __future__ import annotations

import asyncio
import logging
import time

import pytest

import golden
from agi import esl_protocol as P
from agi.esl_server import ESLLimits, ESLServer
from agi.esl_session import ESLClosed, ESLHangup, ESLTimeout
from lab.esl_emulator import Caller, LabFreeSWITCH

FS = golden.FREESWITCH


# ---------------------------------------------------------------- golden replay

def command_key(raw: bytes):
    """(first line, headers) of a command, ignoring our Event-UUID (recorded apps did not send one)."""
    [(line, hdrs)] = P.CommandParser().feed(raw)
    return line, [(k, v) for k, v in hdrs if k.lower() != "event-uuid"]


async def replay_fs(port: int, records, step_timeout: float = 5.0) -> list[bytes]:
    """Play FreeSWITCH: send the recorded freeswitch->app bytes, check each command the app sends
    against the recorded one, close where FreeSWITCH closed."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    parser = P.CommandParser()
    got: list[tuple] = []
    sent = []
    try:
        for rec in records:
            if rec.from_pbx:
                if rec.eof:
                    writer.close()
                elif rec.data:
                    writer.write(rec.raw)
                continue
            if rec.eof:
                rest = await asyncio.wait_for(reader.read(), step_timeout)
                assert parser.feed(rest) == [], f"app sent {rest!r} where the recording shows it closing"
                continue
            if not rec.data:
                continue
            want = command_key(rec.raw)
            while not got:
                chunk = await asyncio.wait_for(reader.read(65536), step_timeout)
                assert chunk, f"app closed where the recording shows {rec.data!r}"
                got += parser.feed(chunk)
            line, hdrs = got.pop(0)
            sent.append(line)
            assert (line, [(k, v) for k, v in hdrs if k.lower() != "event-uuid"]) == want
    finally:
        writer.close()
    return sent


def scripted_route(records, outcomes, background=("conference",), wait_close=False):
    """Re-issue the recorded commands through the session API (the server itself sends connect,
    myevents, linger and the final exit)."""
    cmds = [r.raw for r in records if not r.from_pbx and r.data]

    async def route(s):
        outcomes.append(("channel", dict(s.channel)))
        skip = {"connect", "myevents", "exit"} | ({"linger"} if s._limits.linger else set())
        tasks = []
        for raw in cmds:
            line, hdrs = command_key(raw)
            verb, _, arg = line.partition(" ")
            if verb in skip and (verb != "linger" or arg == ""):
                continue
            h = dict(hdrs)
            if verb == "sendmsg" and not s.hungup:
                for t in tasks:
                    outcomes.append(await t)
                tasks.clear()
                coro = run_exec(s, h)
                if h["execute-app-name"] in background:   # runs while the next commands are sent
                    started = asyncio.ensure_future(s.wait_event("CHANNEL_EXECUTE", timeout=5))
                    tasks.append(asyncio.ensure_future(coro))
                    await started
                else:
                    outcomes.append(await coro)
            elif verb == "api":
                outcomes.append((line, await s.api(arg, timeout=5)))
            else:    # raw: linger N, event, bgapi, and sendmsg after the hangup (FreeSWITCH still says +OK)
                outcomes.append((line, (await s.command(raw)).reply_text))
        for t in tasks:
            outcomes.append(await t)
        if wait_close:
            outcomes.append(("closed", await s.wait_closed(10)))
    return route


async def run_exec(s, h):
    app, arg = h["execute-app-name"], h.get("execute-app-arg", "")
    try:
        ev = await s.execute(app, arg, event_lock=h.get("event-lock") == "true", timeout=10)
        return (app, ev)
    except ESLHangup as e:
        return (app, e)


async def run_golden(name, wait_close=False, **limits):
    records = golden.load(f"outbound/{name}.jsonl", FS)
    outcomes = []
    server = await ESLServer(fallback=scripted_route(records, outcomes, wait_close=wait_close), port=0,
                             limits=ESLLimits(**limits)).start()
    try:
        sent = await replay_fs(server.port, records)
        await asyncio.sleep(0.05)
    finally:
        await server.stop(grace=2)
    return outcomes, sent, server


def by_app(outcomes):
    return {o[0]: o[1] for o in outcomes if isinstance(o, tuple) and o[0] not in ("channel",)}


async def test_basic_socket_session_replays_and_matches_completions():
    outcomes, sent, server = await run_golden("outbound_socket_basic")
    ch = outcomes[0][1]
    assert ch["Unique-ID"] == "bcd027aa-133d-4ea2-b852-44bbf821ca93" and ch["variable_sip_from_user"] == "1002"
    r = by_app(outcomes)
    assert r["answer"]["Application-UUID"] == "db2a9156-d404-4a62-b003-b23123b2ce8c"
    assert r["playback"]["Application-Response"] == "FILE PLAYED"
    assert r["play_and_get_digits"].variable("golden_digits") == "12"
    assert r["api uuid_getvar bcd027aa-133d-4ea2-b852-44bbf821ca93 golden_digits"] == "12"
    assert r["hangup"]["Application-Data"] == "NORMAL_CLEARING"        # our own hangup: no ESLHangup
    assert sent[-1] == "exit" and server.stats["completed"] == 1


async def test_nolinger_session_is_closed_by_freeswitch_without_exit():
    outcomes, sent, server = await run_golden("outbound_socket_nolinger", linger=False)
    assert "exit" not in sent and by_app(outcomes)["playback"]["Application-Response"] == "FILE PLAYED"


async def test_caller_hangup_surfaces_as_eslhangup_with_playback_error():
    outcomes, sent, server = await run_golden("outbound_socket_caller_hangup", linger=False, wait_close=True)
    r = by_app(outcomes)
    e = r["playback"]
    assert isinstance(e, ESLHangup) and e.cause == "NORMAL_CLEARING"
    assert e.event["Application-Response"] == "PLAYBACK ERROR"
    assert r["linger 3"] == "+OK will linger 3 seconds"
    assert r["sendmsg"] == "+OK"                                        # sent raw after the hangup
    assert r[[k for k in r if k.startswith("api uuid_getvar")][0]] == "-ERR No such channel!\n"
    assert outcomes[-1] == ("closed", True) and "exit" not in sent


async def test_bridge_answered_noanswer_busy():
    r = by_app((await run_golden("outbound_bridge_agent_answer"))[0])
    assert r["bridge"].variable("originate_disposition") == "SUCCESS"
    r = by_app((await run_golden("outbound_bridge_agent_noanswer"))[0])
    assert r["bridge"].variable("originate_disposition") == "NO_ANSWER" and r["set"]
    outcomes, sent, _ = await run_golden("outbound_bridge_agent_busy")
    e = by_app(outcomes)["bridge"]
    assert isinstance(e, ESLHangup) and e.cause == "USER_BUSY"
    assert e.event.variable("originate_disposition") == "USER_BUSY"
    assert sent[-2:] == ["sendmsg", "exit"]


async def test_record_and_conference_expanded_data_and_background_job():
    outcomes, sent, _ = await run_golden("outbound_record_and_conference")
    r = by_app(outcomes)
    # Application-Data came back expanded (${uuid}); the completion is still ours
    assert r["record_session"]["Application-Data"].startswith("/var/lib/freeswitch/recordings/golden_52f76a8c")
    assert r["conference"]["Application"] == "conference"
    assert r["api conference 3000 list count"] == "2"
    assert any(k.startswith("bgapi originate") and v.startswith("+OK Job-UUID") for k, v in r.items()
               if isinstance(v, str))


async def test_eavesdrop_completes_with_hangup():
    outcomes, _, _ = await run_golden("eavesdrop")
    r = by_app(outcomes)
    assert r["api hash select/golden/eavesdrop_target"] == "8af320e8-31e4-45ae-a57f-726fdc7dd8fe"
    assert isinstance(r["eavesdrop"], ESLHangup) and r["eavesdrop"].event["Answer-State"] == "hangup"


# ---------------------------------------------------------------- through the emulator

async def serve(route=None, **limits):
    return await ESLServer(fallback=route, port=0, limits=ESLLimits(**limits)).start()


async def test_emulated_call_end_to_end():
    seen = []

    async def route(s):
        await s.answer()
        seen.append(await s.playback("tone_stream://%(100,0,440);loops=2"))
        seen.append(await s.play_and_get_digits(1, 4, 1, 5000, "#", "p.wav", "i.wav", "d"))
        seen.append((await s.bridge("sofia/internal/op1001@127.0.0.1")).variable("originate_disposition"))
        await s.record_session("/tmp/x_${uuid}.wav")
        await s.set_var("madoguchi_outcome", "served")
        seen.append(await s.get_var("madoguchi_outcome"))
        await s.hangup()
    server = await serve(route)
    fs = LabFreeSWITCH(time_scale=50)
    res = await fs.call("127.0.0.1", server.port, Caller(digits="42#"))
    await server.stop()
    assert seen == ["FILE PLAYED", "42", "SUCCESS", "served"]
    assert res.hung_up_by == "app" and res.app_exited
    assert [a for a, _ in res.apps] == ["answer", "playback", "play_and_get_digits", "bridge",
                                         "record_session", "set", "hangup"]


async def test_session_cap_sets_overload_and_exits():
    gate = asyncio.Event()

    async def route(s):
        await gate.wait()
    server = await serve(route, max_sessions=1)
    fs = LabFreeSWITCH(time_scale=50)
    first = asyncio.ensure_future(fs.call("127.0.0.1", server.port, Caller()))
    await asyncio.sleep(0.2)
    res = await fs.call("127.0.0.1", server.port, Caller(number="1003"))
    assert res.variables["MADOGUCHI_STATUS"] == "OVERLOAD" and res.app_exited
    assert server.stats["rejected"] == 1
    gate.set()
    await first
    await server.stop()


async def test_unknown_route_is_told_noroute():
    server = await ESLServer({"ivr": lambda s: asyncio.sleep(0)}, port=0).start()
    fs = LabFreeSWITCH(time_scale=50)
    res = await fs.call("127.0.0.1", server.port, Caller(variables={"madoguchi_route": "nothing"}))
    assert res.variables["MADOGUCHI_STATUS"] == "NOROUTE"
    res = await fs.call("127.0.0.1", server.port, Caller(variables={"madoguchi_route": "ivr"}))
    assert "MADOGUCHI_STATUS" not in res.variables and server.stats["completed"] == 1
    await server.stop()


# ---------------------------------------------------------------- every wait has a deadline

@pytest.mark.parametrize("verb", ["connect", "myevents", "linger"])
async def test_silent_freeswitch_during_setup_is_dropped(verb):
    server = await serve(lambda s: asyncio.sleep(0), idle_timeout=0.3, command_timeout=0.3, exit_timeout=0.3)
    fs = LabFreeSWITCH()
    fs.stall = {verb}
    t0 = time.monotonic()
    res = await fs.call("127.0.0.1", server.port, Caller(), timeout=5)
    assert time.monotonic() - t0 < 3
    assert res.commands[-1] == verb or res.commands[-1] == "exit"
    await server.stop()


async def test_api_timeout_then_late_reply_is_not_taken_for_the_next():
    seen = []

    async def route(s):
        try:
            await s.api("status", timeout=0.2)
        except ESLTimeout as e:
            seen.append("timeout")
        seen.append(await s.api("version", timeout=2))
    # a peer that answers the first api late: the late reply must be discarded
    server = await serve(route)
    r, w = await asyncio.open_connection("127.0.0.1", server.port)
    fs = LabFreeSWITCH()
    from lab.esl_emulator import _Channel
    ch = _Channel(fs, Caller())
    parser = P.CommandParser()

    async def next_cmd():
        while True:
            got = parser.feed(await asyncio.wait_for(r.read(65536), 3))
            if got:
                return got[0][0]
    assert await next_cmd() == "connect"
    w.write(ch.connect_reply())
    assert await next_cmd() == "myevents"
    w.write(P.reply("+OK Events Enabled"))
    assert await next_cmd() == "linger"
    w.write(P.reply("+OK will linger"))
    assert await next_cmd() == "api status"
    await asyncio.sleep(0.4)                        # too late
    w.write(P.api_response("late status\n"))
    assert await next_cmd() == "api version"
    w.write(P.api_response("FreeSWITCH Version 1.10.12\n"))
    assert await next_cmd() == "exit"
    w.write(P.reply("+OK bye") + P.disconnect_notice(ch.uuid))
    w.close()
    await server.stop()
    assert seen == ["timeout", "FreeSWITCH Version 1.10.12\n"]


async def test_application_that_never_completes_times_out():
    seen = []

    async def route(s):
        await s.answer()
        try:
            await s.execute("playback", "x.wav", timeout=0.3)
        except ESLTimeout:
            seen.append("timeout")
    server = await serve(route, exit_timeout=0.5)
    fs = LabFreeSWITCH(time_scale=50)
    fs.stall_apps = {"playback"}
    res = await fs.call("127.0.0.1", server.port, Caller(), timeout=5)
    assert seen == ["timeout"] and res.app_exited
    await server.stop()


async def test_sendmsg_without_reply_times_out():
    seen = []

    async def route(s):
        try:
            await s.answer()
        except ESLTimeout:
            seen.append("timeout")
    server = await serve(route, command_timeout=0.3, exit_timeout=0.3)
    fs = LabFreeSWITCH(time_scale=50)
    fs.stall = {"sendmsg"}
    await fs.call("127.0.0.1", server.port, Caller(), timeout=5)
    assert seen == ["timeout"]
    await server.stop()


async def test_wait_event_and_exit_have_deadlines():
    seen = []

    async def route(s):
        try:
            await s.wait_event("DTMF", timeout=0.2)
        except ESLTimeout:
            seen.append("no dtmf")
    server = await serve(route, exit_timeout=0.3)
    fs = LabFreeSWITCH()
    fs.stall = {"exit"}
    t0 = time.monotonic()
    res = await fs.call("127.0.0.1", server.port, Caller(), timeout=5)
    assert seen == ["no dtmf"] and time.monotonic() - t0 < 3 and res.commands[-1] == "exit"
    await server.stop()


async def test_hangup_during_app_without_completion_is_bounded_by_hangup_grace():
    seen = []

    async def route(s):
        await s.answer()
        try:
            await s.execute("playback", "x.wav", timeout=60)
        except ESLHangup as e:
            seen.append(("hangup", e.cause))
        except ESLTimeout:
            seen.append(("timeout", s.hungup))
    server = await serve(route, hangup_grace=0.3, exit_timeout=0.3)
    r, w = await asyncio.open_connection("127.0.0.1", server.port)
    fs = LabFreeSWITCH()
    from lab.esl_emulator import _Channel
    ch = _Channel(fs, Caller())
    ch.writer = w
    parser = P.CommandParser()

    async def next_cmd():
        while True:
            got = parser.feed(await asyncio.wait_for(r.read(65536), 3))
            if got:
                return got[0]
    await next_cmd()
    w.write(ch.connect_reply())
    await next_cmd()
    w.write(P.reply("+OK Events Enabled"))
    await next_cmd()
    w.write(P.reply("+OK will linger"))
    line, hdrs = await next_cmd()
    w.write(P.reply("+OK"))
    au = dict(hdrs)["Event-UUID"]
    ch.myevents = True
    ch.running_app = ("answer", "", au)
    ch._complete("_none_")
    await next_cmd()
    w.write(P.reply("+OK"))
    ch._start_hangup("NORMAL_CLEARING", "app")        # CHANNEL_HANGUP, but no EXECUTE_COMPLETE ever
    t0 = time.monotonic()
    await asyncio.sleep(0.8)
    assert seen == [("timeout", True)] and time.monotonic() - t0 < 2
    w.close()
    await server.stop()


# ---------------------------------------------------------------- broken peers

async def test_peer_closes_mid_message():
    seen = []

    async def route(s):
        try:
            await s.api("status")
        except ESLClosed as e:
            seen.append(type(e).__name__)
    server = await serve(route)
    r, w = await asyncio.open_connection("127.0.0.1", server.port)
    fs = LabFreeSWITCH()
    from lab.esl_emulator import _Channel
    ch = _Channel(fs, Caller())
    parser = P.CommandParser()
    for answer in (ch.connect_reply(), P.reply("+OK Events Enabled"), P.reply("+OK will linger")):
        while not parser.feed(await asyncio.wait_for(r.read(65536), 3)):
            pass
        w.write(answer)
    while not parser.feed(await asyncio.wait_for(r.read(65536), 3)):
        pass
    w.write(b"Content-Type: api/response\nContent-Length: 100\n\nUP 0 ye")   # half a body, then gone
    await w.drain()
    w.close()
    await asyncio.sleep(0.3)
    assert seen == ["ESLClosed"]
    await server.stop()


async def test_oversized_message_closes_session_with_one_log_line(caplog):
    server = await serve(lambda s: asyncio.sleep(5), max_header=4096)
    r, w = await asyncio.open_connection("127.0.0.1", server.port)
    assert await asyncio.wait_for(r.readuntil(b"\n\n"), 3) == b"connect\n\n"
    with caplog.at_level(logging.WARNING, logger="madoguchi.esl"):
        w.write(b"Event-Name: CHANNEL_DATA\nX: " + b"A" * 100_000)
        try:
            await w.drain()
        except ConnectionError:
            pass
        assert await asyncio.wait_for(r.read(), 3) == b""
        await asyncio.sleep(0.05)
    assert len([x for x in caplog.records if "longer than" in x.getMessage()]) == 1
    assert server.stats["errors"] == 1
    await server.stop()


async def test_graceful_stop_lets_calls_finish_then_cancels():
    finished, cancelled = [], []

    async def route(s):
        d = float(s.variable("sleep"))
        try:
            await asyncio.sleep(d)
            finished.append(d)
        except asyncio.CancelledError:
            cancelled.append(d)
            raise
    server = await serve(route, exit_timeout=0.3)
    fs = LabFreeSWITCH()
    calls = [asyncio.ensure_future(fs.call("127.0.0.1", server.port, Caller(variables={"sleep": d}), timeout=10))
             for d in ("0.1", "5")]
    await asyncio.sleep(0.2)
    await server.stop(grace=0.5)
    await asyncio.gather(*calls, return_exceptions=True)
    assert finished == [0.1] and cancelled == [5.0]
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", server.port)


async def test_execute_on_a_hung_up_channel_raises_without_sending():
    seen = []

    async def route(s):
        await s.answer()
        await asyncio.wait_for(s.wait_gone(), 3)
        try:
            await s.playback("x.wav")
        except ESLHangup as e:
            seen.append(e.cause)
    server = await serve(route)
    fs = LabFreeSWITCH(time_scale=10)
    res = await fs.call("127.0.0.1", server.port, Caller(hangup_after=1))
    assert seen == ["NORMAL_CLEARING"] and [a for a, _ in res.apps] == ["answer"]
    await server.stop()
