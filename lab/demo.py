"""``madoguchi lab run``: the app and the lab PBX together, carrying a short stream of calls.

Both run in this process but talk over real loopback sockets, exactly as the app and a real
Asterisk would: the PBX opens FastAGI sessions to the app's server.
"""
from __future__ import annotations

import asyncio
import random
import secrets
import time
import wave
from datetime import datetime, time as dtime, timedelta, timezone
from zoneinfo import ZoneInfo
from pathlib import Path

import click

from agi.app import ROUTE, build_server, database_url, open_storage
from cti.ami import AMIClient
from ivr_prompts.build import build_prompts
from ivr_prompts.catalog import asterisk_file, sound_name

from .pbx import CallerScript, LabAgent, LabPBX
from .traffic import plan_calls

PROMPT_SECONDS = 6.0   # stand-in length of a prompt for tests that do not build the audio


def bundled_site() -> Path:
    return Path(__file__).parent / "sites" / "sendai"


def lab_sounds(site) -> dict[str, float]:
    """Every sound the site can play, with a plausible length."""
    return {sound_name(p): PROMPT_SECONDS for p in site.prompts}


def lab_recording_key(config) -> None:
    """The lab's own recording key (0600, in its data folder), made on first use."""
    import os
    from recorder.crypto import KEYS_ENV, new_key_line
    path = Path(config.storage.data_dir) / "recording.keys"
    if os.environ.get(KEYS_ENV) or path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(new_key_line("lab1") + "\n")


def wav_seconds(path: Path) -> float:
    with wave.open(str(path)) as w:
        return w.getnframes() / w.getframerate()


class SimClock:
    """Wall-clock time for the app in a lab run: starts at ``start`` and runs ``1/scale`` times
    faster than real time, so calendars and the call log tell the simulated story."""

    def __init__(self, start: datetime, scale: float):
        self.start, self.scale, self.t0 = start, scale, time.monotonic()

    def __call__(self) -> datetime:
        return self.start + timedelta(seconds=(time.monotonic() - self.t0) / self.scale)


def next_weekday_morning(now: datetime, tz: str) -> datetime:
    """10:00 on the next working weekday in the site's zone: the demo runs in opening hours."""
    import jpholiday
    day = now.astimezone(ZoneInfo(tz)).date() + timedelta(days=1)
    while day.weekday() >= 5 or jpholiday.is_holiday(day):
        day += timedelta(days=1)
    return datetime.combine(day, dtime(10, 0), ZoneInfo(tz))


def lab_agents(site, rng: random.Random) -> list[LabAgent]:
    """Operators answer after a few rings and talk one to four minutes; one in ten is away."""
    return [LabAgent(a.endpoint, name=a.name, ring_delay=rng.uniform(2, 8), talk_time=rng.uniform(60, 240),
                     behaviour="noanswer" if rng.random() < 0.1 else "answer") for a in site.agents]


async def run_demo(config, site, *, n_calls: int, seed: int, time_scale: float, start: datetime | None = None,
                   echo=click.echo) -> int:
    rng = random.Random(seed)
    # Real audio: the site's prompts are built (incrementally) and the lab PBX plays those files
    # by channel language, so prompt lengths and keypress timing are those of the real recordings.
    report = build_prompts(site.dir, config.storage.prompts_dir)
    echo(f"prompts: {report.summary()}")
    if not report.ok:
        for key, why in report.failed.items():
            echo(f"  {key}: {why}", err=True)
        return 1
    sounds_dir = Path(config.storage.prompts_dir) / "asterisk"
    lab_recording_key(config)
    storage = open_storage(config)
    store = storage.calls
    clock = SimClock(start or next_weekday_morning(datetime.now(timezone.utc), site.timezone), time_scale)
    server, handler = build_server(config, site, storage, host="127.0.0.1", port=0, now=clock)
    await server.start()
    ami_secret = secrets.token_urlsafe(16)   # lab-only account, lives as long as this run
    pbx = LabPBX(agi_host="127.0.0.1", agi_port=server.port,
                 routes={n.number: f"{ROUTE}?number={n.number}" for n in site.numbers},
                 agents=lab_agents(site, rng), sounds_dir=str(sounds_dir), time_scale=time_scale,
                 trunk=site.trunk.id if site.trunk else "odtrunk", ami_users={"madoguchi": ami_secret})
    await pbx.start()
    # The CTI side watches the same calls over AMI, as it would on a real Asterisk.
    ami = AMIClient("127.0.0.1", pbx.ami_port, username="madoguchi", secret=ami_secret)
    await ami.connect()
    seen = {"Newchannel": 0, "Hangup": 0, "BridgeEnter": 0}

    def count(event):
        seen[event.name] = seen.get(event.name, 0) + 1
    watch = ami.subscribe(count, "Newchannel", "Hangup", "BridgeEnter")
    from cti.dial_watch import DialWatch       # as in serve: AMI tells the ACD when operators answer
    handler.dial_watch = DialWatch(lambda: handler.now().timestamp())
    answers = ami.subscribe(handler.dial_watch.on_event, "DialEnd")
    plan = plan_calls(site, n_calls, rng, prompt_seconds=lambda p: wav_seconds(asterisk_file(sounds_dir, site.languages[0], p)))
    echo(f"madoguchi lab: site {site.name} ({site.id}), {len(site.agents)} operators, {n_calls} calls, "
         f"from {clock().astimezone(ZoneInfo(site.timezone)):%Y-%m-%d %H:%M %Z}, time x{1 / time_scale:.0f}")
    echo(f"  FastAGI server 127.0.0.1:{server.port}   lab PBX AMI 127.0.0.1:{pbx.ami_port}")
    t0 = time.monotonic()

    async def one(pc):
        await asyncio.sleep(pc.at * time_scale)
        res = await pbx.call(CallerScript(caller_id=pc.caller_id, dialed=pc.dialed, digits=pc.digits,
                                          patience=pc.patience, hangup_at=pc.hangup_at))
        echo(f"  [{pc.at:7.1f}s] {pc.dialed} {res.uniqueid:<16} wants {pc.intent:<28} -> "
             f"{res.answered_by or '-':<14} AGISTATUS={res.agistatus}")
        return res
    try:
        results = await asyncio.gather(*(one(pc) for pc in plan))
        await asyncio.sleep(0.2)   # let the last Hangup events arrive
        live = len(ami.channels)
        await asyncio.gather(*handler.finalizing)
    finally:
        await watch.close()
        await answers.close()
        await ami.close()
        await pbx.stop()
        await server.stop()
    ours = {r.uniqueid for r in results}
    rows = {u: row for u in ours if (row := store.get(u)) is not None}
    missing = sorted(ours - rows.keys())
    echo(f"\n{len(rows)} calls recorded in {time.monotonic() - t0:.1f}s (simulated "
         f"{(time.monotonic() - t0) / time_scale / 60:.0f} min):")
    from cli import format_calls
    for line in format_calls(sorted(rows.values(), key=lambda r: r.started_at)):
        echo("  " + line)
    outcomes: dict[str, int] = {}
    for r in rows.values():
        outcomes[r.outcome or "?"] = outcomes.get(r.outcome or "?", 0) + 1
    echo("\noutcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items())))
    echo(f"AMI: {seen['Newchannel']} channels created, {seen['BridgeEnter'] // 2} bridged calls, "
         f"{seen['Hangup']} hangups, {live} channel(s) still live")
    if handler.recorder is not None:
        archived = [r for r in (handler.recorder.get(call_id=u) for u in ours) if r is not None]
        echo(f"recordings: {len(archived)} archived encrypted in {config.storage.recordings_dir} "
             f"(madoguchi recordings search --user <admin>)")
    echo(f"call log: {database_url(config, hide_password=True)}")
    echo("look again with: madoguchi calls list" + (f" --config {config.path}" if config.path else ""))
    if missing:
        echo(f"ERROR: {len(missing)} call(s) reached the PBX but not the call log: {missing}", err=True)
        return 1
    return 0
