"""Voice prompts: prompts.toml checks, the offline build (Open JTalk, espeak-ng, sox), the
incremental manifest, both PBX layouts, and the lab emulator playing the built files by
channel language."""
from __future__ import annotations

import array
import asyncio
import json
import math
import shutil
import subprocess
import wave
from pathlib import Path
from types import SimpleNamespace

import pytest

from ivr_prompts import build as build_mod
from ivr_prompts.build import EngineMissing, build_prompts
from ivr_prompts.catalog import asterisk_file, freeswitch_file, sound_name
from ivr_prompts.texts import PromptsError, load_texts

SENDAI = Path(__file__).resolve().parents[1] / "lab" / "sites" / "sendai"
LANGS = ("ja", "en", "zh", "ko", "vi", "ne")
RMS_FLOOR = 300          # of 32767: speech normalised to -3 dBFS sits far above this


def _audio(path: Path) -> tuple[int, int, int, float, float]:
    """(rate, channels, sample width, seconds, RMS)."""
    with wave.open(str(path)) as w:
        rate, ch, width, n = w.getframerate(), w.getnchannels(), w.getsampwidth(), w.getnframes()
        data = array.array("h", w.readframes(n))
    rms = math.sqrt(sum(x * x for x in data) / len(data)) if data else 0.0
    return rate, ch, width, n / rate, rms


def _files(out: Path, prompt: str, lang: str) -> list[Path]:
    return [asterisk_file(out / "asterisk", lang, prompt), freeswitch_file(out / "freeswitch", lang, prompt)]


def _site(tmp: Path, prompts: str, languages=("ja", "en")) -> Path:
    site = tmp / "site"
    site.mkdir(parents=True, exist_ok=True)
    langs = ", ".join(f'"{x}"' for x in languages)
    (site / "site.toml").write_text(f'[site]\nid = "t"\nname = "t"\nlanguages = [{langs}]\nskills = ["general"]\n',
                                    encoding="utf-8")
    (site / "prompts.toml").write_text(prompts, encoding="utf-8")
    return site


@pytest.fixture(scope="module")
def sendai_build(tmp_path_factory):
    """The whole Sendai site in all six languages, built once (about 12 s on 2 cores)."""
    out = tmp_path_factory.mktemp("prompts") / "out"
    report = build_prompts(SENDAI, out)
    return out, report


# --- the full build ------------------------------------------------------------------------

def test_sendai_texts_cover_every_language():
    texts = load_texts(SENDAI)
    assert texts.languages == LANGS
    for pid in ("welcome", "recording-notice", "main-menu", "language-menu", "faq-guide", "invalid", "no-input",
                "please-wait", "congestion", "all-busy", "after-hours", "service-suspended", "disaster-greeting",
                "disaster-menu", "disaster-congestion", "goodbye", "transfer-failed", "department-menu"):
        assert set(texts.prompts[pid]) == set(LANGS), pid
    # the Japanese main menu says its "press 9" in English, in the English voice
    parts = texts.prompts["main-menu"]["ja"].parts
    assert [p.language for p in parts] == ["ja", "en"] and "press 9" in parts[1].text
    assert [p.language for p in texts.prompts["language-menu"]["vi"].parts] == list(LANGS)


def test_full_build_every_file_in_both_layouts(sendai_build):
    out, report = sendai_build
    texts = load_texts(SENDAI)
    keys = {s.key for s in texts.sources()}
    assert report.ok, report.failed
    assert set(report.built) == keys and len(keys) == len(texts.prompts) * 6
    for src in texts.sources():
        a, f = _files(out, src.prompt, src.language)
        assert a.read_bytes() == f.read_bytes(), src.key
        rate, ch, width, seconds, rms = _audio(a)
        assert (rate, ch, width) == (8000, 1, 2), src.key
        assert 0.8 < seconds < 60, (src.key, seconds)
        assert rms > RMS_FLOOR, (src.key, rms)
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert set(manifest["prompts"]) == keys
    assert manifest["prompts"]["main-menu/ja"]["source"] == "open-jtalk+espeak-ng"
    assert manifest["prompts"]["welcome/ko"]["source"] == "espeak-ng"
    # the multi-language menu is longer than its Japanese text alone would be
    assert _audio(_files(out, "language-menu", "ja")[0])[3] > 8


def test_second_build_rebuilds_nothing(sendai_build):
    out, first = sendai_build
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.wav")}
    again = build_prompts(SENDAI, out)
    assert again.built == [] and again.removed == [] and again.ok
    assert sorted(again.unchanged) == sorted(first.built)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.wav")} == before


@pytest.fixture
def sendai_copy(sendai_build, tmp_path):
    """A copy of the site and of its built output, to change without rebuilding everything."""
    out, _ = sendai_build
    site, out2 = tmp_path / "sendai", tmp_path / "out"
    shutil.copytree(SENDAI, site)
    shutil.copytree(out, out2)
    return site, out2


def _replace_text(site: Path, old: str, new: str):
    p = site / "prompts.toml"
    text = p.read_text(encoding="utf-8")
    assert text.count(old) == 1
    p.write_text(text.replace(old, new), encoding="utf-8")


def test_changing_one_text_rebuilds_exactly_that_file(sendai_copy):
    site, out = sendai_copy
    before = {p: p.read_bytes() for p in out.rglob("*.wav")}
    _replace_text(site, 'en = "Thank you for calling. Goodbye."', 'en = "Thank you for calling Sendai. Goodbye."')
    report = build_prompts(site, out)
    assert report.built == ["goodbye/en"] and report.removed == [] and report.ok
    changed = {p for p in out.rglob("*.wav") if p.read_bytes() != before.get(p)}
    assert changed == set(_files(out, "goodbye", "en"))


def test_override_recording_wins_and_is_converted(sendai_copy):
    site, out = sendai_copy
    (site / "recordings").mkdir()
    rec = site / "recordings" / "goodbye-ja.wav"
    # 44.1 kHz stereo, 2.5 s: must come out 8 kHz mono 16-bit, same length
    subprocess.run(["sox", "-n", "-r", "44100", "-c", "2", "-b", "16", str(rec), "synth", "2.5", "sine", "440"],
                   check=True)
    _replace_text(site, 'ja = "お電話ありがとうございました。失礼いたします。"',
                  'ja = "お電話ありがとうございました。失礼いたします。"\nfile.ja = "recordings/goodbye-ja.wav"')
    report = build_prompts(site, out)
    assert report.built == ["goodbye/ja"], report
    for f in _files(out, "goodbye", "ja"):
        rate, ch, width, seconds, rms = _audio(f)
        assert (rate, ch, width) == (8000, 1, 2) and abs(seconds - 2.5) < 0.02 and rms > RMS_FLOOR
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["prompts"]["goodbye/ja"]["source"] == "recording"
    assert build_prompts(site, out).built == []
    # a new recording (same name, other bytes) is picked up
    subprocess.run(["sox", "-n", "-r", "16000", "-c", "1", str(rec), "synth", "1.5", "sine", "300"], check=True)
    assert build_prompts(site, out).built == ["goodbye/ja"]
    assert abs(_audio(_files(out, "goodbye", "ja")[0])[3] - 1.5) < 0.02


def test_removed_prompt_loses_its_files(sendai_copy):
    site, out = sendai_copy
    text = (site / "prompts.toml").read_text(encoding="utf-8")
    start = text.index("[prompts.department-menu]")
    (site / "prompts.toml").write_text(text[:start], encoding="utf-8")
    report = build_prompts(site, out)
    assert sorted(report.removed) == sorted(f"department-menu/{x}" for x in LANGS) and report.built == []
    for lang in LANGS:
        assert not any(f.exists() for f in _files(out, "department-menu", lang))
    assert _files(out, "goodbye", "ja")[0].exists()
    assert not any(k.startswith("department-menu/")
                   for k in json.loads((out / "manifest.json").read_text(encoding="utf-8"))["prompts"])


def test_one_language_build_keeps_the_others(sendai_copy):
    site, out = sendai_copy
    _replace_text(site, 'en = "Thank you for calling. Goodbye."', 'en = "Goodbye now."')
    report = build_prompts(site, out, languages=["ja"])
    assert report.built == [] and report.removed == [] and len(report.unchanged) == len(load_texts(site).prompts)
    assert build_prompts(site, out, languages=["en"]).built == ["goodbye/en"]


def test_failed_synthesis_names_the_prompt_and_keeps_the_manifest(sendai_copy):
    site, out = sendai_copy
    (site / "recordings").mkdir()
    (site / "recordings" / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" + b"\x00" * 64)
    old = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    _replace_text(site, 'en = "Thank you for calling. Goodbye."',
                  'en = "Thank you for calling. Goodbye."\nfile.en = "recordings/broken.wav"')
    _replace_text(site, 'en = "This call will be recorded to improve our service."',
                  'en = "This call is recorded to improve our service."')
    before = _files(out, "goodbye", "en")[0].read_bytes()
    report = build_prompts(site, out)
    assert list(report.failed) == ["goodbye/en"] and "goodbye/en" in report.failed["goodbye/en"]
    assert report.built == ["recording-notice/en"]
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["prompts"]["goodbye/en"] == old["prompts"]["goodbye/en"]   # old entry: retried next time
    assert _files(out, "goodbye", "en")[0].read_bytes() == before            # the old file still plays
    assert not list(out.rglob("*.tmp")) and not list(out.glob(".build-*"))
    assert "goodbye/en" in build_prompts(site, out).failed


def test_missing_engine_names_the_debian_package(tmp_path, monkeypatch):
    site = _site(tmp_path, '[prompts.hello]\nja = "こんにちは。"\nen = "Hello."\n')
    real = shutil.which
    monkeypatch.setattr(build_mod.shutil, "which", lambda name, *a, **k: None if name == "espeak-ng" else real(name))
    with pytest.raises(EngineMissing, match=r"Debian package espeak-ng"):
        build_prompts(site, tmp_path / "out")
    assert not (tmp_path / "out" / "asterisk").exists()


# --- texts and their problems --------------------------------------------------------------

def test_malformed_prompts_toml_gives_file_and_line(tmp_path):
    site = _site(tmp_path, '[prompts.hello]\nja = "こんにちは。"\nen = "Hello.\n')   # unterminated string, line 3
    problems = []
    load_texts(site, problems)
    assert len(problems) == 1
    p = problems[0]
    assert p.file.endswith("prompts.toml") and p.line == 3 and "invalid TOML" in p.message
    with pytest.raises(PromptsError) as e:
        build_prompts(site, tmp_path / "out")
    assert str(e.value).startswith(f"{site / 'prompts.toml'}:3: ")
    assert not (tmp_path / "out").exists()


def test_missing_language_text_is_reported(tmp_path):
    site = _site(tmp_path, '[prompts.hello]\nja = "こんにちは。"\nen = "Hello."\n\n'
                           '[prompts.bye]\nja = "さようなら。"\n')
    problems = []
    texts = load_texts(site, problems)
    assert [(p.line, p.field) for p in problems] == [(5, "prompts.bye")]
    assert "missing text for language 'en'" in problems[0].message
    assert texts.available() == {"hello": frozenset({"ja", "en"}), "bye": frozenset({"ja"})}
    with pytest.raises(PromptsError, match="missing text for language 'en'"):
        build_prompts(site, tmp_path / "out")


@pytest.mark.parametrize("body,line,field,words", [
    ('[prompts.hello]\nja = "こんにちは。"\nen = "Hello."\nfr = "Bonjour."\n', 4, "prompts.hello.fr",
     "not in site.toml"),
    ('[prompts.hello]\nja = "こんにちは。"\nen = ""\n', 3, "prompts.hello.en", "empty text"),
    ('[prompts.hello]\nja = "こんにちは。"\nen = 3\n', 3, "prompts.hello.en", "must be a string"),
    ('[prompts.hello]\nja = ["こんにちは。", { de = "Hallo" }]\nen = "Hello."\n', 2, "prompts.hello.ja",
     "'de' is not in site.toml"),
    ('[prompts.hello]\nja = "こんにちは。"\nen = "Hello."\nfile.en = "../outside.wav"\n', 4,
     "prompts.hello.file.en", "inside the site folder"),
    ('[prompts.hello]\nja = "こんにちは。"\nen = "Hello."\nfile.en = "recordings/none.wav"\n', 4,
     "prompts.hello.file.en", "not found"),
    ('[prompts."Bad Id"]\nja = "x"\nen = "y"\n', 1, 'prompts."Bad Id"', "prompt id must match"),
    ('[prompts.hello]\nja = "こんにちは\\u0007"\nen = "Hello."\n', 2, "prompts.hello.ja", "control characters"),
])
def test_text_problems_point_at_the_field(tmp_path, body, line, field, words):
    problems = []
    load_texts(_site(tmp_path, body), problems)
    assert [(p.line, p.field) for p in problems] == [(line, field)], problems
    assert words in problems[0].message


# --- injection -----------------------------------------------------------------------------

def test_shell_metacharacters_are_spoken_not_run(tmp_path):
    marker = tmp_path / "pwned"
    keep = tmp_path / "keep"
    keep.mkdir()
    nasty = f"$(touch {marker}); `touch {marker}2`; rm -rf {keep} && echo hi > {marker}3 | cat; -v en"
    site = _site(tmp_path, "[prompts.nasty]\n"
                           f"ja = {json.dumps('料金は' + nasty)}\n"
                           f"en = {json.dumps(nasty)}\n"
                           f"[prompts.dash]\nja = \"--help\"\nen = \"-w /tmp/x.wav --stdin\"\n")
    out = tmp_path / "out"
    report = build_prompts(site, out)
    assert report.ok and sorted(report.built) == ["dash/en", "dash/ja", "nasty/en", "nasty/ja"]
    assert not list(tmp_path.glob("pwned*")) and keep.is_dir()
    for lang in ("ja", "en"):
        rate, ch, width, seconds, rms = _audio(_files(out, "nasty", lang)[0])
        assert (rate, ch, width) == (8000, 1, 2) and rms > RMS_FLOOR
        assert seconds > 4, seconds           # the whole text was spoken, not cut at a metacharacter
    assert _audio(_files(out, "dash", "en")[0])[3] > 1   # "-w ..." is text, not an espeak-ng option


def test_sound_name_has_no_language():
    assert sound_name("main-menu") == "madoguchi/main-menu"
    for bad in ("../etc/passwd", "a b", "", "Main"):
        with pytest.raises(ValueError):
            sound_name(bad)


# --- the lab emulator plays the built files by channel language ----------------------------

def test_sounds_resolve_by_language_like_asterisk(sendai_build, tmp_path):
    from lab.media import Sounds
    out, _ = sendai_build
    sounds = Sounds(sounds_dir=out / "asterisk")
    for lang in LANGS:
        want = _audio(_files(out, "goodbye", lang)[0])[3]
        assert sounds.lookup("madoguchi/goodbye", lang) == (pytest.approx(want), 8000)
    en = sounds.lookup("madoguchi/goodbye", "en")
    assert sounds.lookup("madoguchi/goodbye", "fr") == en          # falls back to en, as Asterisk does
    assert sounds.lookup("madoguchi/goodbye", "ja_JP")[0] == sounds.lookup("madoguchi/goodbye", "ja")[0]
    assert sounds.lookup("madoguchi/nothing", "ja") is None
    # a rebuilt file is measured again
    d = tmp_path / "snd" / "ja"
    d.mkdir(parents=True)
    subprocess.run(["sox", "-n", "-r", "8000", "-c", "1", "-b", "16", str(d / "x.wav"), "synth", "1", "sine", "440"],
                   check=True)
    s2 = Sounds(sounds_dir=tmp_path / "snd")
    assert s2.lookup("x", "ja")[0] == pytest.approx(1.0)
    subprocess.run(["sox", "-n", "-r", "8000", "-c", "1", "-b", "16", str(d / "x.wav"), "synth", "2.25", "sine", "440"],
                   check=True)
    assert s2.lookup("x", "ja")[0] == pytest.approx(2.25)


def test_channel_language_is_set_by_the_channel_function():
    from lab.channels import Channel, EventBus
    events = []
    bus = EventBus()
    bus.subscribe(events.append)
    ch = Channel(SimpleNamespace(bus=bus), "PJSIP/x-1", "1")
    ch.set_var("CHANNEL(language)", "ja")
    assert ch.language == "ja" and ch.get_var("CHANNEL(language)") == "ja"
    assert "CHANNEL(language)" not in ch.vars and events == []   # a function write: no VarSet


async def test_emulator_plays_the_built_prompt_of_the_channel_language(sendai_build):
    from lab.pbx import CallerScript, LabPBX
    out, _ = sendai_build
    frames = {lang: round(_audio(_files(out, "goodbye", lang)[0])[3] * 8000) for lang in ("en", "ja", "ko")}
    replies: list[str] = []

    async def app(reader, writer):
        while (await reader.readline()) not in (b"\n", b""):
            pass
        for cmd in ("ANSWER", 'STREAM FILE madoguchi/goodbye ""', "SET VARIABLE CHANNEL(language) ja",
                    'STREAM FILE madoguchi/goodbye ""', "GET VARIABLE CHANNEL(language)",
                    "EXEC Set CHANNEL(language)=ko", 'STREAM FILE madoguchi/goodbye ""',
                    'STREAM FILE madoguchi/nothing ""'):
            writer.write(cmd.encode() + b"\n")
            await writer.drain()
            replies.append((await asyncio.wait_for(reader.readline(), 10)).decode().strip())
        writer.close()

    srv = await asyncio.start_server(app, "127.0.0.1", 0)
    pbx = LabPBX(routes={"7100": "prompts"}, sounds_dir=str(out / "asterisk"), time_scale=0.005,
                 agi_port=srv.sockets[0].getsockname()[1])
    try:
        await asyncio.wait_for(pbx.call(CallerScript("0223984894", "7100")), 30)
    finally:
        srv.close()
    assert replies[1] == f"200 result=0 endpos={frames['en']}"
    assert replies[3] == f"200 result=0 endpos={frames['ja']}"
    assert replies[4] == "200 result=1 (ja)"
    assert replies[6] == f"200 result=0 endpos={frames['ko']}"
    assert replies[7] == "200 result=-1 endpos=0"
