"""Assembly: config + site -> storage, the ACD and the FastAGI server with its routes."""
from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
from dataclasses import dataclass
from pathlib import Path

from acd.engine import ACD

from .call_handler import CallHandler
from .server import FastAGIServer, ServerLimits

log = logging.getLogger("madoguchi")

ROUTE = "madoguchi"  # the script name in AGI(agi://host:port/madoguchi?number=...)


def database_url(config, *, hide_password: bool = False) -> str:
    """The configured database URL; an SQLite file's folder is created on first use."""
    url = config.database.sqlalchemy_url()
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    return url.render_as_string(hide_password=hide_password)


def caller_key(config) -> bytes:
    """Key for the keyed hash of callers' numbers (the number itself is never stored).

    From MADOGUCHI_CALLER_KEY (hex) or ``<data_dir>/caller.key``, created 0600 on first use.
    """
    env = os.environ.get("MADOGUCHI_CALLER_KEY")
    if env:
        return bytes.fromhex(env)
    path = Path(config.storage.data_dir) / "caller.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    return bytes.fromhex(path.read_text().strip())


@dataclass
class Storage:
    calls: object                 # cti.calls.CallStore
    modes: object                 # cti.modes.ModeLog
    queue_log: object = None      # acd.queue_log.QueueLogStore
    agent_states: object = None   # acd.queue_log.AgentStateStore


def open_storage(config) -> Storage:
    """The call log and the mode log at the configured URL, migrated to the current schema."""
    from acd.queue_log import AgentStateStore, QueueLogStore
    from cti.calls import CallStore
    from cti.modes import ModeLog
    from provisioning.db import make_engine, upgrade
    url = database_url(config)
    upgrade(url)
    engine = make_engine(url)
    return Storage(CallStore(engine, caller_key=caller_key(config)), ModeLog(engine), QueueLogStore(engine),
                   AgentStateStore(engine))


def start_agents(handler, storage) -> None:
    """Agent states survive a restart; on a first start every operator of the site is logged in
    (until operators log in themselves from their phones and the desktop)."""
    now = handler.now().timestamp()
    rows = storage.agent_states.load() if storage.agent_states is not None else []
    if rows:
        handler.acd.restore(rows, now)
    else:
        for agent in handler.acd.agents():
            handler.acd.login(agent.id, now)
    events = handler.acd.drain_events()
    if storage.queue_log is not None:
        storage.queue_log.append(events)


def call_recorder(config, site):
    """Full-call recording when recording keys are configured (MADOGUCHI_RECORDING_KEYS or
    <data_dir>/recording.keys); without keys calls are not recorded, and serve says so."""
    from recorder.crypto import KeyConfigError
    from recorder.store import recorder_from_config
    try:
        return recorder_from_config(config, site.dir)
    except KeyConfigError as e:
        log.warning("recording is OFF: %s", e)
        return None


def speech_listener(config):
    """Speech input when a model folder is configured (the model loads on first use)."""
    if config.speech.model_dir is None:
        return None
    from ivr_prompts.recognizer import SpeechRecognizer
    from .speech import AGIListener
    return AGIListener(SpeechRecognizer(config.speech.model_dir), Path(config.storage.data_dir) / "speech")


def build_server(config, site, storage: Storage, host: str | None = None, port: int | None = None,
                 **handler_options) -> tuple[FastAGIServer, CallHandler]:
    """``handler_options`` go to CallHandler (e.g. ``now`` for a simulated clock)."""
    storage.modes.refresh(force=True)
    handler_options.setdefault("listener", speech_listener(config))
    handler_options.setdefault("recorder", call_recorder(config, site))
    handler = CallHandler(site=site, store=storage.calls, acd=ACD.from_site(site), modes=storage.modes,
                          queue_log=storage.queue_log, agent_states=storage.agent_states, **handler_options)
    start_agents(handler, storage)
    limits = ServerLimits(max_sessions=config.agi.max_sessions, idle_timeout=config.agi.idle_timeout,
                          command_timeout=config.agi.command_timeout)
    server = FastAGIServer({ROUTE: handler},
                           host=config.agi.listen_host if host is None else host,
                           port=config.agi.listen_port if port is None else port, limits=limits)
    return server, handler


async def connect_ami(config):
    """The CTI link to Asterisk's AMI, when a secret is configured; calls are served without it."""
    if config.ami.secret is None:
        log.warning("AMI: no secret configured (%s); running without the CTI link", config.ami.secret_source)
        return None
    from cti.ami import AMIClient
    client = AMIClient(config.ami.host, config.ami.port, username=config.ami.username, secret=config.ami.secret)
    try:
        await client.connect()
    except Exception as e:  # the FastAGI side must come up even when AMI is down
        log.warning("AMI: %s:%d unavailable (%s); running without the CTI link", config.ami.host, config.ami.port, e)
        return None
    log.warning("AMI: connected to %s:%d, %d live channel(s)", config.ami.host, config.ami.port, len(client.channels))
    return client


async def serve_forever(config, site) -> None:
    # signal handlers first: a stop requested while starting up is honoured, not a traceback
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    server, handler = build_server(config, site, open_storage(config))
    if handler.recorder is not None:           # finish what a crash left half-archived
        report = await asyncio.to_thread(handler.recorder.reconcile)
        log.warning("recordings reconciled: %s", report)
    await server.start()
    ami = await connect_ami(config)
    if ami is not None:                        # the moment operators answer, for the ACD and the queue log
        from cti.dial_watch import DialWatch
        handler.dial_watch = DialWatch(lambda: handler.now().timestamp())
        ami.subscribe(handler.dial_watch.on_event, "DialEnd")
    log.warning("madoguchi serving FastAGI on %s:%d (site %s)", server.host, server.port, site.id)
    await stop.wait()
    log.warning("shutting down: no new calls, waiting for running calls")
    await server.stop()
    if ami is not None:
        await ami.close()
    log.warning("stopped")
