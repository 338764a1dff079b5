"""Render Asterisk configuration (extensions.conf, pjsip.conf, queues.conf) from config + site.

Everything interpolated into the output passes `_safe`, which only lets through ids, digits
and host names: a comma, semicolon, parenthesis, ``$`` or newline in a value could add
dialplan applications or config lines, so the renderer raises instead of escaping.
SIP passwords are never rendered: pjsip.conf ends with ``#include pjsip_secrets.conf``, which
appends ``password=`` to each ``[auth-<endpoint>](+)`` section. Asterisk refuses to load
pjsip.conf if that file is missing, so a forgotten secrets file fails closed.

extensions.conf has one context per published number, ``[madoguchi-number-<national>]``,
reached from ``[madoguchi-incoming]`` in national and E.164 form. It answers, runs
``AGI(agi://host:port/madoguchi?number=<national>)`` and falls back unless the AGI ended
normally (``AGISTATUS=SUCCESS`` and ``MADOGUCHI_STATUS`` empty): it rings the *static operator
group* (every agent with ``fallback_skill``, "general" unless the caller says otherwise; None
disables it) for ``FALLBACK_RING_SECONDS``, then plays ``madoguchi/all-busy``.

From the site only ``id``, ``languages``, ``numbers`` (``number``, ``e164``, ``mode``),
``agents``, ``directory``, ``trunk`` and, for queues.conf, ``queues`` are read: nothing about
menus or flows, which the AGI server owns.
"""
from __future__ import annotations

import ipaddress
import os
import re
import tempfile
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from provisioning.config import Config, _valid_host
from provisioning.site import Site
from provisioning.values import DIGITS, ENDPOINT, ID, LANG, NATIONAL

TEMPLATES = Path(__file__).resolve().parent / "templates"
_SAFE = re.compile(r"^[A-Za-z0-9_.+-]+$")
_E164 = re.compile(r"^\+81[1-9][0-9]{8,9}$")
QUEUE_PREFIX = "madoguchi-"   # "general" is the reserved settings section of queues.conf
FALLBACK_SKILL = "general"    # agents rung directly when the FastAGI server cannot take a call
FALLBACK_RING_SECONDS = 30    # then the busy message: the caller is never left ringing forever


class RenderError(ValueError):
    pass


def _safe(value):
    """Jinja finalize: reject anything that is not a plain token."""
    if isinstance(value, bool) or value is None:
        raise RenderError(f"refusing to render {value!r} into Asterisk configuration")
    if isinstance(value, int):
        return value
    if not isinstance(value, str) or not _SAFE.match(value):
        raise RenderError(f"refusing to render {value!r} into Asterisk configuration "
                          "(only letters, digits and _ . + - are allowed)")
    return value


def _env() -> Environment:
    return Environment(loader=FileSystemLoader(TEMPLATES), undefined=StrictUndefined, finalize=_safe,
                       autoescape=False, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)


def _require(pattern: re.Pattern, value, what: str) -> None:
    if not isinstance(value, str) or not pattern.match(value):
        raise RenderError(f"invalid {what}: {value!r}")


def _validate(config: Config, site: Site, fallback_skill: str | None) -> str:
    """Re-check everything the templates use (a Site may be built in code, bypassing load_site)."""
    _require(ID, site.id, "site id")
    _require(LANG, site.languages[0] if site.languages else None, "default language")
    if fallback_skill is not None:
        _require(ID, fallback_skill, "fallback skill")
    seen = set()
    for n in site.numbers:
        _require(NATIONAL, n.number, "published number")
        _require(_E164, n.e164, "E.164 number")
        if n.e164 != "+81" + n.number[1:]:
            raise RenderError(f"E.164 number {n.e164!r} is not the number {n.number!r}")
        _require(ID, n.mode, f"mode of {n.number}")   # only compared ("normal" picks the city number)
        if n.number in seen:
            raise RenderError(f"number {n.number!r} is published twice")
        seen.add(n.number)
    names = {"transport-udp", "madoguchi-agent"}
    for a in site.agents:
        _require(ID, a.id, "agent id")
        _require(ENDPOINT, a.endpoint, "agent endpoint")
        if a.endpoint_name in names:
            raise RenderError(f"endpoint name {a.endpoint_name!r} is used twice")
        names.add(a.endpoint_name)
    for q in site.queues.values():
        _require(ID, q.id, "queue id")
    for d in site.directory.values():
        _require(DIGITS, d.trunk_number, f"trunk number of {d.id!r}")
    if site.trunk is not None:
        _require(ID, site.trunk.id, "trunk id")
        if site.trunk.id in names:
            raise RenderError(f"trunk id {site.trunk.id!r} collides with an endpoint")
        if not _valid_host(site.trunk.host):
            raise RenderError(f"invalid trunk host: {site.trunk.host!r}")
    elif site.directory:
        raise RenderError("the directory needs a trunk")
    agi_host = config.asterisk.agi_host or config.agi.listen_host
    try:
        wildcard = ipaddress.ip_address(agi_host).is_unspecified
    except ValueError:
        wildcard = False
    if wildcard:
        raise RenderError(f"agi.listen_host is {agi_host}: set [asterisk] agi_host to the address Asterisk should dial")
    if not _valid_host(agi_host) or ":" in agi_host:
        raise RenderError(f"invalid AGI host for the dialplan: {agi_host!r}")
    return agi_host


def render_asterisk(config: Config, site: Site, out_dir: str | Path, *,
                    fallback_skill: str | None = FALLBACK_SKILL) -> list[Path]:
    """Write extensions.conf, pjsip.conf and queues.conf into *out_dir*; RenderError if any value is unsafe.

    *fallback_skill* picks the static operator group rung when the FastAGI server cannot take a
    call (None: busy message only).
    """
    agi_host = _validate(config, site, fallback_skill)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    queues = []
    for q in site.queues.values():
        members = [a for a in site.agents if q.skill in a.skills]
        queues.append({"name": QUEUE_PREFIX + q.id, "members": members})
    normal = [n for n in site.numbers if n.mode == "normal"]
    operators = [a for a in site.agents if fallback_skill is not None and fallback_skill in a.skills]
    ctx = {
        "site": site, "config": config, "agi_host": agi_host, "agi_port": config.agi.listen_port,
        "operators": operators, "fallback_skill": fallback_skill, "operator_ring": FALLBACK_RING_SECONDS,
        "language": site.languages[0], "numbers": site.numbers, "agents": site.agents,
        "directory": sorted(site.directory.values(), key=lambda d: d.trunk_number),
        "trunk": site.trunk, "queues": queues, "city_number": normal[0].number if normal else None,
    }
    env = _env()
    written = []
    for name in ("extensions.conf", "pjsip.conf", "queues.conf"):
        text = env.get_template(name + ".j2").render(ctx)
        written.append(_write_atomic(out / name, text))
    return written


def _write_atomic(path: Path, text: str) -> Path:
    # Asterisk may reload at any moment; never let it read a half-written file
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
