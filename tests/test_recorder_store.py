"""Finalizing recordings, and recovering every recording after a crash at any finalizer step."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import wave
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from cti.calls import CallStore
from lab.apps import write_mix_wav
from provisioning.db import make_engine, upgrade
from recorder import archive as ar
from recorder.crypto import IntegrityError, KeyMissingError, KeyRing, WrongKeyError
from recorder.retention import RecordingPolicy
from recorder.store import CRASH_ENV, STEPS, NoRecording, Recorder, RecordingMeta

ROOT = Path(__file__).resolve().parents[1]
KEYS = "k1:" + "11" * 32
T0 = datetime(2026, 1, 31, 3, 0, tzinfo=timezone.utc)        # 12:00 JST
POLICY = RecordingPolicy(retention="6-months")


def migrated(url: str):
    upgrade(url)
    return make_engine(url)


@pytest.fixture
def env(tmp_path):
    url = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    engine = migrated(url)
    rec = Recorder(engine, tmp_path / "rec", tmp_path / "spool", KeyRing.parse(KEYS), policy=POLICY)
    yield url, rec
    engine.dispose()


def make_spool(rec: Recorder, call_id: str, seconds: float = 2.0) -> bytes:
    """A MixMonitor-like spool file; returns the WAV the archive must hold."""
    p = rec.spool_path(call_id)
    write_mix_wav(str(p), seconds, [(0.5, "1")])
    return p.read_bytes()


def audio(rec: Recorder, r) -> bytes:
    return b"".join(rec.open_audio(r))


def test_spool_paths_take_only_uniqueids(tmp_path):
    assert ar.recording_spool_path(tmp_path, "1700000000.12") == tmp_path / "1700000000.12.wav"
    for bad in ("../x", "1700000000.1/../../etc", "a.1", "1.2.3", "", ".1", "1700000000.1 ", "1\n2", None):
        with pytest.raises(ValueError):
            ar.recording_spool_path(tmp_path, bad)


def test_finalize_archives_encrypted_and_removes_spool(env):
    _, rec = env
    wav = make_spool(rec, "1700000000.1")
    r = rec.finalize_sync("1700000000.1", RecordingMeta(started_at=T0, ended_at=T0 + timedelta(seconds=2),
                                                        operators=("op1001", "op1002"), queue="general",
                                                        language="ja"))
    assert r.status == "archived" and r.reception_no == "20260131-000001" and r.key_id == "k1"
    assert r.operators == ("op1001", "op1002") and r.duration == 2.0 and r.retention_class == "6-months"
    assert r.path == "2026/01/20260131-000001_1700000000.1.mrec"
    assert not rec.spool_path("1700000000.1").exists()
    archive = rec.archive_path(r)
    assert archive.stat().st_mode & 0o077 == 0
    assert wav[44:1044] not in archive.read_bytes()            # no plain audio on disk
    assert audio(rec, r) == wav and r.sha256 == hashlib.sha256(wav).hexdigest()
    # idempotent: finalizing again returns the same recording
    assert rec.finalize_sync("1700000000.1", RecordingMeta(started_at=T0)) == r
    with pytest.raises(NoRecording):
        rec.finalize_sync("1700000000.9", RecordingMeta(started_at=T0))


def test_reception_numbers_count_per_site_local_day(env):
    _, rec = env
    jst_day_end = datetime(2026, 1, 31, 14, 59, tzinfo=timezone.utc)     # 23:59 JST
    assert rec.reception_number(jst_day_end) == "20260131-000001"
    assert rec.reception_number(jst_day_end) == "20260131-000002"
    assert rec.reception_number(jst_day_end + timedelta(minutes=1)) == "20260201-000001"
    with pytest.raises(ValueError):
        rec.reception_number(datetime(2026, 1, 31))


async def test_async_finalize_and_other_wav_formats(env, tmp_path):
    _, rec = env
    p = rec.spool_path("1700000000.2")
    with wave.open(str(p), "wb") as w:          # 16 kHz stereo, like a wav16 recording
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(b"\x10\x00\x20\x00" * 16000)
    r = await rec.finalize("1700000000.2", RecordingMeta(started_at=T0))
    out = tmp_path / "out.wav"
    out.write_bytes(audio(rec, r))
    with wave.open(str(out)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 8000)
        assert abs(w.getnframes() - 8000) <= 2


def test_spool_header_with_unset_sizes_is_read_to_the_end(env):
    _, rec = env
    wav = make_spool(rec, "1700000000.3", 1.0)
    p = rec.spool_path("1700000000.3")
    p.write_bytes(wav[:4] + b"\0\0\0\0" + wav[8:40] + b"\0\0\0\0" + wav[44:])   # Asterisk still writing
    r = rec.finalize_sync("1700000000.3", RecordingMeta(started_at=T0))
    assert audio(rec, r) == wav and r.duration == 1.0


def test_tampered_truncated_and_wrong_key_archives(env, tmp_path):
    _, rec = env
    make_spool(rec, "1700000000.4", 3.0)
    r = rec.finalize_sync("1700000000.4", RecordingMeta(started_at=T0))
    path = rec.archive_path(r)
    good = path.read_bytes()
    bad = bytearray(good)
    bad[len(good) // 2] ^= 0x80
    path.write_bytes(bytes(bad))
    with pytest.raises(IntegrityError):
        audio(rec, r)
    path.write_bytes(good[:-100])
    with pytest.raises(IntegrityError, match="truncated"):
        audio(rec, r)
    path.write_bytes(good)
    assert len(audio(rec, r)) == 44 + 48000
    other = Recorder(rec.engine, rec.recordings_dir, rec.spool_dir, KeyRing.parse("k1:" + "99" * 32), policy=POLICY)
    with pytest.raises(WrongKeyError, match="'k1'"):
        audio(other, r)
    rotated = Recorder(rec.engine, rec.recordings_dir, rec.spool_dir, KeyRing.parse("k2:" + "22" * 32), policy=POLICY)
    with pytest.raises(KeyMissingError, match="'k1'"):
        audio(rotated, r)


# ------------------------------------------------------------------ crash injection

CHILD = """
import sys
from datetime import datetime, timezone
from provisioning.db import make_engine
from recorder.crypto import KeyRing
from recorder.retention import RecordingPolicy
from recorder.store import Recorder, RecordingMeta
url, rec_dir, spool_dir, call_id = sys.argv[1:5]
r = Recorder(make_engine(url), rec_dir, spool_dir, KeyRing.load(), policy=RecordingPolicy(retention="6-months"))
r.finalize_sync(call_id, RecordingMeta(started_at=datetime(2026, 1, 31, 3, 0, tzinfo=timezone.utc),
                                       operators=("op1001",), queue="general"))
"""


def run_child(url, rec: Recorder, call_id: str, crash_at: str | None) -> int:
    env = dict(os.environ, MADOGUCHI_RECORDING_KEYS=KEYS, PYTHONPATH=str(ROOT))
    env.pop(CRASH_ENV, None)
    if crash_at:
        env[CRASH_ENV] = crash_at
    p = subprocess.run([sys.executable, "-c", CHILD, url, str(rec.recordings_dir), str(rec.spool_dir), call_id],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode in (0, 70), p.stderr
    return p.returncode


def state(rec: Recorder, call_id: str) -> tuple:
    r = rec.get(call_id=call_id)
    tmps = list(rec.recordings_dir.rglob("*.tmp"))
    archives = list(rec.recordings_dir.rglob("*.mrec"))
    return (r.status if r else None, bool(tmps), bool(archives), rec.spool_path(call_id).exists())


# after a crash at each step: (row status, temp file, archive, spool file)
AFTER = {
    "started": (None, False, False, True),
    "claimed": ("pending", False, False, True),
    "encrypted": ("pending", True, False, True),
    "renamed": ("pending", False, True, True),
    "committed": ("archived", False, True, True),
    "spool_removed": ("archived", False, True, False),
}


@pytest.mark.parametrize("step", STEPS)
def test_crash_at_each_step_then_reconcile_recovers(env, step):
    url, rec = env
    call_id = "1700000000.5"
    wav = make_spool(rec, call_id)
    CallStore(rec.engine).start(call_id, "0223984894", "PJSIP/caller-1", started_at=T0)  # the call log row
    assert run_child(url, rec, call_id, step) == 70
    assert state(rec, call_id) == AFTER[step]
    report = rec.reconcile(stale_seconds=0)
    r = rec.get(call_id=call_id)
    assert r.status == "archived" and not report.flagged
    assert audio(rec, r) == wav and r.sha256 == hashlib.sha256(wav).hexdigest()
    assert state(rec, call_id) == ("archived", False, True, False)
    assert r.started_at == T0 and r.reception_no == "20260131-000001"
    again = rec.reconcile(stale_seconds=0)
    assert not any(again.__dict__.values())                    # nothing left to do


def test_crash_without_injection_completes(env):
    url, rec = env
    wav = make_spool(rec, "1700000000.6")
    assert run_child(url, rec, "1700000000.6", None) == 0
    assert audio(rec, rec.get(call_id="1700000000.6")) == wav


@pytest.mark.parametrize("step", STEPS)
def test_failure_raised_at_each_step_is_recovered_in_process(env, step):
    _, rec = env
    wav = make_spool(rec, "1700000000.7")

    def hook(name):
        if name == step:
            raise RuntimeError(f"injected at {name}")
    failing = Recorder(rec.engine, rec.recordings_dir, rec.spool_dir, rec.keys, policy=POLICY, hook=hook)
    with pytest.raises(RuntimeError, match="injected"):
        failing.finalize_sync("1700000000.7", RecordingMeta(started_at=T0))
    rec.reconcile(stale_seconds=0)
    r = rec.get(call_id="1700000000.7")
    assert r.status == "archived" and audio(rec, r) == wav
    assert not list(rec.recordings_dir.rglob("*.tmp")) and not rec.spool_path("1700000000.7").exists()


def test_reconcile_flags_what_it_cannot_recover(env):
    _, rec = env
    make_spool(rec, "1700000000.8")
    r = rec.finalize_sync("1700000000.8", RecordingMeta(started_at=T0))
    rec.archive_path(r).unlink()                                # archive lost
    rec._claim("1700000000.9", RecordingMeta(started_at=T0), None)   # claimed, then spool lost
    report = rec.reconcile(stale_seconds=0)
    assert sorted(report.missing) == ["20260131-000001", "20260131-000002"]
    assert rec.get(call_id="1700000000.8").status == "missing"
    assert rec.get(call_id="1700000000.9").note == "no spool file and no archive"


def test_reconcile_leaves_recordings_in_progress_alone(env):
    _, rec = env
    make_spool(rec, "1700000000.10")
    report = rec.reconcile()                                   # default: 120 s grace for live calls
    assert report.active == ["1700000000.10"] and rec.get(call_id="1700000000.10") is None
    assert rec.spool_path("1700000000.10").exists()


def test_orphan_archive_restored_but_purged_archive_not_resurrected(env):
    _, rec = env
    wav = make_spool(rec, "1700000000.11")
    r = rec.finalize_sync("1700000000.11", RecordingMeta(started_at=T0))
    from recorder.models import Recording
    with rec.sessions.begin() as s:                            # the row is lost (e.g. DB restored from backup)
        s.delete(s.get(Recording, r.id))
    report = rec.reconcile(stale_seconds=0)
    assert report.restored == [r.reception_no]
    back = rec.get(call_id="1700000000.11")
    assert back.status == "archived" and back.started_at == T0 and audio(rec, back) == wav
    # a purge interrupted after the deletion was logged: the archive is removed, not restored
    path = rec.archive_path(back)
    data = path.read_bytes()
    rec.delete(back, approved_by="admin1", reason="retention")
    path.write_bytes(data)
    report = rec.reconcile(stale_seconds=0)
    assert report.deletions_finished == [r.reception_no] and not path.exists()
    assert rec.get(call_id="1700000000.11") is None


def test_on_both_databases(db_engine, tmp_path):
    """Finalize, reception numbers, search (LIKE escapes), hold and purge on SQLite and PostgreSQL."""
    from recorder.access import Access
    rec = Recorder(db_engine, tmp_path / "rec", tmp_path / "spool", KeyRing.parse(KEYS), policy=POLICY)
    acc = Access(rec)
    acc.add_user("admin1", "admin", by=None)
    acc.add_user("op_1", "operator", by="admin1")
    for i, ops in enumerate([("op_1",), ("opx1", "op_10"), ("op_1", "op2")]):
        make_spool(rec, f"1700000000.{i}", 0.2)
        rec.finalize_sync(f"1700000000.{i}", RecordingMeta(started_at=T0, operators=ops))
    assert [r.reception_no[-1] for r in acc.search("admin1", operator="op_1")] == ["1", "3"]
    assert [r.reception_no[-1] for r in acc.search("op_1")] == ["1", "3"]
    acc.hold("admin1", "20260131-000001", "request")
    plan = acc.purge_plan("admin1", T0 + timedelta(days=200))
    assert [i.reception_no for i in plan.items] == ["20260131-000002", "20260131-000003"]
    done = acc.purge_approve("admin1", plan.id, T0 + timedelta(days=200))
    assert done.status == "executed" and {i.outcome for i in done.items} == {"deleted"}
    assert [r.reception_no for r in acc.search("admin1")] == ["20260131-000001"]
