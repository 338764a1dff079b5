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
    """Prompt name -> (seconds, endpos rate). Unknown names are missing files.

    ``durations`` give fixed lengths by name (any language). With ``sounds_dir`` set, a name is
    looked up like Asterisk's file.c does for the channel's language: ``<dir>/<lang>/<name>``,
    ``<dir>/<lang without _dialect>/<name>``, ``<dir>/<name>``, then ``<dir>/en/<name>``, and the
    length comes from the file (the WAV header). Lengths are cached per file and size/mtime, so
    a prompt rebuilt while the lab runs is measured again on the next play.
    """

    DEFAULT_LANGUAGE = "en"
    EXTENSIONS = (".wav", ".wav16", ".sln16", ".sln", ".ulaw", ".alaw", ".gsm", ".g722")

    def __init__(self, durations: dict[str, float] | None = None, sounds_dir: str | os.PathLike | None = None):
        self._d: dict[str, tuple[float, int]] = {k: (float(v), 8000) for k, v in (durations or {}).items()}
        self.dir = Path(sounds_dir) if sounds_dir else None
        self._files: dict[Path, tuple[tuple[int, int], tuple[float, int] | None]] = {}

    def lookup(self, name: str, language: str | None = None) -> tuple[float, int] | None:
        if name in self._d:
            return self._d[name]
        if self.dir is None:
            return None
        for base in self._candidates(name, language):
            for ext in self.EXTENSIONS:
                p = base.with_name(base.name + ext)
                try:
                    st = p.stat()
                except OSError:
                    continue
                if not p.is_file():
                    continue
                key = (st.st_mtime_ns, st.st_size)
                cached = self._files.get(p)
                if cached is None or cached[0] != key:
                    cached = (key, self._read(p))
                    self._files[p] = cached
                if cached[1] is not None:
                    return cached[1]
        return None

    def _candidates(self, name: str, language: str | None) -> list[Path]:
        if name.startswith("/"):
            return [Path(name)]          # an absolute file name: no language folders
        out, langs = [], []
        if language:
            langs.append(language)
            if "_" in language:
                langs.append(language.split("_", 1)[0])
        for lang in langs:
            out.append(self.dir / lang / name)
        out.append(self.dir / name)
        if self.DEFAULT_LANGUAGE not in langs:
            out.append(self.dir / self.DEFAULT_LANGUAGE / name)
        return out

    @staticmethod
    def _read(p: Path) -> tuple[float, int] | None:
        if p.suffix in (".wav", ".wav16"):
            try:
                with wave.open(str(p)) as w:
                    return w.getnframes() / w.getframerate(), w.getframerate()
            except (wave.Error, EOFError, OSError, ZeroDivisionError):
                return None       # not a PCM WAV Asterisk could play
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
    found = sounds.lookup(name, ch.language)
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
