"""Speech input over FastAGI: record the caller's answer with RECORD FILE, then recognise it.

The recording's file name comes from the PBX's uniqueid (digits and dots only) and a counter,
never from anything the caller says or types. Recognition runs in a worker thread.
"""
from __future__ import annotations

import itertools
import logging
import re
from pathlib import Path

from dialplan import flow
from dialplan.speech import Grammar
from ivr_prompts.catalog import sound_name

from .session import AGIHangup, AGISession

log = logging.getLogger("madoguchi.speech")

SILENCE_SECONDS = 2        # the caller has finished speaking after this much silence
_counter = itertools.count(1)


class AGIListener:
    def __init__(self, recognizer, spool_dir: Path):
        self.recognizer = recognizer
        self.spool = Path(spool_dir)

    @property
    def available(self) -> bool:
        return self.recognizer is not None and self.recognizer.available

    async def listen(self, s: AGISession, action: flow.Listen, call_id: str) -> flow.Heard:
        from ivr_prompts.recognizer import SpeechInputError, SpeechUnavailable
        self.spool.mkdir(parents=True, exist_ok=True)
        stem = self.spool / f"{re.sub(r'[^0-9.]', '', call_id) or 'call'}-{next(_counter)}"
        await s.stream_file(sound_name(action.prompt))
        r = await s.command("RECORD FILE", str(stem), "wav", "#", int(action.timeout * 1000), 0, "BEEP",
                            f"s={SILENCE_SECONDS}", timeout=action.timeout + 60)
        if r.value < 0 or s.hungup:
            raise AGIHangup("hung up while speaking")
        wav = stem.parent / f"{stem.name}.wav"   # not with_suffix: the uniqueid has a dot
        try:
            heard = await self.recognizer.recognize_async(wav, Grammar({p: p for p in action.phrases}))
        except SpeechUnavailable:
            return flow.Heard(False)
        except SpeechInputError as e:
            log.warning("call %s: recording not usable for speech (%s)", call_id, e)
            return flow.Heard(True, None)
        finally:
            wav.unlink(missing_ok=True)      # the caller's voice is not kept beyond recognition
        log.info("call %s: heard %r (%.2f) -> %s", call_id, heard.text, heard.confidence, heard.target)
        return flow.Heard(True, heard.target)
