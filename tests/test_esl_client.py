"""The inbound ESL client against a replayed FreeSWITCH, the emulator and broken servers."""
from __future__ import annotations

import asyncio
import logging
import time

import pytest

import golden
from agi import esl_protocol as P
from agi.esl_server import ESLLimits, ESLServer
from cti.esl_client import ESLAuthError, ESLClient, ESLDisconnected, ESLTimeout
from lab.esl_emulator import Caller, LabFreeSWITCH

FS = golden.FREESWITCH


class Secret:
    def __init__(self, v):
        self._v = v

    def reveal(self):
        return self._v


def recorded_answers(rel: str) -> dict[bytes, bytes]:
    """Recorded command -> the FreeSWITCH bytes that followed it (first occurrence)."""
    out: dict[bytes, bytes] = {}
    cur = None
    banner = b""
    for r in golden.load(rel, FS):
        if not r.from_pbx and r.data:
            cur = r.raw
            out.setdefault(cur, b"")
        elif r.from_pbx and r.data:
            if cur is None:
                banner += r.raw
            elif out[cur] is not None:
                out[cur] += r.raw
    out[b""] = banner
    return out


async def replay_server(rel: str, seen: list):
    answers = recorded_answers(rel)

    async def handle(reader, writer):
        writer.write(answers[b""])
        parser = P.CommandParser()
        while data := await reader.read(65536):
            for line, hdrs in parser.feed(data):
                raw = (line + "\n" + "".join(f"{k}: {v}\n" for k, v in hdrs) + "\n").encode()
                seen.append(raw)
                writer.write(answers.get(raw, P.reply("-ERR command not found")))
        writer.close()
    return await asyncio.start_server(handle, "127.0.0.1", 0)


async def test_replayed_inbound_tour():
    seen = []
    srv = await replay_server("inbound/inbound_auth.jsonl", seen)
    port = srv.sockets[0].getsockname()[1]
    c = ESLClient(port=port, password=Secret("ClueCon"))
    await c.connect()
    assert seen[:2] == [b"auth ClueCon\n\n", b"event plain BACKGROUND_JOB\n\n"]
    assert (await c.api("status")).startswith("UP 0 years")
    assert await c.api("version") == "FreeSWITCH Version 1.10.12-release~64bit ( 64bit)\n"
    assert await c.api("show channels") == "\n0 total.\n"
    assert await c.api("global_getvar domain") == "127.0.0.1"
    assert await c.api("uuid_getvar 00000000-0000-0000-0000-000000000000 foo") == "-ERR No such channel!\n"
    out = await c.bgapi("status", job_uuid="11111111-2222-3333-4444-555555555555", timeout=3)
    assert out.startswith("UP 0 years") and len(out) == 337
    await c.close()
    assert seen[-1] == b"exit\n\n"
    srv.close()


async def test_wrong_password_is_refused_once_and_never_retried(caplog):
    async with LabFreeSWITCH("ClueCon") as fs:
        c = ESLClient(port=fs.port, password="WrongPassword", backoff=(0.01, 0.02))
        with caplog.at_level(logging.DEBUG):
            with pytest.raises(ESLAuthError):
                await c.connect()
        assert c.state == "auth_failed" and "WrongPassword" not in caplog.text and "***" in repr(c)
        await asyncio.sleep(0.1)
        assert c.state == "auth_failed"


async def test_api_bgapi_events_and_filters_against_the_emulator():
    async with LabFreeSWITCH("ClueCon", time_scale=50) as fs:
        c = ESLClient(port=fs.port, password=Secret("ClueCon"),
                      events=["CHANNEL_CREATE", "CHANNEL_ANSWER", "CHANNEL_HANGUP_COMPLETE"])
        await c.connect()
        sub = c.subscribe("CHANNEL_*")
        assert (await c.api("version")).startswith("FreeSWITCH Version 1.10.12")
        assert await c.bgapi("nosuchcommand", timeout=2) == "-ERR nosuchcommand Command not found!\n"
        assert (await c.bgapi("status", timeout=2)).startswith("UP 0 years")

        async def route(s):
            await s.answer()
            await s.hangup()
        server = await ESLServer(fallback=route, port=0).start()
        res = await fs.call("127.0.0.1", server.port, Caller())
        names = []
        while sub._q:
            names.append((await sub.get(1)).name)
        assert names == ["CHANNEL_CREATE", "CHANNEL_ANSWER", "CHANNEL_HANGUP_COMPLETE"]
        # a Unique-ID filter must not hide our own bgapi results
        await c.add_filter("Unique-ID", res.uuid)
        assert ("Event-Name", "BACKGROUND_JOB") in c.filters
        assert (await c.bgapi("version", timeout=2)).startswith("FreeSWITCH")
        await server.stop()
        await c.close()


@pytest.mark.parametrize("verb", ["api", "bgapi"])
async def test_every_wait_times_out_when_freeswitch_stops_answering(verb):
    async with LabFreeSWITCH() as fs:
        c = ESLClient(port=fs.port, password="ClueCon", command_timeout=0.2)
        await c.connect()
        fs.stall = {verb}
        t0 = time.monotonic()
        with pytest.raises(ESLTimeout):
            await (c.api("status") if verb == "api" else c.bgapi("status", timeout=0.3))
        assert time.monotonic() - t0 < 1
        await c.close()


async def test_background_job_that_never_comes_times_out():
    async with LabFreeSWITCH() as fs:
        c = ESLClient(port=fs.port, password="ClueCon")
        await c.connect()
        fs.silent_jobs = True
        with pytest.raises(ESLTimeout):
            await c.bgapi("status", timeout=0.3)
        assert not c._jobs
        await c.close()


async def test_silent_server_times_out_connect():
    async def handle(r, w):
        await asyncio.sleep(5)
    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    c = ESLClient(port=srv.sockets[0].getsockname()[1], password="x", connect_timeout=0.3)
    t0 = time.monotonic()
    with pytest.raises(ESLTimeout):
        await c.connect()
    assert time.monotonic() - t0 < 2
    srv.close()


async def test_auth_without_reply_times_out():
    async with LabFreeSWITCH() as fs:
        fs.stall = {"auth"}
        c = ESLClient(port=fs.port, password="ClueCon", connect_timeout=0.3)
        with pytest.raises(ESLTimeout):
            await c.connect()


async def test_drop_fails_in_flight_then_reconnects_with_subscriptions():
    async with LabFreeSWITCH() as fs:
        c = ESLClient(port=fs.port, password="ClueCon", backoff=(0.05, 0.1), command_timeout=3,
                      events=["CHANNEL_CREATE"])
        await c.connect()
        fs.stall = {"api"}
        pending = asyncio.ensure_future(c.api("status"))
        await asyncio.sleep(0.1)
        fs.drop_inbound()
        with pytest.raises(ESLDisconnected):
            await pending
        with pytest.raises(ESLDisconnected):
            await c.api("status")                      # down: fails at once, not queued
        fs.stall = set()
        for _ in range(50):
            if c.connected:
                break
            await asyncio.sleep(0.05)
        assert c.connected and c.reconnects == 1
        assert (await c.api("version")).startswith("FreeSWITCH")
        conn = next(iter(fs._inbound))
        assert "CHANNEL_CREATE" in conn.events and "BACKGROUND_JOB" in conn.events
        await c.close()


async def test_peer_closes_mid_message_and_oversized_body():
    async def handle(reader, writer):
        writer.write(P.frame([("Content-Type", "auth/request")]))
        parser = P.CommandParser()
        while data := await reader.read(65536):
            for line, _ in parser.feed(data):
                if line.startswith("auth") or line.startswith("event"):
                    writer.write(P.reply("+OK accepted"))
                elif line == "api half":
                    writer.write(b"Content-Type: api/response\nContent-Length: 100\n\nUP")
                    await writer.drain()
                    writer.close()
                    return
                elif line == "api big":
                    writer.write(P.api_response("x" * 5000))
    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    for cmd in ("half", "big"):
        c = ESLClient(port=port, password="x", max_body=1024, backoff=(5, 5))
        await c.connect()
        with pytest.raises(ESLDisconnected):
            await c.api(cmd)
        assert not c.connected
        await c.close()
    srv.close()


async def test_header_injection_is_refused_before_sending():
    async with LabFreeSWITCH() as fs:
        c = ESLClient(port=fs.port, password="ClueCon")
        await c.connect()
        for bad in ("status\n\nexit", "status\r\nJob-UUID: x"):
            with pytest.raises(P.ESLUsageError):
                await c.api(bad)
            with pytest.raises(P.ESLUsageError):
                await c.bgapi(bad)
        with pytest.raises(P.ESLUsageError):
            await c.add_filter("Unique-ID", "x\nexit")
        assert c.connected and (await c.api("version")).startswith("FreeSWITCH")
        await c.close()
