"""Transcripts: free-form vosk recognition of archived recordings (an optional batch job).

``madoguchi recordings transcribe [--model DIR]`` decrypts each archived recording without a
transcript in memory (never to disk), feeds it to a vosk model (free dictation, no grammar;
8 kHz audio is resampled to the model's rate) and stores the text **encrypted in the database**
(``recording_transcripts``, same chunked AES-256-GCM format and key ring as the audio, header
bound to the recording's call id and reception number). ``recordings search --text`` decrypts
the candidate transcripts to match, so the text is never stored in clear. A transcript is
deleted with its recording (purge, and ON DELETE CASCADE).

The model folder: ``--model``, else the config's ``speech.model_dir``. A model is one language:
``--language`` limits the job to recordings of that call language. Quality is whatever the model
gives on telephone audio; the tests only use the bundled Korean model on espeak-ng speech, where
free dictation is poor (see tests/test_speech.py), so they check the plumbing, not accuracy.
"""
from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from .crypto import encrypt_bytes
from .models import Recording, RecordingTranscript
from .store import Recorder, RecordingRecord

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

log = logging.getLogger("madoguchi.recorder")


@dataclass(frozen=True)
class TranscribeResult:
    done: list[tuple[str, str]]      # (reception no, text)
    failed: list[tuple[str, str]]    # (reception no, reason)


def transcribe_pending(recorder: Recorder, model_dir: str | Path, *, language: str | None = None,
                       limit: int = 1000) -> TranscribeResult:
    from ivr_prompts.recognizer import load_model, model_sample_rate
    import vosk  # noqa: F401  (SpeechUnavailable from load_model when missing)

    model_dir = Path(model_dir)
    model = load_model(model_dir)
    rate = model_sample_rate(model_dir)
    with recorder.sessions() as s:
        q = (select(Recording).outerjoin(RecordingTranscript, RecordingTranscript.recording_id == Recording.id)
             .where(Recording.status == "archived", RecordingTranscript.recording_id.is_(None))
             .order_by(Recording.started_at).limit(limit))
        if language:
            q = q.where(Recording.language == language)
        rows = [RecordingRecord.of(r) for r in s.scalars(q)]
    done, failed = [], []
    for rec in rows:
        try:
            text = transcribe_one(recorder, rec, model, rate)
        except Exception as e:  # one bad recording must not stop the batch
            log.error("transcript of %s failed: %s", rec.reception_no, e)
            failed.append((rec.reception_no, str(e)))
            continue
        store_transcript(recorder, rec, text, model=model_dir.name)
        done.append((rec.reception_no, text))
    return TranscribeResult(done, failed)


def transcribe_one(recorder: Recorder, rec: RecordingRecord, model, rate: int) -> str:
    import vosk
    kr = vosk.KaldiRecognizer(model, rate)
    state, header, parts = None, b"", []
    for chunk in recorder.open_audio(rec):
        if len(header) < 44:              # strip the canonical 44-byte WAV header
            need = 44 - len(header)
            header += chunk[:need]
            chunk = chunk[need:]
        if not chunk:
            continue
        pcm, state = audioop.ratecv(chunk, 2, 1, 8000, rate, state) if rate != 8000 else (chunk, None)
        if kr.AcceptWaveform(pcm):
            parts.append(json.loads(kr.Result()).get("text", ""))
    parts.append(json.loads(kr.FinalResult()).get("text", ""))
    return " ".join(p for p in parts if p).strip()


def store_transcript(recorder: Recorder, rec: RecordingRecord, text: str, *, model: str) -> None:
    blob, _, kid = encrypt_bytes(text.encode("utf-8"), recorder.keys,
                                 {"call_id": rec.call_id, "reception_no": rec.reception_no, "kind": "transcript"})
    with recorder.sessions.begin() as s:
        old = s.get(RecordingTranscript, rec.id)
        if old is not None:
            s.delete(old)
            s.flush()
        s.add(RecordingTranscript(recording_id=rec.id, key_id=kid, ciphertext=blob, model=model[:255],
                                  created_at=recorder.clock()))
