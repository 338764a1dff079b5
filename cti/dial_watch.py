"""The moment an operator answers, learned from the PBX's events.

A FastAGI ``EXEC Dial`` returns only when the whole conversation is over, so the app cannot see
*when* the operator picked up from the AGI side. AMI tells it: ``DialEnd`` with
``DialStatus: ANSWER`` on the caller's ``Uniqueid`` (golden ami_call_lifecycle). The call handler
waits on ``answered(uniqueid)`` while the Dial runs; without an AMI link it falls back to the
Dial's own result.
"""
from __future__ import annotations

import asyncio


class DialWatch:
    def __init__(self, clock):
        self._clock = clock
        self._waiters: dict[str, asyncio.Future] = {}

    def expect(self, uniqueid: str) -> asyncio.Future:
        fut = asyncio.get_running_loop().create_future()
        self._waiters[uniqueid] = fut
        return fut

    def forget(self, uniqueid: str) -> None:
        fut = self._waiters.pop(uniqueid, None)
        if fut is not None and not fut.done():
            fut.cancel()

    def on_event(self, event) -> None:
        """AMI subscriber: resolves the caller's future with the answer time."""
        if event.name != "DialEnd" or event.get("DialStatus") != "ANSWER":
            return
        fut = self._waiters.pop(event.get("Uniqueid") or "", None)
        if fut is not None and not fut.done():
            fut.set_result((self._clock(), event.get("DestChannel")))
