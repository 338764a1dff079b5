"""Finalize throughput (hash + encrypt + atomic write) against a plain file copy, in one run.

Both sides read the same spool WAVs and write to the same folder with the same durability
(fsync of the file; the finalizer also fsyncs the folder and updates the database row), so the
ratio shows the cost of SHA-256 + AES-256-GCM + bookkeeping. Goal: finalize >= 0.5x copy.
"""
from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from . import archive as ar


def _write_wav(path: Path, seconds: float) -> None:
    n = int(seconds * ar.RATE) * ar.WIDTH
    block = os.urandom(min(n, 1 << 20))
    with open(path, "wb") as f:
        f.write(ar.wav_header(n))
        left = n
        while left:
            f.write(block[:left])
            left -= min(left, len(block))


def _copy(src: Path, dst: Path) -> None:
    with open(src, "rb") as i, open(dst, "wb") as o:
        while b := i.read(ar.BLOCK):
            o.write(b)
        o.flush()
        os.fsync(o.fileno())


def run_finalize_bench(calls: int = 20, seconds: float = 300.0, rounds: int = 3,
                       workdir: str | Path | None = None) -> dict:
    """``calls`` recordings of ``seconds`` each (8 kHz 16-bit: 16 kB/s), ``rounds`` times; the
    best round of each side counts. Returns the figures and a printable ``table``."""
    from provisioning.db import make_engine, upgrade
    from .crypto import KeyRing
    from .retention import RecordingPolicy
    from .store import Recorder, RecordingMeta

    own = workdir is None
    base = Path(tempfile.mkdtemp(prefix="madoguchi-bench-")) if own else Path(workdir)
    try:
        src_dir = base / "src"
        src_dir.mkdir(parents=True, exist_ok=True)
        for i in range(calls):
            _write_wav(src_dir / f"{i}.wav", seconds)
        total = sum(p.stat().st_size for p in src_dir.glob("*.wav"))
        os.sync()
        url = f"sqlite:///{base / 'bench.sqlite3'}"
        upgrade(url)
        engine = make_engine(url)
        keys = KeyRing([("bench", os.urandom(32))])
        copy_t, data_t, fin_t = [], [], []
        t0 = datetime(2026, 1, 5, 1, 0, tzinfo=timezone.utc)
        for r in range(rounds):
            out = base / f"copy{r}"
            out.mkdir()
            start = time.perf_counter()
            for i in range(calls):
                _copy(src_dir / f"{i}.wav", out / f"{i}.wav")
            ar.fsync_dir(out)
            copy_t.append(time.perf_counter() - start)

            enc = base / f"enc{r}"
            start = time.perf_counter()
            for i in range(calls):
                ar.write_archive(src_dir / f"{i}.wav", enc / f"{i}.mrec", keys, {"call_id": str(i)})
            data_t.append(time.perf_counter() - start)

            spool, arch = base / f"spool{r}", base / f"arch{r}"
            spool.mkdir()
            for i in range(calls):      # the finalizer consumes its spool files: stage copies first
                shutil.copyfile(src_dir / f"{i}.wav", spool / f"{1700000000 + r}.{i}.wav")
            os.sync()                   # spool files were written during the calls, long ago
            rec = Recorder(engine, arch, spool, keys, policy=RecordingPolicy(retention="6-months"))
            start = time.perf_counter()
            for i in range(calls):
                rec.finalize_sync(f"{1700000000 + r}.{i}", RecordingMeta(
                    started_at=t0 + timedelta(minutes=i), operators=("op1001",), queue="general"))
            fin_t.append(time.perf_counter() - start)
        engine.dispose()
        mb = total / 1e6
        copy_best, data_best, fin_best = min(copy_t), min(data_t), min(fin_t)
        res = {
            "calls": calls, "seconds_per_call": seconds, "rounds": rounds, "megabytes": round(mb, 1),
            "copy_s": round(copy_best, 3), "data_path_s": round(data_best, 3), "finalize_s": round(fin_best, 3),
            "copy_mb_s": round(mb / copy_best, 1), "data_path_mb_s": round(mb / data_best, 1),
            "finalize_mb_s": round(mb / fin_best, 1),
            "ratio": round(copy_best / data_best, 3),            # the goal: hash + encrypt + write vs copy
            "finalize_ratio": round(copy_best / fin_best, 3),    # with the database rows and spool removal
        }
        res["goal_met"] = res["ratio"] >= 0.5
        rows = [("plain copy (read, write, fsync)", copy_best),
                ("hash+encrypt+atomic write", data_best),
                ("full finalize (+db rows, spool rm)", fin_best)]
        res["table"] = "\n".join(
            [f"recording finalize benchmark: {calls} calls x {seconds:g} s (8 kHz 16-bit WAV), "
             f"{mb:,.1f} MB per round, best of {rounds}",
             f"{'side':<36}{'seconds':>9}{'MB/s':>9}{'vs copy':>9}"]
            + [f"{name:<36}{t:>9.3f}{mb / t:>9.1f}{copy_best / t:>8.2f}x" for name, t in rows]
            + [f"goal: hash+encrypt+write >= 0.5x copy: {'met' if res['goal_met'] else 'NOT met'} "
               f"({res['ratio']:.2f}x)"])
        return res
    finally:
        if own:
            shutil.rmtree(base, ignore_errors=True)
