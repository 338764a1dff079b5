"""Conformance of the lab PBX emulator against the Asterisk 22.10.1 golden transcripts.

AGI: a tiny FastAGI server sends exactly the recorded app->asterisk commands (at the recorded
times, scaled) and records what the emulator answers; the answers must equal the recorded
asterisk->app bytes. AMI: the recorded client side is replayed and the responses compared
byte for byte after normalising only named volatile fields.
"""
from __future__ import annotations

import asyncio
import hashlib
import re

import pytest

from cti.ami_protocol import Parser
from lab import agi_wire
from lab.pbx import CallerScript, LabAgent, LabPBX
from tests.golden import Record, load, stream

SCALE = 0.05
HELLO = 11234 / 8000  # hello-world is 11234 samples in the golden data


# --- pure wire -------------------------------------------------------------------
@pytest.mark.parametrize("line,words", [
    ('STREAM FILE hello-world ""', ["STREAM", "FILE", "hello-world", ""]),
    ('SET VARIABLE FOO "bar baz"', ["SET", "VARIABLE", "FOO", "bar baz"]),
    ('GET FULL VARIABLE "${FOO} on ${CHANNEL}"', ["GET", "FULL", "VARIABLE", "${FOO} on ${CHANNEL}"]),
    (r'VERBOSE a\ b\"c  2', ["VERBOSE", 'a b"c', "2"]),
    ('EXEC Dial   PJSIP/op1001,20', ["EXEC", "Dial", "PJSIP/op1001,20"]),
    ('ab"c d"e', ["abc de"]),
])
def test_parse_args_like_res_agi(line, words):
    assert agi_wire.parse_args(line) == words


def test_env_block_shape():
    env = {k: "" for k in agi_wire.ENV_ORDER}
    block = agi_wire.format_env(env, ["first arg", "second"]).decode()
    lines = block.split("\n")
    assert lines[0] == "agi_network: " and lines[20] == "agi_accountcode: "
    assert lines[22:] == ["agi_arg_1: first arg", "agi_arg_2: second", "", ""]
    with pytest.raises(KeyError):
        agi_wire.format_env({"network": "yes"})


def test_golden_env_block_order_matches():
    recs = load("agi/agi_env_sip.jsonl")
    keys = [ln.split(":")[0] for ln in stream(recs, True).decode().split("\n\n")[0].split("\n")]
    assert keys == [f"agi_{k}" for k in agi_wire.ENV_ORDER] + ["agi_arg_1", "agi_arg_2"]


# --- AGI replay --------------------------------------------------------------------
def _plan(recs: list[Record]):
    """[(t, command_or_None_for_eof, expected_reply_line_count)] from a transcript."""
    steps, env_done = [], False
    for r in recs:
        if r.from_pbx:
            if not env_done:
                continue
            if steps:
                steps[-1][2] += r.data.count("\n")
        elif r.data:
            env_done = True
            steps.append([r.t, r.data, 0])
        elif r.eof:
            env_done = True
            steps.append([r.t, None, 0])
    return steps


async def _replay_agi(recs, pbx: LabPBX, script: CallerScript, scale: float):
    """Run one call; the app side replays the transcript. Returns (env text, reply text)."""
    steps = _plan(recs)
    got = {}

    done = asyncio.Event()

    async def app(reader, writer):
        try:
            await _app(reader, writer)
        except Exception as e:  # surfaced below: a handler exception would be swallowed by asyncio
            got["error"] = e
        finally:
            done.set()

    async def _app(reader, writer):
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        env = b""
        while not env.endswith(b"\n\n"):
            line = await reader.readline()
            if not line:
                break
            env += line
        out = b""
        got["out"] = out
        for t, cmd, n in steps:
            await asyncio.sleep(max(0.0, t0 + t * scale - loop.time()))
            if cmd is None:
                writer.write_eof()
                out += await asyncio.wait_for(reader.read(), 5)
                break
            writer.write(cmd.encode())
            await writer.drain()
            for _ in range(n):
                out += await asyncio.wait_for(reader.readline(), 5)
        got["env"], got["out"] = env.decode(), out.decode()
        writer.close()

    srv = await asyncio.start_server(app, "127.0.0.1", 0)
    pbx.agi_port = srv.sockets[0].getsockname()[1]
    try:
        result = await asyncio.wait_for(pbx.call(script), 60)
        if result.agistatus != "FAILURE":
            await asyncio.wait_for(done.wait(), 10)
    finally:
        srv.close()
    if "error" in got:
        raise AssertionError(f"app side failed: {got['error']!r}; partial output {got.get('out')!r}")
    return got["env"], got["out"], result


def _golden_split(recs):
    s = stream(recs, True).decode()
    env, _, rest = s.partition("\n\n")
    return env + "\n\n", rest


def _endpos_close(got: str, want: str, frames: int = 3):
    """Interrupted playback positions depend on scheduling jitter; allow a few 20 ms frames."""
    chan = re.compile(r"PJSIP/caller-[0-9a-f]{8}")  # channel numbers depend on earlier calls
    g, w = chan.sub("CH", got).splitlines(), chan.sub("CH", want).splitlines()
    assert len(g) == len(w), (got, want)
    for a, b in zip(g, w):
        ma, mb = re.fullmatch(r"(.*endpos=)(\d+)", a), re.fullmatch(r"(.*endpos=)(\d+)", b)
        if ma and mb and ma.group(1) == mb.group(1) and a != b:
            assert abs(int(ma.group(2)) - int(mb.group(2))) <= 160 * frames, (a, b)
        else:
            assert a == b


def _norm_env(env: str) -> str:
    env = re.sub(r"(agi_request: agi://127\.0\.0\.1:)\d+", r"\1PORT", env)
    env = re.sub(r"(agi_channel: PJSIP/caller-)[0-9a-f]{8}", r"\1N", env)
    env = re.sub(r"(agi_uniqueid: )\d+\.\d+", r"\1U", env)
    return re.sub(r"(agi_threadid: )\d+", r"\1T", env)


def _pbx(**kw) -> LabPBX:
    base = dict(context="golden", sounds={"hello-world": HELLO, "beep": 0.42, "demo-instruct": 73.0},
                time_scale=SCALE, ami_users={"ceo": "ceo"},
                agents=[LabAgent("PJSIP/agent1001", name="Agent 1001", ring_delay=1.0, talk_time=2.0)])
    base.update(kw)
    return LabPBX(**base)


GETDATA_DIGITS = [(3.165, "1"), (3.765, "2"), (4.365, "#"), (8.165, "7"), (16.365, "5"),
                  (19.895, "2"), (24.185, "#"), (27.795, "9")]


async def test_answer_stream_getdata_replies_match_golden():
    recs = load("agi/answer_stream_getdata.jsonl")
    pbx = _pbx(routes={"7002": "answer_stream_getdata"})
    env, out, res = await _replay_agi(recs, pbx, CallerScript("0223984894", "7002", digits=GETDATA_DIGITS), SCALE)
    genv, gout = _golden_split(recs)
    assert _norm_env(env) == _norm_env(genv)
    _endpos_close(out, gout)
    assert res.agistatus == "HANGUP"
    assert res.variables["FOO"] == "bar baz"
    assert [d for _, d, _ in res.trace][:2] == ["asterisk->app", "asterisk->app"]
    assert ("app->asterisk", "ANSWER") in [(d, ln) for _, d, ln in res.trace]


@pytest.mark.parametrize("name,route,hangup", [
    ("caller_hangs_up_midcommand", {"answer": True}, ("STREAM FILE demo-instruct", 2.52)),
    ("caller_hangs_up_midcommand_agisighup_no", {"answer": True, "vars": {"AGISIGHUP": "no"}},
     ("STREAM FILE demo-instruct", 2.52)),
    ("caller_hangs_up_midcommand_agiexitonhangup_yes", {"answer": True, "vars": {"AGIEXITONHANGUP": "yes"}},
     ("STREAM FILE demo-instruct", 2.52)),
    ("caller_hangs_up_during_exec_wait", {"answer": True}, ("EXEC Wait", 2.5)),
    ("exec_dial_agent_answer", {"answer": True}, None),
    ("exec_dial_agent_noanswer", {"answer": True}, None),
    ("agi_close_after_env", {"answer": True}, None),
    ("agi_env_sip", {"args": ["first arg", "second"], "script": "agi_env_sip?lang=ja",
                     "priority": 2}, None),
])
async def test_agi_transcript_replay(name, route, hangup):
    recs = load(f"agi/{name}.jsonl")
    genv, gout = _golden_split(recs)
    exten = re.search(r"agi_dnid: (\S+)", genv).group(1)
    r = {"script": name, **route}
    behaviour = "noanswer" if name.endswith("noanswer") else "answer"
    pbx = _pbx(routes={exten: r}, agents=[LabAgent("PJSIP/agent1001", name="Agent 1001", ring_delay=1.0,
                                                   talk_time=2.0, behaviour=behaviour)])
    env, out, res = await _replay_agi(recs, pbx, CallerScript("0223984894", exten, hangup_during=hangup), SCALE)
    assert _norm_env(env) == _norm_env(genv)
    _endpos_close(out, gout)
    expected_status = "SUCCESS" if name == "agi_close_after_env" else "HANGUP"
    assert res.agistatus == expected_status


async def test_exec_dial_busy_replay():
    recs = load("agi/exec_dial_agent_busy.jsonl")
    genv, gout = _golden_split(recs)
    pbx = _pbx(routes={"7012": {"script": "exec_dial_agent_busy", "answer": True}},
               agents=[LabAgent("PJSIP/agent1001", name="Agent 1001", behaviour="busy")])
    env, out, res = await _replay_agi(recs, pbx, CallerScript("0223984894", "7012"), SCALE)
    assert out == gout
    assert res.dialstatus == "BUSY" and res.hangup_cause == 17


async def test_connect_refused_is_failure_and_agent_busy_while_in_call():
    pbx = _pbx(routes={"1": {"script": "x", "port": 1}})
    res = await pbx.call(CallerScript("0311112222", "1"))
    assert res.agistatus == "FAILURE" and res.trace == []


async def test_second_dial_to_agent_in_call_gets_busy_and_caller_hangup_ends_bridge():
    replies = {}

    async def app(reader, writer):
        env = b""
        while not env.endswith(b"\n\n"):
            env += await reader.readline()
        cid = re.search(rb"agi_callerid: (\S+)", env).group(1).decode()
        writer.write(b"EXEC Dial PJSIP/agent1001,20\n")
        replies[cid] = [(await reader.readline()).decode()]
        writer.write(b"GET VARIABLE DIALSTATUS\n")
        replies[cid].append((await reader.readline()).decode())
        writer.close()

    srv = await asyncio.start_server(app, "127.0.0.1", 0)
    pbx = _pbx(agi_port=srv.sockets[0].getsockname()[1], routes={"0223984894": "madoguchi?number=0223984894"},
               agents=[LabAgent("PJSIP/agent1001", ring_delay=1.0, talk_time=20.0)])
    try:
        first = asyncio.ensure_future(pbx.call(CallerScript("0311110001", "0223984894", hangup_at=5.0)))
        await asyncio.sleep(2.0 * SCALE)
        second = await pbx.call(CallerScript("0311110002", "0223984894"))
        r1 = await first
    finally:
        srv.close()
    assert replies["0311110002"] == ["200 result=0\n", "200 result=1 (BUSY)\n"]
    assert second.answered_by is None and second.dialstatus == "BUSY"
    assert replies["0311110001"][0] == "200 result=-1\n"
    assert r1.answered_by == "PJSIP/agent1001" and r1.agistatus == "HANGUP"
    assert r1.duration < 10  # the caller's hangup at 5 s ended the 20 s talk


# --- AMI replay --------------------------------------------------------------------
VOLATILE = ("Timestamp", "EventTV", "SessionTV", "SessionID", "RemoteAddress", "LocalAddress", "Uptime",
            "LastReload", "Challenge", "LoginTime", "LastPause")


def _norm_ami(text: str) -> str:
    for k in VOLATILE:
        text = re.sub(rf"(?m)^{k}: [^\r\n]*", f"{k}: <X>", text)
    return re.sub(r"(?m)^(Output: Asterisk 22\.10\.1 built by root @ vm on a x86_64 running Linux on )[^\r\n]*",
                  r"\1<X>", text)


async def _replay_ami(pbx: LabPBX, recs: list[Record]) -> tuple[str, str]:
    """Send the recorded client side; wait for as many messages as Asterisk answered each time."""
    steps, cur = [], None
    for r in recs:
        if not r.from_pbx and r.data:
            if cur is None or cur[1]:
                cur = [r.data, 0]
                steps.append(cur)
            else:
                cur[0] += r.data
        elif r.from_pbx and r.data and cur is not None:
            cur[1] += r.data.count("\r\n\r\n")
    reader, writer = await asyncio.open_connection("127.0.0.1", pbx.ami_port)
    out = await reader.readline()
    challenge = None
    for data, n in steps:
        if challenge and "Key: " in data:
            key = hashlib.md5((challenge + "ceo").encode()).hexdigest()
            data = re.sub(r"Key: [0-9a-f]+", f"Key: {key}", data)
        writer.write(data.encode())
        await writer.drain()
        for _ in range(n):
            msg = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            out += msg
            m = re.search(rb"Challenge: (\d+)", msg)
            challenge = m.group(1).decode() if m else challenge
    out += await asyncio.wait_for(reader.read(), 5)  # every transcript ends with the server closing
    writer.close()
    return _norm_ami(out.decode()), _norm_ami(stream(recs, True).decode())


@pytest.mark.parametrize("name", ["ami_login_and_ping", "ami_login_events_off_md5", "ami_login_wrong_password"])
async def test_ami_login_transcripts(name):
    pbx = _pbx()
    await pbx.start()
    try:
        got, want = await _replay_ami(pbx, load(f"ami/{name}.jsonl"))
    finally:
        await pbx.stop()
    assert got == want


async def test_ami_actions_transcript():
    pbx = _pbx(queues={"support": {"strategy": "ringall", "members": [["PJSIP/agent1002", "Agent 1002"]]}},
               routes={"7052": {"script": "nobody_listens", "port": 1}})
    await pbx.start()
    try:
        for _ in range(3):  # the golden session says "3 calls processed"
            assert (await pbx.call(CallerScript("0223984894", "7052"))).agistatus == "FAILURE"
        got, want = await _replay_ami(pbx, load("ami/ami_actions.jsonl"))
    finally:
        await pbx.stop()
    assert got == want


async def test_ami_slow_client_is_dropped_not_blocking():
    pbx = _pbx(ami_queue_limit=5)
    await pbx.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", pbx.ami_port)
        await reader.readline()
        writer.write(b"Action: Login\r\nUsername: ceo\r\nSecret: ceo\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.05)
        sess = next(iter(pbx._ami.sessions))
        for i in range(50):  # nobody reads: the queue overflows, the PBX must not block
            pbx.bus.emit("UserEvent", "user", [("N", str(i))])
        assert sess.dropped
        writer.close()
    finally:
        await pbx.stop()


# --- event stream shape ------------------------------------------------------------
SHAPE_EVENTS = {"Newchannel", "Newstate", "Newexten", "AGIExecStart", "AGIExecEnd", "DialBegin", "DialState",
                "DialEnd", "BridgeCreate", "BridgeEnter", "BridgeLeave", "BridgeDestroy", "DTMFBegin", "DTMFEnd",
                "HangupRequest", "SoftHangupRequest", "Hangup", "MixMonitorStart", "MixMonitorStop"}


def _shape(msgs, ignore_chan=("PJSIP/agent1001",)):
    return [(m.name, tuple(k for k, _ in m.pairs)) for m in msgs
            if m.kind == "event" and m.name in SHAPE_EVENTS]


async def test_call_lifecycle_event_shape():
    recs = load("agi/exec_dial_agent_answer.jsonl")
    pbx = _pbx(routes={"7010": {"script": "exec_dial_agent_answer", "answer": True}})
    await pbx.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", pbx.ami_port)
    await reader.readline()
    writer.write(b"Action: Login\r\nUsername: ceo\r\nSecret: ceo\r\nEvents: on\r\n\r\n")
    await writer.drain()
    await asyncio.sleep(0.05)
    digits = [(1.8, "3"), (2.2, "4")]  # while bridged, like uac_dtmf_in_bridge
    _, out, res = await _replay_agi(recs, pbx, CallerScript("0223984894", "7010", digits=digits), SCALE)
    data = b""
    while True:  # collect until the stream has been quiet for a while
        try:
            chunk = await asyncio.wait_for(reader.read(65536), 0.3)
        except asyncio.TimeoutError:
            break
        if not chunk:
            break
        data += chunk
    writer.close()
    await pbx.stop()
    got = Parser().feed(data)
    want = Parser(expect_banner=True).feed(stream(load("ami/ami_call_lifecycle.jsonl"), True))
    g, w = _shape(got), _shape(want)
    assert len(w) > 40 and [n for n, _ in g] == [n for n, _ in w]
    assert g == w
    assert res.answered_by == "PJSIP/agent1001" and res.variables["DIALSTATUS"] == "ANSWER"
    # every unsolicited event has Privilege '<class>,all' second
    assert all(m.pairs[1][0] == "Privilege" and m.pairs[1][1].endswith(",all") for m in got if m.kind == "event")


async def test_module_entry_point_prints_ami_port(tmp_path):
    import json
    import sys
    cfg = tmp_path / "lab.json"
    cfg.write_text(json.dumps({"routes": {"0223984894": "madoguchi"}, "sounds": {"hello-world": 1.4},
                               "agents": [{"endpoint": "PJSIP/op1001", "name": "Operator 1001"}]}))
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "lab.pbx", "--agi", "127.0.0.1:4573",
                                                "--ami", "127.0.0.1:0", "--config", str(cfg),
                                                stdout=asyncio.subprocess.PIPE)
    try:
        port = int(await asyncio.wait_for(proc.stdout.readline(), 10))
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await reader.readline() == b"Asterisk Call Manager/11.0.0\r\n"
        writer.close()
    finally:
        proc.terminate()
        await proc.wait()
