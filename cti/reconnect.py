"""Reconnecting a PBX link (AMI, ESL inbound): exponential backoff with jitter, reset after a
link that stayed up, stop for good on an authentication failure.

The client provides ``_closing``, ``_link`` (with ``lost``, a future resolved with the reason,
and ``opened_at``), ``state``, ``backoff = (base, cap)``, ``host``, ``port``, ``last_error`` and
``async _open(initial=False)``.
"""
from __future__ import annotations

import asyncio
import logging
import random
import time

log = logging.getLogger("madoguchi.cti")

STABLE_LINK_S = 10.0  # a link that lived this long resets the backoff (avoid a flap loop at base delay)


async def supervise(client, name: str, auth_error: type[Exception], transient: tuple[type[Exception], ...],
                    on_auth_failed) -> None:
    attempt = 0
    while not client._closing:
        link = client._link
        reason = await asyncio.shield(link.lost)
        if client._closing:
            return
        if time.monotonic() - link.opened_at >= STABLE_LINK_S:
            attempt = 0
        client.state = "reconnecting"
        while not client._closing:
            base, cap = client.backoff
            d = min(cap, base * (2 ** attempt))
            delay = random.uniform(d / 2, d)
            attempt += 1
            log.warning("%s link to %s:%d lost (%s); reconnect attempt %d in %.2fs",
                        name, client.host, client.port, reason, attempt, delay)
            await asyncio.sleep(delay)
            try:
                await client._open(initial=False)
                break
            except auth_error as e:
                client.state, client.last_error = "auth_failed", e
                on_auth_failed(e)
                return
            except transient as e:
                client.last_error = e
                reason = f"{type(e).__name__}: {e}"
