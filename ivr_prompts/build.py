"""Offline prompt build: ``prompts.toml`` -> 8 kHz mono 16-bit PCM WAV for Asterisk and FreeSWITCH.

Japanese is spoken by Open JTalk (``pyopenjtalk-plus``: dictionary and HTS voice ship in the
wheel, nothing is downloaded), the other languages by ``espeak-ng``; ``sox`` resamples,
normalises and joins. An uploaded recording (``file.<lang>``) wins over synthesis and is only
converted. Every output is written twice:

* Asterisk:   ``<out>/asterisk/<lang>/madoguchi/<id>.wav``          (``sounds/<lang>/...``)
* FreeSWITCH: ``<out>/freeswitch/<lang>/madoguchi/8000/<id>.wav``   (``sound_prefix/<rate>``)

The build is incremental: ``<out>/manifest.json`` keeps, per (prompt, language), a hash of what
the file is made from (texts or recording bytes, engine and version, output format); only what
changed is rebuilt, and files of prompts that left prompts.toml are removed. Files are replaced
atomically (temp file + rename in the same folder), so a PBX playing a prompt keeps the old file
open and the next call hears the new one. External programs run from argument lists, never a
shell, and texts reach them on stdin.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import subprocess
import tempfile
import time
import warnings
import wave
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Callable, Iterable

from provisioning.problems import Problem

from .catalog import RATE, asterisk_file, freeswitch_file
from .texts import PromptsError, PromptSource, load_texts, site_languages

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
# Bump when the processing below changes in a way that should rebuild every file.
PIPELINE = "2"
OUTPUT_FORMAT = f"wav pcm_s16le {RATE} Hz mono"
PART_PAUSE = 0.35          # seconds of silence between the parts of a multi-language text
NORM_DB = -3.0             # synthesized speech is normalised to this peak level
ESPEAK_SPEED = 150         # words per minute (espeak-ng default 175 is hurried on a phone line)
TOOL_TIMEOUT = 120         # seconds for one espeak-ng/sox run

# espeak-ng voice per language code. Chinese uses cmn-latn-pinyin: in espeak-ng 1.51 the plain
# "cmn" voice reads most Hanzi as English words ("wen two") because its pinyin goes to English.
ESPEAK_VOICES = {"en": "en-us", "zh": "cmn-latn-pinyin", "ko": "ko", "vi": "vi", "ne": "ne"}
JTALK_DIST = "pyopenjtalk-plus"
JTALK_VOICE = "mei_normal"

Progress = Callable[[int, int, str], None]


class EngineMissing(RuntimeError):
    """A program or package the build needs is not installed; the message says which to install."""


class SynthesisError(RuntimeError):
    """One prompt could not be made."""


# --- engines -------------------------------------------------------------------------------

def _which(program: str, package: str) -> str:
    path = shutil.which(program)
    if path is None:
        raise EngineMissing(f"{program} not found: install the Debian package {package} "
                            f"(apt-get install -y {package})")
    return path


def _run(argv: list[str], what: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    try:
        r = subprocess.run(argv, input=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           timeout=TOOL_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        raise SynthesisError(f"{what}: {Path(argv[0]).name} took longer than {TOOL_TIMEOUT} s") from None
    except OSError as e:
        raise SynthesisError(f"{what}: cannot run {argv[0]}: {e}") from None
    if r.returncode != 0:
        err = r.stderr.decode("utf-8", "replace").strip().splitlines()
        raise SynthesisError(f"{what}: {Path(argv[0]).name} failed (exit {r.returncode})"
                             + (f": {err[-1]}" if err else ""))
    return r


class OpenJTalk:
    """Japanese: Open JTalk through pyopenjtalk-plus, in process."""

    name = "open-jtalk"

    def __init__(self):
        try:
            # pyopenjtalk-plus prints a notice about its optional ONNX reading model on import
            with contextlib.redirect_stdout(io.StringIO()):
                import pyopenjtalk
        except ImportError as e:
            raise EngineMissing(f"Japanese voice missing ({e}): install the Python package {JTALK_DIST} "
                                f"(pip install -e . installs the pinned version from setup.cfg)") from None
        self._tts = pyopenjtalk.tts
        try:
            self.version = f"{JTALK_DIST} {metadata.version(JTALK_DIST)} voice={JTALK_VOICE}"
        except metadata.PackageNotFoundError:
            self.version = f"pyopenjtalk {getattr(pyopenjtalk, '__version__', '?')} voice={JTALK_VOICE}"

    def synthesize(self, text: str, language: str, out: Path) -> None:
        import numpy as np
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)   # sudachipy API notice, per call
                samples, rate = self._tts(text)
        except Exception as e:  # the engine's own errors carry no common type
            raise SynthesisError(f"Open JTalk failed: {e}") from None
        if samples.size == 0:
            raise SynthesisError("Open JTalk produced no audio")
        pcm = np.clip(np.round(samples), -32768, 32767).astype("<i2")
        with wave.open(str(out), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(int(rate))
            w.writeframes(pcm.tobytes())


class ESpeak:
    """Every other language: espeak-ng, text on stdin."""

    name = "espeak-ng"

    def __init__(self):
        self.program = _which("espeak-ng", "espeak-ng")
        r = _run([self.program, "--version"], "espeak-ng --version")
        # "eSpeak NG text-to-speech: 1.51  Data at: ..."
        words = r.stdout.decode("utf-8", "replace").split()
        ver = next((w for w in words if w[:1].isdigit()), "?")
        self.version = f"espeak-ng {ver} speed={ESPEAK_SPEED}"

    @staticmethod
    def voice(language: str) -> str:
        return ESPEAK_VOICES.get(language, language)

    def synthesize(self, text: str, language: str, out: Path) -> None:
        # -b 1: the input is UTF-8; --stdin: the text is read from standard input, so nothing
        # in it can become an option or reach a shell.
        _run([self.program, "-v", self.voice(language), "-s", str(ESPEAK_SPEED), "-b", "1",
              "-w", str(out), "--stdin"], f"espeak-ng ({self.voice(language)})", stdin=text.encode("utf-8"))


class Sox:
    name = "sox"

    def __init__(self):
        self.program = _which("sox", "sox")
        r = _run([self.program, "--version"], "sox --version")
        words = r.stdout.decode("utf-8", "replace").split()
        self.version = "sox " + next((w.lstrip("v") for w in words if w.lstrip("v")[:1].isdigit()), "?")

    _OUT = ["-t", "wav", "-e", "signed-integer", "-b", "16", "-c", "1", "-r", str(RATE)]

    def speech(self, src: Path, out: Path, pause_after: float) -> None:
        """A synthesized part -> 8 kHz mono 16-bit, peak-normalised, with trailing silence."""
        effects = ["norm", str(NORM_DB)]
        if pause_after > 0:
            effects += ["pad", "0", f"{pause_after:.3f}"]
        _run([self.program, "--no-show-progress", str(src), *self._OUT, str(out), *effects], "sox")

    def recording(self, src: Path, out: Path) -> None:
        """An uploaded recording -> 8 kHz mono 16-bit (its level is the recording's own)."""
        _run([self.program, "--no-show-progress", str(src), *self._OUT, str(out)], "sox (recording)")

    def join(self, parts: list[Path], out: Path) -> None:
        _run([self.program, "--no-show-progress", *map(str, parts), *self._OUT, str(out)], "sox (join)")


class Engines:
    """The tools, found on first use (a Japanese-only build needs no espeak-ng, and so on)."""

    def __init__(self):
        self._made: dict[str, object] = {}

    def _get(self, key: str, factory):
        if key not in self._made:
            self._made[key] = factory()
        return self._made[key]

    @property
    def sox(self) -> Sox:
        return self._get("sox", Sox)

    def voice(self, language: str):
        return self._get("jtalk", OpenJTalk) if language == "ja" else self._get("espeak", ESpeak)

    def voice_id(self, language: str) -> str:
        v = self.voice(language)
        return v.version if language == "ja" else f"{v.version} voice={ESpeak.voice(language)}"


# --- the build -----------------------------------------------------------------------------

@dataclass
class BuildReport:
    out_dir: Path
    built: list[str] = field(default_factory=list)        # "<prompt>/<lang>"
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # "<prompt>/<lang>" -> why
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed

    def summary(self) -> str:
        return (f"built {len(self.built)}, unchanged {len(self.unchanged)}, removed {len(self.removed)}, "
                f"failed {len(self.failed)} in {self.seconds:.1f} s -> {self.out_dir}")


def source_hash(src: PromptSource, engines: Engines) -> str:
    """What the output of one (prompt, language) depends on."""
    if src.recording is not None:
        what = {"recording": hashlib.sha256(src.recording.read_bytes()).hexdigest()}
    else:
        what = {"parts": [[p.language, p.text, engines.voice_id(p.language)] for p in src.parts],
                "pause": PART_PAUSE, "norm": NORM_DB}
    what.update(convert=engines.sox.version, format=OUTPUT_FORMAT, pipeline=PIPELINE)
    blob = json.dumps(what, ensure_ascii=False, sort_keys=True).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()


def output_files(out_dir: Path, src: PromptSource) -> list[Path]:
    return [asterisk_file(out_dir / "asterisk", src.language, src.prompt),
            freeswitch_file(out_dir / "freeswitch", src.language, src.prompt)]


def build_prompts(site_dir: str | os.PathLike, out_dir: str | os.PathLike, languages: Iterable[str] | None = None,
                  force: bool = False, progress: Progress | None = None) -> BuildReport:
    """Build the site's prompts into ``out_dir`` (both layouts); see the module docstring.

    ``languages``: build only these (site languages; default all). ``force``: rebuild
    everything. ``progress(done, total, "<prompt>/<lang>")`` is called as files are made.
    Raises `PromptsError` (problems with file/line/field) before touching anything when
    prompts.toml is invalid, `EngineMissing` when a needed program is not installed. A prompt
    that fails to synthesize is listed in ``report.failed``; the others are still built.
    """
    t0 = time.monotonic()
    site_dir, out_dir = Path(site_dir), Path(out_dir)
    problems: list[Problem] = []
    site_langs = site_languages(site_dir, problems)
    wanted = tuple(site_langs)
    if languages is not None:
        wanted = tuple(dict.fromkeys(languages))
        for lang in wanted:
            if site_langs and lang not in site_langs:
                problems.append(Problem(str(site_dir / "site.toml"), None, "site.languages",
                                        f"cannot build {lang!r}: not one of the site's languages "
                                        f"({', '.join(site_langs)})"))
    texts = load_texts(site_dir, problems, languages=site_langs) if not problems else None
    if problems:
        raise PromptsError(problems)
    assert texts is not None

    out_dir.mkdir(parents=True, exist_ok=True)
    report = BuildReport(out_dir)
    engines = Engines()
    with _locked(out_dir):
        manifest = _read_manifest(out_dir)
        entries: dict[str, dict] = manifest["prompts"]
        # what is still wanted, in every site language (a --lang build must not drop the others)
        current = {src.key for src in texts.sources()}
        todo: list[tuple[PromptSource, str]] = []
        for src in texts.sources(wanted):
            digest = source_hash(src, engines)
            old = entries.get(src.key)
            files = output_files(out_dir, src)
            if (force or old is None or old.get("hash") != digest or not all(f.is_file() for f in files)):
                todo.append((src, digest))
            else:
                report.unchanged.append(src.key)
        try:
            for key in sorted(set(entries) - current):
                _remove(out_dir, entries.pop(key))
                report.removed.append(key)
            with tempfile.TemporaryDirectory(prefix=".build-", dir=out_dir) as work:
                for i, (src, digest) in enumerate(todo):
                    try:
                        seconds = _make(src, Path(work), engines, output_files(out_dir, src))
                    except (SynthesisError, OSError) as e:
                        report.failed[src.key] = str(e)
                    else:
                        entries[src.key] = {
                            "hash": digest, "seconds": round(seconds, 3),
                            "source": "recording" if src.recording else "+".join(
                                dict.fromkeys(engines.voice(p.language).name for p in src.parts)),
                            "files": [f.relative_to(out_dir).as_posix() for f in output_files(out_dir, src)]}
                        report.built.append(src.key)
                    if progress:
                        progress(i + 1, len(todo), src.key)
        finally:
            _write_manifest(out_dir, manifest)
    report.seconds = time.monotonic() - t0
    return report


def _make(src: PromptSource, work: Path, engines: Engines, targets: list[Path]) -> float:
    """Make one (prompt, language) in ``work``, check it, then put it in place in both layouts."""
    stem = f"{src.prompt}.{src.language}"
    final = work / f"{stem}.wav"
    where = f"{src.prompt}/{src.language}"
    try:
        if src.recording is not None:
            engines.sox.recording(src.recording, final)
        else:
            pieces = []
            for n, part in enumerate(src.parts):
                raw = work / f"{stem}.{n}.raw.wav"
                engines.voice(part.language).synthesize(part.text, part.language, raw)
                piece = work / f"{stem}.{n}.wav"
                engines.sox.speech(raw, piece, PART_PAUSE if n < len(src.parts) - 1 else 0)
                pieces.append(piece)
            if len(pieces) == 1:
                pieces[0].replace(final)
            else:
                engines.sox.join(pieces, final)
        seconds = _check_wav(final)
    except SynthesisError as e:
        raise SynthesisError(f"{where}: {e}") from None
    for target in targets:
        _install(final, target)
    return seconds


def _check_wav(path: Path) -> float:
    try:
        with wave.open(str(path)) as w:
            if (w.getframerate(), w.getnchannels(), w.getsampwidth()) != (RATE, 1, 2):
                raise SynthesisError(f"converted file is {w.getframerate()} Hz, {w.getnchannels()} channel(s), "
                                     f"{8 * w.getsampwidth()} bit, not {OUTPUT_FORMAT}")
            frames = w.getnframes()
    except (wave.Error, EOFError, FileNotFoundError) as e:
        raise SynthesisError(f"no usable WAV was produced: {e}") from None
    if frames < RATE // 10:
        raise SynthesisError(f"produced only {frames / RATE:.2f} s of audio")
    return frames / RATE


def _install(src: Path, target: Path) -> None:
    """Copy ``src`` to ``target`` atomically: a temp file in the target's folder, then rename."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f, open(src, "rb") as s:
            shutil.copyfileobj(s, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)   # mkstemp makes 0600; the PBX runs as another user
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _remove(out_dir: Path, entry: dict) -> None:
    root = out_dir.resolve()
    for rel in entry.get("files", []):
        p = (out_dir / rel).resolve()
        if p.is_relative_to(root) and p.suffix == ".wav":   # a hand-edited manifest cannot aim elsewhere
            with contextlib.suppress(FileNotFoundError):
                p.unlink()


def _read_manifest(out_dir: Path) -> dict:
    try:
        data = json.loads((out_dir / MANIFEST).read_text(encoding="utf-8"))
        if data.get("format") == MANIFEST_FORMAT and isinstance(data.get("prompts"), dict):
            return data
    except (OSError, ValueError, AttributeError):
        pass
    return {"format": MANIFEST_FORMAT, "prompts": {}}   # none or unreadable: everything is rebuilt


def _write_manifest(out_dir: Path, manifest: dict) -> None:
    manifest["prompts"] = dict(sorted(manifest["prompts"].items()))
    fd, tmp = tempfile.mkstemp(prefix=f".{MANIFEST}.", suffix=".tmp", dir=out_dir)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(manifest, f, ensure_ascii=False, indent=1)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, out_dir / MANIFEST)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def _locked(out_dir: Path):
    """One build per output folder at a time."""
    import fcntl
    with open(out_dir / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
