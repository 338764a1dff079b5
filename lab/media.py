"""Simulated media: prompt durations, interruptible playback, digit waits.

Playback positions (``endpos``) are file samples, 8 kHz for the narrowband formats Asterisk
reports them in (hello-world = 11234 samples in the golden data), counted in 20 ms frames
when interrupted.
"""
from __future__ import annotations

import asyncio
import os
import wave
from pathlib import Path

from .channels import Channel, ChannelHungUp, Clock

FRAME = 160  # samples per 20 ms frame at 8 kHz

# bytes per second and endpos rate of the raw formats Asterisk reads
_RAW = {".sln": (16000, 8000), ".sln16": (32000, 16000), ".ulaw": (8000, 8000), ".alaw": (8000, 8000),
        ".gsm": (1650, 8000), ".g722": (8000, 16000)}


class Sounds:
    """Prompt name -> (seconds, endpos rate). Unknown names are missing files."""

    def __init__(self, durations: dict[str, float] | None = None, sounds_dir: str | os.PathLike | None = None):
        self._d: dict[str, tuple[float, int]] = {k: (float(v), 8000) for k, v in (durations or {}).items()}
        self.dir = Path(sounds_dir) if sounds_dir else None

    def lookup(self, name: str) -> tuple[float, int] | None:
        if name in self._d:
            return self._d[name]
        if self.dir is None:
            return None
        for ext in (".wav", ".wav16", ".sln16", ".sln", ".ulaw", ".alaw", ".gsm", ".g722"):
            p = self.dir / f"{name}{ext}"
            if p.is_file():
                found = self._read(p)
                self._d[name] = found
                return found
        return None

    @staticmethod
    def _read(p: Path) -> tuple[float, int]:
        if p.suffix in (".wav", ".wav16"):
            with wave.open(str(p)) as w:
                return w.getnframes() / w.getframerate(), w.getframerate()
        bps, rate = _RAW[p.suffix]
        return p.stat().st_size / bps, rate


async def wait_any(ch: Channel, q: asyncio.Queue | None, timeout_sim: float | None, clock: Clock,
                   accept: str | None = None):
    """Wait for a digit (restricted to ``accept`` when given), hangup, or timeout.

    Returns the digit or None on timeout; raises ChannelHungUp. ``timeout_sim`` None or < 0 waits forever.
    """
    if not ch.alive:
        raise ChannelHungUp()
    loop = asyncio.get_running_loop()
    deadline = None if timeout_sim is None or timeout_sim < 0 else loop.time() + clock.real(timeout_sim)
    hang = asyncio.ensure_future(ch.hungup.wait())
    try:
        while True:
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                return None
            waiters = {hang}
            get = asyncio.ensure_future(q.get()) if q is not None else None
            if get:
                waiters.add(get)
            done, _ = await asyncio.wait(waiters, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
            if get and not get.done():
                get.cancel()
            if get in done:
                d = get.result()
                if accept is None or d in accept:
                    return d
                continue
            if hang in done:
                raise ChannelHungUp()
    finally:
        hang.cancel()


async def play(ch: Channel, sounds: Sounds, clock: Clock, name: str, escape: str, q: asyncio.Queue | None,
               offset: int = 0):
    """Play one prompt. Returns (digit|None, endpos) or None when the file is missing.

    Raises ChannelHungUp(endpos) if the channel hangs up while playing.
    """
    found = sounds.lookup(name)
    if found is None:
        return None
    seconds, rate = found
    total = int(round(seconds * rate))
    offset = min(max(offset, 0), total)
    loop = asyncio.get_running_loop()
    t0 = loop.time()

    def pos():  # whole 20 ms frames played so far
        elapsed = (loop.time() - t0) / clock.scale
        return min(total, offset + int(elapsed * 50) * (rate // 50))

    try:
        d = await wait_any(ch, q, (total - offset) / rate, clock, accept=escape or "")
    except ChannelHungUp:
        raise ChannelHungUp(pos())
    if d is None:
        return None, total
    return d, pos()
