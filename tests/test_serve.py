"""``madoguchi serve`` as a real process: calls from the lab PBX, AMI link, clean stop on SIGTERM."""
from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from pathlib import Path

from cti.calls import CallStore
from lab.demo import lab_sounds
from lab.pbx import CallerScript, LabAgent, LabPBX
from provisioning.db import make_engine
from provisioning.site import load_site

SENDAI = Path(__file__).resolve().parents[1] / "lab" / "sites" / "sendai"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wait_port(port: int, timeout: float = 15) -> None:
    for _ in range(int(timeout / 0.05)):
        try:
            _, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port}")


async def test_serve_takes_calls_watches_ami_and_stops_cleanly(tmp_path):
    site = load_site(SENDAI)
    pbx = LabPBX(agi_port=0, time_scale=0.05, ami_users={"madoguchi": "s3cret-ami"},
                 agents=[LabAgent(a.endpoint, ring_delay=2, talk_time=10) for a in site.agents],
                 routes={}, sounds=lab_sounds(site), trunk=site.trunk.id)
    await pbx.start()
    agi_port = free_port()
    pbx.agi_port = agi_port
    pbx.routes = {n.number: f"madoguchi?number={n.number}" for n in site.numbers}
    cfg = tmp_path / "madoguchi.toml"
    cfg.write_text(f'[agi]\nlisten_port = {agi_port}\n[ami]\nport = {pbx.ami_port}\nsecret_env = "T_AMI"\n'
                   f'[storage]\ndata_dir = "data"\n[site]\ndir = "{SENDAI}"\n')
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cli", "-v", "serve", "--config", str(cfg),
        env={**os.environ, "T_AMI": "s3cret-ami"}, stderr=asyncio.subprocess.PIPE)
    try:
        await wait_port(agi_port)
        res = await pbx.call(CallerScript(caller_id="0227770000", dialed="0223984894", digits=[(8.0, "1")]))
        assert res.answered_by
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 15)
    finally:
        if proc.returncode is None:
            proc.kill()
        await pbx.stop()
    log = err.decode()
    assert proc.returncode == 0, log
    assert "AMI: connected" in log and "stopped" in log
    assert "s3cret-ami" not in log
    engine = make_engine(f"sqlite:///{tmp_path / 'data' / 'madoguchi.sqlite3'}")
    row = CallStore(engine).get(res.uniqueid)
    assert row.outcome == "answered" and row.ivr_path == "main:hours>welcome>menu>1>general"
    # AMI's DialEnd told the ACD when the operator picked up: the talk (10 s at x20 = 0.5 s of the
    # server's real clock) is counted as talk, not as waiting (without AMI it would be ~0)
    from acd.queue_log import QueueLogStore
    events = {e.event: e for e in QueueLogStore(engine).list(call_id=res.uniqueid)}
    wait, talk = float(events["COMPLETEAGENT"].data[0]), float(events["COMPLETEAGENT"].data[1])
    assert talk >= 0.4 and wait < talk


async def test_serve_comes_up_without_ami(tmp_path):
    agi_port = free_port()
    cfg = tmp_path / "madoguchi.toml"
    cfg.write_text(f'[agi]\nlisten_port = {agi_port}\n[ami]\nport = {free_port()}\nsecret_env = "T_AMI"\n'
                   f'[storage]\ndata_dir = "data"\n[site]\ndir = "{SENDAI}"\n')
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cli", "serve", "--config", str(cfg),
        env={**os.environ, "T_AMI": "x"}, stderr=asyncio.subprocess.PIPE)
    try:
        await wait_port(agi_port)
        proc.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(proc.communicate(), 15)
    finally:
        if proc.returncode is None:
            proc.kill()
    assert proc.returncode == 0 and "running without the CTI link" in err.decode()
