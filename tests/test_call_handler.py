"""Calls end to end: lab PBX -> FastAGI -> flow engine -> call log, including the failure paths."""
from __future__ import annotations

import asyncio
import socket
import struct
from pathlib import Path

import pytest

from agi.app import ROUTE, build_server
from cti.calls import CallStore
from lab.demo import lab_sounds
from lab.pbx import CallerScript, LabAgent, LabPBX
from provisioning.config import load_config
from provisioning.db import make_engine, upgrade
from provisioning.site import load_site

SENDAI = Path(__file__).resolve().parents[1] / "lab" / "sites" / "sendai"
SCALE = 0.02   # simulated seconds run 50x faster: enough margin for a loaded CI machine


@pytest.fixture(scope="module")
def site():
    return load_site(SENDAI)


@pytest.fixture
def engine(tmp_path):
    url = f"sqlite:///{tmp_path / 'calls.sqlite3'}"
    upgrade(url)
    return make_engine(url)


@pytest.fixture
def store(engine):
    return CallStore(engine, caller_key=b"k" * 32)


class Lab:
    def __init__(self, site, store, agents):
        self.site, self.store, self.agents = site, store, agents

    async def __aenter__(self):
        self.server, self.handler = build_server(load_config(None), self.site, self.store, port=0)
        await self.server.start()
        self.pbx = LabPBX(agi_port=self.server.port, time_scale=SCALE, agents=self.agents,
                          routes={n.number: f"{ROUTE}?number={n.number}" for n in self.site.numbers},
                          sounds=lab_sounds(self.site), trunk=self.site.trunk.id)
        await self.pbx.start()
        return self

    async def __aexit__(self, *exc):
        await self.pbx.stop()
        await self.server.stop(grace=1)

    async def call(self, **kw):
        kw.setdefault("caller_id", "0221234567")
        kw.setdefault("dialed", "0223984894")
        return await self.pbx.call(CallerScript(**kw))


def agents(site, **behaviour):
    return [LabAgent(a.endpoint, ring_delay=2, talk_time=30, behaviour=behaviour.get(a.id, "answer"))
            for a in site.agents]


async def test_answered_call_is_logged_with_path_agent_and_no_clear_caller_number(site, store):
    async with Lab(site, store, agents(site)) as lab:
        res = await lab.call(digits=[(3.0, "1")])
    row = store.get(res.uniqueid)
    assert res.answered_by and res.dialstatus == "ANSWER"
    assert (row.dialed, row.ivr_path, row.queue, row.outcome) == ("0223984894", "main>1>general", "general", "answered")
    assert site.agents[[a.id for a in site.agents].index(row.agent)].endpoint == res.answered_by
    assert row.ended_at is not None and row.started_at <= row.ended_at
    assert "0221234567" not in repr(row.__dict__)        # only a keyed hash of the caller is kept
    # the AGI trace shows the menu prompt in Japanese, then the Dial to the operator
    sent = [line for _, d, line in res.trace if d == "app->asterisk"]
    assert sent[0] == "ANSWER" and sent[1].startswith("GET DATA madoguchi/ja/main-menu 5000 1")
    assert any(line.startswith(f"EXEC Dial {res.answered_by},") for line in sent)


async def test_caller_hangs_up_in_the_menu(site, store):
    async with Lab(site, store, agents(site)) as lab:
        res = await lab.call(hangup_at=2.0)
    row = store.get(res.uniqueid)
    assert res.agistatus == "HANGUP"
    assert (row.outcome, row.agent, row.ivr_path) == ("abandoned", None, "main")
    assert row.ended_at is not None


async def test_unanswered_operator_is_skipped_for_the_next(site, store):
    general = [a for a in site.agents if "general" in a.skills]
    behaviour = {general[0].id: "noanswer"}
    async with Lab(site, store, agents(site, **behaviour)) as lab:
        res = await lab.call(digits=[(3.0, "1")])
    sent = [line for _, d, line in res.trace if d == "app->asterisk" and line.startswith("EXEC Dial")]
    assert len(sent) == 2 and general[0].endpoint in sent[0]
    assert store.get(res.uniqueid).outcome == "answered" and res.answered_by != general[0].endpoint


async def test_caller_gives_up_while_every_operator_is_away(site, store):
    away = {a.id: "noanswer" for a in site.agents}
    async with Lab(site, store, agents(site, **away)) as lab:
        res = await lab.call(digits=[(3.0, "1")], patience=60)
    row = store.get(res.uniqueid)
    assert res.answered_by is None and res.agistatus == "HANGUP"
    assert (row.queue, row.outcome, row.agent) == ("general", "abandoned", None)


@pytest.mark.parametrize("how", ["reset", "eof"])
async def test_pbx_link_drop_mid_call_still_closes_the_record(site, store, how):
    """Asterisk dies (RST) or closes the socket while the menu prompt is playing."""
    server, handler = build_server(load_config(None), site, store, port=0)
    await server.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"agi_network: yes\nagi_network_script: madoguchi?number=0223984894\n"
                 b"agi_channel: PJSIP/caller-0000002a\nagi_uniqueid: 1795311999.42\n"
                 b"agi_callerid: 0229990000\nagi_dnid: 0223984894\n\n")
    assert await reader.readline() == b"ANSWER\n"
    writer.write(b"200 result=0\n")
    assert (await reader.readline()).startswith(b"GET DATA madoguchi/ja/main-menu")
    if how == "reset":
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.close()
    for _ in range(100):
        row = store.get("1795311999.42")
        if row is not None and row.ended_at is not None:
            break
        await asyncio.sleep(0.02)
    await server.stop(grace=1)
    assert row.outcome == "abandoned" and row.ivr_path == "main" and row.hangup_cause
    assert not handler.live and server.active == 0


async def test_concurrent_calls_never_get_the_same_operator(site, store):
    async with Lab(site, store, agents(site)) as lab:
        results = await asyncio.gather(*(lab.call(digits=[(3.0, "1")], caller_id=f"02200000{i:02d}")
                                         for i in range(6)))
    answered = [r.answered_by for r in results if r.answered_by]
    general = [a for a in site.agents if "general" in a.skills]
    assert len(answered) == min(6, len(general)) and len(set(answered)) == len(answered)


async def test_a_failing_call_log_never_drops_the_call(site, store, engine, caplog):
    """The database loses its table under load: the caller is still answered and routed."""
    from sqlalchemy import text
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE calls"))
    async with Lab(site, store, agents(site)) as lab:
        res = await lab.call(digits=[(3.0, "1")])
    assert res.answered_by and res.dialstatus == "ANSWER"
    assert any("call log: start failed" in r.getMessage() for r in caplog.records)


async def test_caller_who_never_chooses_is_logged_as_no_input(site, store):
    retries = site.menus["main"].retries
    presses = [(1.5 + 1.5 * i, "7") for i in range(retries + 1)]   # an unassigned key, every time
    async with Lab(site, store, agents(site)) as lab:
        res = await lab.call(digits=presses)
    row = store.get(res.uniqueid)
    assert (row.outcome, row.queue, row.ivr_path) == ("no_input", None, "main")
    sent = [line for _, d, line in res.trace if d == "app->asterisk"]
    assert sum(line.startswith("GET DATA madoguchi/ja/main-menu") for line in sent) == retries + 1
