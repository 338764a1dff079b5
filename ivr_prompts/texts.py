"""The prompt texts of a site: ``<site>/prompts.toml``.

```toml
[prompts.welcome]
ja = "お電話ありがとうございます。"
en = "Thank you for calling."
file.ja = "recordings/welcome-ja.wav"     # optional: an uploaded recording wins over synthesis

[prompts.main-menu]
# A text may be a list of parts; a part written { en = "..." } is spoken by that language's
# voice (an English sentence inside the Japanese menu, each language in its own voice).
ja = ["市の制度については1を押してください。", { en = "For English and other languages, press 9." }]
```

One key per language code of ``site.toml [site] languages``; every prompt needs a text (or a
recording) in each of them. Problems come back with file, line and field, like every other
site file (`provisioning.problems`).
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from provisioning.problems import Problem, ProblemsError, Reporter, read_toml, take, REQUIRED
from provisioning.values import LANG, PROMPT_ID

PROMPTS_FILE = "prompts.toml"
MAX_TEXT = 1000                      # characters per prompt text: a prompt is one or two sentences
RECORDING_SUFFIXES = (".wav",)       # uploaded recordings (any rate, channels, PCM/µ-law/A-law: sox reads them)


class PromptsError(ProblemsError):
    """prompts.toml (or the languages it is checked against) has problems."""


@dataclass(frozen=True)
class Part:
    language: str        # the voice that speaks it
    text: str


@dataclass(frozen=True)
class PromptSource:
    """What one (prompt, language) is made from: a recording, or text parts to synthesize."""
    prompt: str
    language: str
    parts: tuple[Part, ...] = ()
    recording: Path | None = None    # absolute; wins over the text
    line: int | None = None

    @property
    def key(self) -> str:
        return f"{self.prompt}/{self.language}"

    @property
    def text(self) -> str:
        return " ".join(p.text for p in self.parts)


@dataclass(frozen=True)
class PromptTexts:
    file: Path
    languages: tuple[str, ...]                              # the site's, first is the default
    prompts: dict[str, dict[str, PromptSource]] = field(default_factory=dict)   # id -> lang -> source

    def sources(self, languages: tuple[str, ...] | None = None) -> list[PromptSource]:
        langs = self.languages if languages is None else languages
        return [src for pid in sorted(self.prompts) for lang, src in self.prompts[pid].items() if lang in langs]

    def available(self) -> dict[str, frozenset[str]]:
        """Prompt id -> languages it can be built in (text or recording)."""
        return {pid: frozenset(by_lang) for pid, by_lang in self.prompts.items()}


def site_languages(site_dir: Path, problems: list[Problem]) -> tuple[str, ...]:
    """``[site] languages`` of site.toml, read on its own so a prompt build does not depend on
    the rest of the site being valid (``madoguchi check`` covers that)."""
    data, rep = read_toml(Path(site_dir) / "site.toml", problems)
    if data is None:
        return ()
    site = data.get("site")
    langs = site.get("languages") if isinstance(site, dict) else None
    if not isinstance(langs, list) or not langs or not all(isinstance(x, str) and LANG.match(x) for x in langs):
        rep.add(("site", "languages"), "must be a non-empty array of language codes like \"ja\"")
        return ()
    return tuple(langs)


def load_texts(site_dir: str | Path, problems: list[Problem] | None = None,
               languages: tuple[str, ...] | None = None) -> PromptTexts:
    """Read and check ``<site_dir>/prompts.toml``.

    With ``problems`` given, problems are appended there and whatever is valid is returned;
    without, any problem raises `PromptsError`. ``languages`` defaults to the site's.
    """
    sink: list[Problem] = [] if problems is None else problems
    before = len(sink)
    site_dir = Path(site_dir)
    if languages is None:
        languages = site_languages(site_dir, sink)
    texts = _Loader(site_dir, tuple(languages), sink).load()
    if problems is None and len(sink) > before:
        raise PromptsError(sink[before:])
    return texts


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


class _Loader:
    def __init__(self, site_dir: Path, languages: tuple[str, ...], problems: list[Problem]):
        self.dir = site_dir
        self.languages = languages
        self.problems = problems

    def load(self) -> PromptTexts:
        path = self.dir / PROMPTS_FILE
        out = PromptTexts(path, self.languages)
        data, rep = read_toml(path, self.problems)
        if data is None:
            return out
        top = take(rep, data, (), {"prompts": (dict, REQUIRED)})
        if not top["prompts"]:
            if top["prompts"] is not None:
                rep.add(("prompts",), "no prompts: add [prompts.<id>] tables")
            return out
        for pid, table in top["prompts"].items():
            p = ("prompts", pid)
            if not PROMPT_ID.match(pid):
                rep.add(p, "prompt id must match [a-z0-9][a-z0-9_-]{0,62} (it becomes a file name)")
                continue
            if not isinstance(table, dict):
                rep.add(p, "must be a table: [prompts.<id>] with one key per language")
                continue
            by_lang = self._prompt(rep, pid, table)
            if by_lang:
                out.prompts[pid] = by_lang
        return out

    def _prompt(self, rep: Reporter, pid: str, table: dict) -> dict[str, PromptSource]:
        p = ("prompts", pid)
        texts: dict[str, tuple[Part, ...]] = {}
        files: dict[str, Path] = {}
        for key, value in table.items():
            if key == "file":
                files = self._files(rep, p + ("file",), value)
            elif not LANG.match(key):
                rep.add(p + (key,), "unknown key (expected language codes like ja, en, and file.<lang>)")
            elif key not in self.languages:
                rep.add(p + (key,), f"language {key!r} is not in site.toml [site] languages")
            else:
                parts = self._parts(rep, p + (key,), key, value)
                if parts:
                    texts[key] = parts
        for lang in files:
            if lang not in self.languages:
                rep.add(p + ("file", lang), f"language {lang!r} is not in site.toml [site] languages")
        out = {}
        line = rep.lines.line(p) if rep.lines else None
        for lang in self.languages:
            if lang not in texts and lang not in files:
                if not _bad_value_reported(self.problems, rep.file, p + (lang,)):
                    rep.add(p, f"missing text for language {lang!r} (add {lang} = \"...\" or file.{lang})")
                continue
            out[lang] = PromptSource(pid, lang, texts.get(lang, ()), files.get(lang), line)
        return out

    def _parts(self, rep: Reporter, path: tuple, lang: str, value) -> tuple[Part, ...]:
        items = value if isinstance(value, list) else [value]
        if isinstance(value, list) and not value:
            rep.add(path, "empty list: give the text")
            return ()
        parts = []
        for i, item in enumerate(items):
            if isinstance(item, str):
                part_lang, text = lang, item
            elif isinstance(item, dict) and len(item) == 1:
                (part_lang, text), = item.items()
                if part_lang not in self.languages:
                    rep.add(path, f"part {i + 1}: language {part_lang!r} is not in site.toml [site] languages")
                    return ()
                if not isinstance(text, str):
                    rep.add(path, f"part {i + 1}: {{ {part_lang} = ... }} must be a string")
                    return ()
            else:
                rep.add(path, "must be a string, or a list of strings and { <lang> = \"...\" } parts"
                        if not isinstance(value, list) else
                        f"part {i + 1}: must be a string or {{ <lang> = \"...\" }}")
                return ()
            text = unicodedata.normalize("NFC", text).strip()
            if not text:
                rep.add(path, "empty text" if len(items) == 1 else f"part {i + 1}: empty text")
                return ()
            if _CONTROL.search(text):
                rep.add(path, "control characters are not allowed in a prompt text")
                return ()
            parts.append(Part(part_lang, text))
        if sum(len(x.text) for x in parts) > MAX_TEXT:
            rep.add(path, f"text longer than {MAX_TEXT} characters: split it into several prompts")
            return ()
        return tuple(parts)

    def _files(self, rep: Reporter, path: tuple, value) -> dict[str, Path]:
        if not isinstance(value, dict):
            rep.add(path, "must be a table: file.<lang> = \"recordings/<name>.wav\"")
            return {}
        out = {}
        root = self.dir.resolve()
        for lang, rel in value.items():
            p = path + (lang,)
            if not LANG.match(lang):
                rep.add(p, "must be a language code like ja")
                continue
            if not isinstance(rel, str) or not rel.strip():
                rep.add(p, "must be a path relative to the site folder, like \"recordings/welcome-ja.wav\"")
                continue
            rp = Path(rel)
            if rp.is_absolute() or ".." in rp.parts:
                rep.add(p, "must be a path inside the site folder (relative, no '..')")
                continue
            full = (self.dir / rp).resolve()
            if not full.is_relative_to(root):
                rep.add(p, "must be a file inside the site folder (it links outside)")
                continue
            if full.suffix.lower() not in RECORDING_SUFFIXES:
                rep.add(p, f"recording must be a {'/'.join(RECORDING_SUFFIXES)} file")
                continue
            if not full.is_file():
                rep.add(p, f"recording {rel} not found in the site folder")
                continue
            out[lang] = full
        return out


def _bad_value_reported(problems: list[Problem], file: str, path: tuple) -> bool:
    """A text that was present but invalid already has its own problem: no 'missing' on top."""
    from provisioning.problems import format_path
    field_ = format_path(path)
    return any(pr.file == file and pr.field == field_ for pr in problems)
