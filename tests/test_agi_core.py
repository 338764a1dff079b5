"""The FastAGI core against the recorded Asterisk side and against misbehaving peers."""
from __future__ import annotations

import asyncio
import logging
import time

import pytest

import golden
from agi.protocol import (AGIProtocolError, AGIUsageError, Connection, Environment, HangupNotice, Reply,
                          app_data, build, quote)
from agi.server import FastAGIServer, ServerLimits
from agi.session import AGIClosed, AGIHangup
from agi_replay import replay, split_command
from lab.agi_wire import parse_args


def scripted_route(records, outcomes):
    """A route that re-issues the recorded commands and keeps (command, reply or exception)."""
    lines = [r.data for r in records if not r.from_pbx and r.data]

    async def route(session):
        outcomes.append(("env", session.env))
        for line in lines:
            verb, args = split_command(line)
            try:
                outcomes.append((line, await session.command(verb, *args, timeout=5)))
            except AGIHangup as e:
                outcomes.append((line, e))
    return route


async def run_golden(name, **limits):
    records = golden.load(f"agi/{name}.jsonl")
    outcomes = []
    server = await FastAGIServer({name: scripted_route(records, outcomes)}, port=0,
                                 limits=ServerLimits(**limits)).start()
    try:
        result = await replay(server.port, records)
    finally:
        await server.stop(grace=1)
    return records, outcomes, result


def replies(outcomes):
    """Command -> its first reply (a command may be repeated later, e.g. after hangup)."""
    out = {}
    for line, r in outcomes[1:]:
        out.setdefault(line.rstrip("\n"), r)
    return out


async def test_command_tour_replies_parse_as_recorded():
    records, outcomes, result = await run_golden("answer_stream_getdata")
    env = outcomes[0][1]
    assert env.script == "answer_stream_getdata" and env["dnid"] == "7002" and env["accountcode"] == ""
    seq = outcomes[1:]
    assert len(seq) == len([r for r in records if not r.from_pbx and r.data])
    r = replies(outcomes)
    assert r["ANSWER"] == Reply(200, "0", None, None, "200 result=0")
    assert r['STREAM FILE hello-world ""'].endpos == 11234
    assert r["GET DATA beep 3000 4"].result == "12" and r["GET DATA beep 3000 4"].data is None
    assert (r["GET DATA beep 2000 4"].result, r["GET DATA beep 2000 4"].data) == ("7", "timeout")
    assert (r["GET DATA beep 1500 4"].result, r["GET DATA beep 1500 4"].data) == ("", "timeout")
    assert r["GET VARIABLE FOO"].data == "bar baz"
    assert r["GET VARIABLE NO_SUCH_VARIABLE"].value == 0
    assert r['GET FULL VARIABLE "${FOO} on ${CHANNEL}"'].data == "bar baz on PJSIP/caller-00000002"
    assert r["WAIT FOR DIGIT 5000"].value == ord("5")
    assert r["FOOBAR"].code == 510
    usage = r["STREAM FILE"]
    assert usage.code == 520 and usage.text.startswith("520-Invalid command syntax")
    assert usage.text.endswith("520 End of proper usage.") and "PLAYBACKSTATUS" in usage.text
    assert r["WAIT FOR DIGIT"].code == 520
    assert r["EXEC NoSuchApplication foo"].value == -2
    assert (r['GET OPTION hello-world "123" 3000'].value, r['GET OPTION hello-world "123" 3000'].endpos) == (50, 3040)
    rec = r['RECORD FILE /var/spool/asterisk/monitor/golden/rec wav "#" 3000']
    assert (rec.value, rec.data, rec.endpos) == (35, "dtmf", 0)
    assert r['STREAM FILE hello-world "0123456789#*"'].value == ord("9")
    # After our own HANGUP, Asterisk sends an unsolicited HANGUP line. The next reply must still be
    # the next command's: GET VARIABLE FOO answers "bar baz", not the HANGUP line.
    last = seq[-3:]
    assert last[0][0] == "HANGUP\n" and last[0][1].value == 1
    assert last[1][0] == "GET VARIABLE FOO\n" and last[1][1].data == "bar baz"
    assert isinstance(last[2][1], AGIHangup) and "511" in str(last[2][1])
    assert result.app_closed


@pytest.mark.parametrize("name", ["caller_hangs_up_midcommand", "caller_hangs_up_during_exec_wait"])
async def test_hangup_line_after_reply_does_not_shift_replies(name):
    _, outcomes, _ = await run_golden(name)
    seq = outcomes[1:]
    assert seq[0][1].value == -1
    if name == "caller_hangs_up_midcommand":
        assert isinstance(seq[1][1], AGIHangup)              # STREAM FILE -> 511
        assert seq[2][1].value == 0                          # GET VARIABLE AGISTATUS (unset)
        assert isinstance(seq[3][1], AGIHangup)              # ANSWER -> 511
        assert seq[4][1].value == 1                          # VERBOSE
    else:
        assert seq[1][1].value == 0                          # EXEC Wait 1 still runs
        assert seq[2][1].data == "0"                         # HANGUPCAUSE


async def test_agiexitonhangup_reply_and_hangups_in_one_segment():
    records = golden.load("agi/caller_hangs_up_midcommand_agiexitonhangup_yes.jsonl")
    seen = []

    async def route(session):
        seen.append(await session.command("STREAM FILE", "demo-instruct", ""))
        seen.append(session.hungup)
        with pytest.raises(AGIClosed):
            await session.command("NOOP", timeout=2)
        seen.append("closed")
    server = await FastAGIServer({"caller_hangs_up_midcommand_agiexitonhangup_yes": route}, port=0).start()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    for rec in records:
        if rec.from_pbx and rec.data and not rec.data.startswith("200"):
            writer.write(rec.raw)
    await reader.readline()
    writer.write(b"200 result=-1 endpos=20160\nHANGUP\nHANGUP\n")
    writer.close()
    await server.stop(grace=3)
    assert seen[0].value == -1 and seen[0].endpos == 20160 and seen[1] is True and seen[2] == "closed"


async def test_close_after_env_and_dial_busy_transcripts():
    _, outcomes, result = await run_golden("exec_dial_agent_busy")
    r = replies(outcomes)
    assert r["EXEC Dial PJSIP/agent1001,20"].value == 0
    assert r["GET VARIABLE DIALSTATUS"].data == "BUSY" and r["GET VARIABLE HANGUPCAUSE"].data == "17"
    assert result.app_closed


# ------------------------------------------------------------------ synthetic protocol cases

def env_block(script="t", **extra):
    lines = [f"agi_network: yes", f"agi_network_script: {script}", f"agi_request: agi://127.0.0.1/{script}",
             "agi_channel: PJSIP/caller-00000001", "agi_uniqueid: 1.1", "agi_accountcode: "]
    lines += [f"agi_{k}: {v}" for k, v in extra.items()]
    return ("\n".join(lines) + "\n\n").encode()


def test_parser_hangup_before_reply_and_split_segments():
    c = Connection()
    evs = c.feed(env_block())
    assert isinstance(evs[0], Environment) and evs[0]["accountcode"] == ""
    c.command("STREAM FILE", "x", "")
    # HANGUP arrives before the reply, split across segments: it must not be taken as the reply.
    assert c.feed(b"HAN") == []
    evs = c.feed(b"GUP\n200 result=-1 en")
    assert evs == [HangupNotice()] and c.hungup and c.awaiting_reply
    evs = c.feed(b"dpos=20160\n")
    assert evs == [Reply(200, "-1", None, 20160, "200 result=-1 endpos=20160")]


def test_parser_crlf_interim_and_usage():
    c = Connection()
    c.feed(env_block().replace(b"\n", b"\r\n"))
    c.command("EXEC", "Dial", "PJSIP/op1,20")
    assert c.feed(b"100 result=0 Trying...\r\n") == []
    assert c.feed(b"200 result=0\r\n")[0].value == 0
    c.command("WAIT FOR DIGIT")
    assert c.feed(b"520-Invalid command syntax.  Proper usage follows:\nline one\n") == []
    r = c.feed(b"520 End of proper usage.\n")[0]
    assert r.code == 520 and "line one" in r.text


def test_parser_rejects_unsolicited_reply_and_long_line():
    c = Connection(max_line=64)
    c.feed(env_block())
    with pytest.raises(AGIProtocolError):
        c.feed(b"200 result=0\n")  # no command outstanding
    c2 = Connection(max_line=64)
    with pytest.raises(AGIProtocolError):
        c2.feed(b"agi_network: " + b"x" * 100)
    with pytest.raises(AGIProtocolError):
        Connection().feed(b"GET / HTTP/1.1\n")


@pytest.mark.parametrize("value", ['say "hi"; HANGUP', "a b\\c", "", "tab\there", '\\"', "日本語 です"])
def test_quoting_round_trips_through_res_agi_parse_args(value):
    line = build("SET VARIABLE", "X", value).decode()
    assert parse_args(line.rstrip("\n")) == ["SET", "VARIABLE", "X", value]
    assert line.count("\n") == 1


@pytest.mark.parametrize("value", ["a\nHANGUP", "a\rb", "a\0"])
def test_line_breaks_can_never_reach_the_wire(value):
    with pytest.raises(AGIUsageError):
        quote(value)


@pytest.mark.parametrize("value", ["op1,30", "${EVIL}", "x|y", "a(b)", "a'b"])
def test_application_data_refuses_argument_splitting(value):
    with pytest.raises(AGIUsageError):
        app_data("PJSIP/op1001", value)
    assert app_data("PJSIP/op1001", 20) == "PJSIP/op1001,20"


async def serve(routes=None, **limits):
    return await FastAGIServer(routes or {}, port=0, limits=ServerLimits(**limits)).start()


async def test_early_eof_before_blank_line_does_not_spin():
    server = await serve(idle_timeout=30)
    _, w = await asyncio.open_connection("127.0.0.1", server.port)
    w.write(b"agi_network: yes\nagi_network_script: t\n")
    await w.drain()
    t0 = time.process_time()
    w.close()
    await asyncio.sleep(0.3)
    # EOF ended the session at once; a spinning reader would burn the whole 0.3 s of CPU.
    assert time.process_time() - t0 < 0.15
    assert server.stats["accepted"] == 1 and not server._tasks
    await server.stop()


async def test_silent_client_is_closed_after_idle_timeout(caplog):
    server = await serve(idle_timeout=0.2)
    r, w = await asyncio.open_connection("127.0.0.1", server.port)
    t0 = time.monotonic()
    assert await asyncio.wait_for(r.read(), 3) == b""
    assert 0.15 < time.monotonic() - t0 < 2
    assert server.stats["timeouts"] == 1
    await server.stop()


async def test_oversized_line_closes_session_with_one_log_line(caplog):
    server = await serve(max_line=1024)
    r, w = await asyncio.open_connection("127.0.0.1", server.port)
    with caplog.at_level(logging.WARNING, logger="madoguchi.agi"):
        w.write(b"agi_network: " + b"A" * 100_000)
        try:
            await w.drain()
        except ConnectionError:
            pass
        assert await asyncio.wait_for(r.read(), 3) == b""
        await asyncio.sleep(0.05)
    lines = [rec for rec in caplog.records if "longer than" in rec.getMessage()]
    assert len(lines) == 1 and server.stats["errors"] == 1
    await server.stop()


async def test_command_timeout_closes_session():
    outcome = []

    async def route(s):
        try:
            await s.command("ANSWER", timeout=0.2)
        except AGIClosed as e:
            outcome.append(str(e))
        with pytest.raises(AGIClosed):
            await s.command("NOOP")
    server = await serve({"t": route})
    r, w = await asyncio.open_connection("127.0.0.1", server.port)
    w.write(env_block())
    assert await r.readline() == b"ANSWER\n"
    assert await asyncio.wait_for(r.read(), 3) == b""   # closed, nothing more sent
    assert outcome and "timeout" in outcome[0]
    await server.stop()


async def test_peer_closes_mid_command():
    outcome = []

    async def route(s):
        try:
            await s.stream_file("hello-world")
        except AGIClosed as e:
            outcome.append(type(e).__name__)
    server = await serve({"t": route})
    r, w = await asyncio.open_connection("127.0.0.1", server.port)
    w.write(env_block())
    await r.readline()
    w.write(b"200 result=-1 endp")   # half a reply, then the link drops
    await w.drain()
    w.close()
    await asyncio.sleep(0.2)
    assert outcome == ["AGIClosed"]
    await server.stop()


async def test_session_cap_answers_overload_and_routes_to_fallback_variable():
    gate = asyncio.Event()

    async def route(s):
        await gate.wait()
    server = await serve({"t": route}, max_sessions=2)
    conns = []
    for _ in range(2):
        r, w = await asyncio.open_connection("127.0.0.1", server.port)
        w.write(env_block())
        conns.append((r, w))
    await asyncio.sleep(0.1)
    r, w = await asyncio.open_connection("127.0.0.1", server.port)
    w.write(env_block())
    assert await asyncio.wait_for(r.readline(), 2) == b"SET VARIABLE MADOGUCHI_STATUS OVERLOAD\n"
    w.write(b"200 result=1\n")
    assert await asyncio.wait_for(r.read(), 2) == b""
    assert server.stats["rejected"] == 1 and server.active == 2
    gate.set()
    await server.stop()


async def test_unknown_script_is_told_noroute_and_query_is_parsed():
    seen = []

    async def route(s):
        seen.append((s.env.script, s.env.params, s.env.args))
    server = await serve({"madoguchi": route})
    for script in ("nothing-here", "madoguchi?number=0223984894&x="):
        r, w = await asyncio.open_connection("127.0.0.1", server.port)
        w.write(env_block(script, arg_1="first arg", arg_2="second"))
        if script == "nothing-here":
            assert await r.readline() == b"SET VARIABLE MADOGUCHI_STATUS NOROUTE\n"
            w.write(b"200 result=1\n")
        assert await asyncio.wait_for(r.read(), 2) == b""
    assert seen == [("madoguchi", {"number": "0223984894", "x": ""}, ("first arg", "second"))]
    await server.stop()


async def test_graceful_shutdown_lets_calls_finish_then_cancels():
    finished, cancelled = [], []

    async def route(s):
        try:
            await asyncio.sleep(float(s.env.params["sleep"]))
            finished.append(s.env.params["sleep"])
        except asyncio.CancelledError:
            cancelled.append(s.env.params["sleep"])
            raise
    server = await serve({"t": route})
    for d in ("0.1", "5"):
        _, w = await asyncio.open_connection("127.0.0.1", server.port)
        w.write(env_block(f"t?sleep={d}"))
    await asyncio.sleep(0.05)
    await server.stop(grace=0.5)
    assert finished == ["0.1"] and cancelled == ["5"]
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", server.port)


async def test_wait_gone_wakes_on_an_unsolicited_hangup_between_commands():
    woke = []

    async def route(s):
        await s.answer()
        await asyncio.wait_for(s.wait_gone(), 3)   # no command outstanding: HANGUP must still be seen
        woke.append(s.hungup)
    server = await serve({"t": route})
    r, w = await asyncio.open_connection("127.0.0.1", server.port)
    w.write(env_block())
    assert await r.readline() == b"ANSWER\n"
    w.write(b"200 result=0\n")
    await asyncio.sleep(0.05)
    w.write(b"HANGUP\n")
    assert await asyncio.wait_for(r.read(), 3) == b""
    assert woke == [True]
    await server.stop()
