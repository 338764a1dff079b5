"""Calls end to end: lab PBX -> FastAGI -> flow engine -> call log, including the failure paths."""
from __future__ import annotations

import asyncio
import socket
import struct
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo
from pathlib import Path

import pytest

from agi.app import ROUTE, Storage, build_server
from cti.calls import CallStore
from cti.modes import ModeLog
from lab.demo import SimClock, lab_sounds
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


@pytest.fixture
def modes(engine):
    return ModeLog(engine)


JST = ZoneInfo("Asia/Tokyo")
OPEN = datetime(2026, 11, 24, 10, 0, tzinfo=JST)   # a Tuesday morning


class Lab:
    def __init__(self, site, store, agents, modes, now=OPEN, queue_log=None):
        self.site, self.store, self.agents, self.modes, self.now = site, store, agents, modes, now
        self.queue_log = queue_log

    async def __aenter__(self):
        self.server, self.handler = build_server(load_config(None), self.site,
                                                 Storage(self.store, self.modes, self.queue_log),
                                                 port=0, now=SimClock(self.now, SCALE), tick_seconds=0.02)
        await self.server.start()
        self.pbx = LabPBX(agi_port=self.server.port, time_scale=SCALE, agents=self.agents,
                          routes={n.number: f"{ROUTE}?number={n.number}" for n in self.site.numbers},
                          sounds=lab_sounds(self.site), trunk=self.site.trunk.id)
        await self.pbx.start()
        return self

    async def __aexit__(self, *exc):
        await self.pbx.stop()
        await self.server.stop(grace=1)

    def t(self):
        return self.handler.now().timestamp()

    async def call(self, **kw):
        kw.setdefault("caller_id", "0221234567")
        kw.setdefault("dialed", "0223984894")
        return await self.pbx.call(CallerScript(**kw))


def agents(site, **behaviour):
    return [LabAgent(a.endpoint, ring_delay=2, talk_time=30, behaviour=behaviour.get(a.id, "answer"))
            for a in site.agents]


async def test_answered_call_is_logged_with_path_agent_and_no_clear_caller_number(site, store, modes):
    async with Lab(site, store, agents(site), modes) as lab:
        res = await lab.call(digits=[(8.0, "1")])
    row = store.get(res.uniqueid)
    assert res.answered_by and res.dialstatus == "ANSWER"
    assert (row.dialed, row.ivr_path, row.queue, row.outcome) == \
        ("0223984894", "main:hours>welcome>menu>1>general", "general", "answered")
    assert site.agents[[a.id for a in site.agents].index(row.agent)].endpoint == res.answered_by
    assert row.ended_at is not None and row.started_at <= row.ended_at
    assert "0221234567" not in repr(row.__dict__)        # only a keyed hash of the caller is kept
    # the AGI trace: Japanese channel, recording notice, welcome; "1" pressed during the welcome
    # is taken by the menu without asking again, then the Dial
    sent = [line for _, d, line in res.trace if d == "app->asterisk"]
    assert sent[:4] == ["ANSWER", "SET VARIABLE CHANNEL(language) ja", 'STREAM FILE madoguchi/recording-notice ""',
                        'STREAM FILE madoguchi/welcome 0123456789*#']
    assert sent[4].startswith(f"EXEC Dial {res.answered_by},")
    assert any(line.startswith(f"EXEC Dial {res.answered_by},") for line in sent)
    assert OPEN <= row.started_at < OPEN + timedelta(minutes=2)     # the lab clock runs 50x


async def test_caller_hangs_up_in_the_menu(site, store, modes):
    async with Lab(site, store, agents(site), modes) as lab:
        res = await lab.call(hangup_at=9.0)          # during the welcome prompt
    row = store.get(res.uniqueid)
    assert res.agistatus == "HANGUP"
    assert (row.outcome, row.agent, row.ivr_path) == ("abandoned", None, "main:hours>welcome")
    assert row.ended_at is not None


async def test_unanswered_operator_is_skipped_for_the_next(site, store, modes):
    general = [a for a in site.agents if "general" in a.skills]
    behaviour = {general[0].id: "noanswer"}
    async with Lab(site, store, agents(site, **behaviour), modes) as lab:
        res = await lab.call(digits=[(8.0, "1")])
    sent = [line for _, d, line in res.trace if d == "app->asterisk" and line.startswith("EXEC Dial")]
    assert len(sent) == 2 and general[0].endpoint in sent[0]
    assert store.get(res.uniqueid).outcome == "answered" and res.answered_by != general[0].endpoint


async def test_caller_gives_up_while_every_operator_is_away(site, store, modes):
    away = {a.id: "noanswer" for a in site.agents}
    async with Lab(site, store, agents(site, **away), modes) as lab:
        res = await lab.call(digits=[(8.0, "1")], patience=60)
    row = store.get(res.uniqueid)
    assert res.answered_by is None and res.agistatus == "HANGUP"
    assert (row.queue, row.outcome, row.agent) == ("general", "abandoned", None)


@pytest.mark.parametrize("how", ["reset", "eof"])
async def test_pbx_link_drop_mid_call_still_closes_the_record(site, store, modes, how):
    """Asterisk dies (RST) or closes the socket while the menu prompt is playing."""
    server, handler = build_server(load_config(None), site, Storage(store, modes), port=0, now=SimClock(OPEN, SCALE))
    await server.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"agi_network: yes\nagi_network_script: madoguchi?number=0223984894\n"
                 b"agi_channel: PJSIP/caller-0000002a\nagi_uniqueid: 1795311999.42\n"
                 b"agi_callerid: 0229990000\nagi_dnid: 0223984894\n\n")
    while not (line := await reader.readline()).startswith(b"GET DATA"):   # answer, notice, welcome
        writer.write(b"200 result=1\n" if line.startswith(b"SET") else b"200 result=0 endpos=48000\n")
    assert line.startswith(b"GET DATA madoguchi/main-menu")
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
    assert row.outcome == "abandoned" and row.ivr_path == "main:hours>welcome>menu" and row.hangup_cause
    assert not handler.live and server.active == 0


async def test_concurrent_calls_never_get_the_same_operator(site, store, modes):
    async with Lab(site, store, agents(site), modes) as lab:
        results = await asyncio.gather(*(lab.call(digits=[(8.0, "1")], caller_id=f"02200000{i:02d}")
                                         for i in range(6)))
    answered = [r.answered_by for r in results if r.answered_by]
    general = [a for a in site.agents if "general" in a.skills]
    assert len(answered) == min(6, len(general)) and len(set(answered)) == len(answered)


async def test_a_failing_call_log_never_drops_the_call(site, store, modes, engine, caplog):
    """The database loses its table under load: the caller is still answered and routed."""
    from sqlalchemy import text
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE calls"))
    async with Lab(site, store, agents(site), modes) as lab:
        res = await lab.call(digits=[(8.0, "1")])
    assert res.answered_by and res.dialstatus == "ANSWER"
    assert any("call log: start failed" in r.getMessage() for r in caplog.records)


async def test_caller_who_never_chooses_a_valid_key_reaches_the_fallback(site, store, modes):
    menu = site.flows["main"].nodes["menu"]
    # the menu starts after the notice and the welcome (6 s each); each wrong key costs the menu
    # prompt's start plus the 6 s "invalid" message
    presses = [(13.5 + 7.1 * i, "7") for i in range(menu.retries + 1)]
    async with Lab(site, store, agents(site), modes) as lab:
        res = await lab.call(digits=presses)
    row = store.get(res.uniqueid)
    sent = [line for _, d, line in res.trace if d == "app->asterisk"]
    assert sum(line.startswith("GET DATA madoguchi/main-menu") for line in sent) == menu.retries + 1
    assert sent.count('STREAM FILE madoguchi/invalid ""') == menu.retries
    assert row.ivr_path == "main:hours>welcome>menu>fallback>general" and row.outcome == "answered"


@pytest.mark.parametrize("when, expect", [
    (datetime(2026, 11, 24, 19, 59, tzinfo=JST), "answered"),
    (datetime(2026, 11, 24, 20, 1, tzinfo=JST), "closed"),
    (datetime(2026, 11, 28, 12, 0, tzinfo=JST), "answered"),    # Saturday
    (datetime(2026, 5, 6, 17, 30, tzinfo=JST), "closed"),       # substitute holiday
    (datetime(2026, 12, 30, 17, 30, tzinfo=JST), "closed"),
    (datetime(2027, 1, 4, 17, 30, tzinfo=JST), "answered"),
])
async def test_calendar_on_the_emulator(site, store, modes, when, expect):
    async with Lab(site, store, agents(site), modes, now=when) as lab:
        res = await lab.call(digits=[(8.0, "1")])
    row = store.get(res.uniqueid)
    assert row.outcome == expect
    sent = [line for _, d, line in res.trace if d == "app->asterisk"]
    if expect == "closed":
        assert 'STREAM FILE madoguchi/after-hours ""' in sent and not any("Dial" in x for x in sent)


async def test_modes_switch_without_restart_and_are_recorded(site, store, modes):
    async with Lab(site, store, agents(site), modes) as lab:
        modes.set_mode("emergency", by="sv-sato", reason="power cut")
        suspended = await lab.call(digits=[(8.0, "1")])
        modes.set_mode("normal", by="sv-sato")
        modes.set_congestion(True, by="sv-sato")
        congested = await lab.call(digits=[(8.0, "1")])
        modes.set_congestion(False, by="sv-sato")
        modes.set_mode("disaster", by="city-hq", reason="earthquake")
        disaster = await lab.call(dialed="0223985905", digits=[(8.0, "1")])
    assert store.get(suspended.uniqueid).outcome == "suspended"
    sent = [line for _, d, line in congested.trace if d == "app->asterisk"]
    assert 'STREAM FILE madoguchi/congestion ""' in sent and congested.answered_by
    assert store.get(disaster.uniqueid).ivr_path.startswith("disaster:mode>greeting")
    history = modes.history()
    assert [(r.kind, r.value, r.set_by) for r in history][:2] == [("mode", "disaster", "city-hq"),
                                                                   ("congestion", "off", "sv-sato")]
    assert history[-1].reason == "power cut"


async def test_congestion_is_entered_and_left_automatically(site, store, modes):
    async with Lab(site, store, agents(site), modes) as lab:
        lab.handler.congestion.max_waiting = 3
        for agent in lab.handler.acd.agents():         # every operator is on a break
            lab.handler.acd.pause(agent.id, lab.handler.now().timestamp(), reason="meeting")
        calls = [asyncio.ensure_future(lab.call(digits=[(8.0, "1")], patience=40, caller_id=f"0220000{i:03d}"))
                 for i in range(3)]
        await asyncio.gather(*calls)
        await asyncio.sleep(0.1)
    changes = [(r.value, r.set_by) for r in modes.history() if r.kind == "congestion"]
    assert changes[::-1] == [("on", "auto"), ("off", "auto")]


async def test_hangup_mid_prompt_leaves_no_traceback_and_frees_the_session(site, store, modes, caplog):
    async with Lab(site, store, agents(site), modes) as lab:
        res = await lab.call(hangup_at=3.0)          # during the recording notice
        await asyncio.sleep(0.05)
        assert lab.server.active == 0 and not lab.handler.live and not lab.server._tasks
    assert res.agistatus == "HANGUP" and store.get(res.uniqueid).outcome == "abandoned"
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL") or r.exc_info]


async def test_menu_timeout_on_the_emulator(site, store, modes):
    menu = site.flows["main"].nodes["menu"]
    async with Lab(site, store, agents(site), modes) as lab:
        res = await lab.call()                        # never presses anything
    sent = [line for _, d, line in res.trace if d == "app->asterisk"]
    assert sum(line.startswith("GET DATA madoguchi/main-menu") for line in sent) == menu.retries + 1
    assert sent.count('STREAM FILE madoguchi/no-input ""') == menu.retries
    assert store.get(res.uniqueid).ivr_path == "main:hours>welcome>menu>fallback>general" and res.answered_by


@pytest.mark.parametrize("key, lang", [("1", "ja"), ("2", "en"), ("3", "zh"), ("4", "ko"), ("5", "vi"), ("6", "ne")])
async def test_each_language_on_the_emulator(site, store, modes, key, lang):
    # 9 during the welcome, the language key during its menu, then 1 during the main menu again
    async with Lab(site, store, agents(site), modes) as lab:
        res = await lab.call(digits=[(8.0, "9"), (11.0, key), (17.0, "1")])   # mid-prompt: margin both sides
    sent = [line for _, d, line in res.trace if d == "app->asterisk"]
    assert f"SET VARIABLE CHANNEL(language) {lang}" in sent and res.variables.get("CHANNEL(language)", lang) == lang
    row = store.get(res.uniqueid)
    assert (row.language, row.outcome) == (lang, "answered")
    assert row.ivr_path == f"main:hours>welcome>menu>9>language>lang:{lang}>menu>1>general"


@pytest.mark.parametrize("hours_in, expect", [(10, "answered"), (73, "closed"), (None, "closed")])
async def test_disaster_mode_window_on_the_emulator(site, store, modes, hours_in, expect):
    night = datetime(2026, 11, 25, 3, 0, tzinfo=JST)
    if hours_in is not None:
        modes.set_mode("disaster", by="city-hq", at=night - timedelta(hours=hours_in))
    async with Lab(site, store, agents(site), modes, now=night) as lab:
        res = await lab.call(digits=[(8.0, "1")])
    assert store.get(res.uniqueid).outcome == expect


# ------------------------------------------------------------------ ACD on the emulator

@pytest.fixture
def queue_log(engine):
    from acd.queue_log import QueueLogStore
    return QueueLogStore(engine)


async def test_a_vietnamese_caller_reaches_the_one_vietnamese_speaker(site, store, modes):
    speakers = [a for a in site.agents if "vi" in a.languages]
    assert len(speakers) == 1
    async with Lab(site, store, agents(site), modes) as lab:
        res = await lab.call(digits=[(8.0, "9"), (11.0, "5"), (17.0, "1")])
    assert res.answered_by == speakers[0].endpoint and store.get(res.uniqueid).language == "vi"


@pytest.mark.parametrize("available, stage, after", [
    ("op1007", "widen", "widen_after"),      # disaster skill below min_level 5: from the widening on
    ("op1004", "open", "open_after"),        # no disaster skill: the general group, once it opens
])
async def test_disaster_queue_overflows_by_wait(site, store, modes, queue_log, available, stage, after):
    queue = site.queues["disaster"]
    async with Lab(site, store, agents(site), modes, queue_log=queue_log) as lab:
        for a in site.agents:
            if a.id != available:
                lab.handler.acd.pause(a.id, lab.t(), reason="meeting")
        res = await lab.call(dialed="0223985905", digits=[(8.0, "1")])
    assert res.answered_by == f"PJSIP/{available}"
    log = queue_log.list(call_id=res.uniqueid)
    connect = next(e for e in log if e.event == "CONNECT")
    assert float(connect.data[0]) >= getattr(queue, after)    # waited until the rule let this agent in
    assert ("OVERFLOW", stage) in [(e.event, e.data[0]) for e in log]


async def test_ring_no_answer_moves_on_and_pauses_the_agent(site, store, modes, queue_log):
    general = [a for a in site.agents if "general" in a.skills]
    miss = site.queues["general"].pause_after_misses
    async with Lab(site, store, agents(site, **{general[0].id: "noanswer"}), modes, queue_log=queue_log) as lab:
        for a in general[1:]:
            lab.handler.acd.pause(a.id, lab.t(), reason="meeting")
        keep = general[1]
        results = []
        for i in range(miss):
            lab.handler.acd.unpause(keep.id, lab.t())
            results.append(await lab.call(digits=[(8.0, "1")], caller_id=f"022111000{i}"))
            lab.handler.acd.pause(keep.id, lab.t(), reason="meeting")
        state = lab.handler.acd.agent(general[0].id)
    assert all(r.answered_by == keep.endpoint for r in results)
    assert (state.state, state.reason) == ("break", "missed")
    events = [e.event for e in queue_log.list(agent=general[0].id)]
    assert events.count("RINGNOANSWER") == miss and "PAUSE" in events


async def test_an_abandon_is_logged_with_its_wait(site, store, modes, queue_log):
    async with Lab(site, store, agents(site), modes, queue_log=queue_log) as lab:
        for a in site.agents:
            lab.handler.acd.pause(a.id, lab.t(), reason="meeting")
        res = await lab.call(digits=[(8.0, "1")], patience=60)
        await asyncio.sleep(0.1)
    abandon = [e for e in queue_log.list(call_id=res.uniqueid) if e.event == "ABANDON"]
    assert len(abandon) == 1 and 30 <= float(abandon[0].data[2]) <= 60
    assert store.get(res.uniqueid).outcome == "abandoned"
