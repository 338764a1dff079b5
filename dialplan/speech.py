"""Speech input, sans I/O: grammars of expected phrases and matching recognised text to them.

An IVR node may ask the caller to *say* what they want. Its grammar maps each expected phrase to
a flow target id. The recogniser (``ivr_prompts.recognizer``) is constrained to the phrases
(:func:`vosk_grammar`) and its text is mapped back with :func:`match`.

Normalisation (:func:`normalize`): Unicode NFKC (full-width letters and digits become ASCII,
half-width katakana becomes full-width katakana; kana are *not* turned into kanji, so ``ｼﾐﾝｾﾞｲ``
never equals ``市民税``), lower case, and every space, punctuation mark and symbol removed, so
``市民 税 課`` equals ``市民税課`` and ``Ｗｉ－Ｆｉ`` equals ``wifi``.

Matching (:func:`match`) tolerates a recogniser that adds or drops small words. The text is split
into tokens (on spaces/punctuation); for every contiguous window of tokens the score is

    difflib ratio(normalize(phrase), normalize(window)) - EXTRA_TOKEN_PENALTY * tokens outside

and the phrase's score is the best window's (at least 0). So ``市民税課 です`` scores 0.95,
``市民税`` against ``市民税課`` 0.86 (a dropped character), and a long sentence that merely
contains the phrase loses 0.05 per extra token. A phrase matches when its score is at least
:data:`MATCH_THRESHOLD` (0.75); the best target wins, but if a *different* target scores within
:data:`AMBIGUITY_MARGIN` (0.05) of it the answer is ``None`` (``세무과 민원``, naming two
departments, is not a choice). Recognisers constrained to a grammar tend to explain an unrelated
utterance as a string of several phrases; the ambiguity rule rejects those.
"""
from __future__ import annotations

import difflib
import json
import unicodedata
from dataclasses import dataclass, field
from typing import Callable, Mapping

MATCH_THRESHOLD = 0.75
AMBIGUITY_MARGIN = 0.05
EXTRA_TOKEN_PENALTY = 0.05
MAX_TOKENS = 40  # longer texts are cut: a grammar answer is a few words

def _is_separator(ch: str) -> bool:
    cat = unicodedata.category(ch)
    return cat[0] in "PZS" or cat in ("Cc", "Cf")


def normalize(text: str) -> str:
    """NFKC, lower case, spaces/punctuation/symbols removed."""
    text = unicodedata.normalize("NFKC", text).lower()
    return "".join(ch for ch in text if not _is_separator(ch))


def tokens(text: str) -> list[str]:
    """NFKC + lower case words, split on spaces, punctuation and symbols."""
    text = unicodedata.normalize("NFKC", text).lower()
    out, cur = [], []
    for ch in text:
        if _is_separator(ch):
            if cur:
                out.append("".join(cur))
                cur = []
        else:
            cur.append(ch)
    if cur:
        out.append("".join(cur))
    return out


@dataclass(frozen=True)
class Grammar:
    """Expected phrases, each mapped to a flow target id (``queue:tax``, ``menu:main``, ...).

    Several phrases may share a target (synonyms). Phrases that normalise to nothing or to the
    same string as another phrase with a different target are refused.
    """
    phrases: Mapping[str, str]
    _norm: dict[str, tuple[str, str]] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        if not self.phrases:
            raise ValueError("a grammar needs at least one phrase")
        norm: dict[str, tuple[str, str]] = {}
        for phrase, target in self.phrases.items():
            if not isinstance(phrase, str) or not isinstance(target, str):
                raise TypeError("grammar phrases and targets are strings")
            key = normalize(phrase)
            if not key:
                raise ValueError(f"grammar phrase {phrase!r} is empty after normalisation")
            if "\n" in phrase or "\r" in phrase or "[" in phrase:
                raise ValueError(f"grammar phrase {phrase!r} contains a line break or '['")
            if not target.strip():
                raise ValueError(f"grammar phrase {phrase!r} has an empty target")
            if key in norm and norm[key][1] != target:
                raise ValueError(f"grammar phrases {norm[key][0]!r} and {phrase!r} are the same "
                                 f"after normalisation but lead to different targets")
            norm[key] = (phrase, target)
        object.__setattr__(self, "phrases", dict(self.phrases))
        object.__setattr__(self, "_norm", norm)

    @property
    def targets(self) -> set[str]:
        return set(self.phrases.values())

    def normalized(self) -> dict[str, str]:
        """normalised phrase -> target."""
        return {k: t for k, (_, t) in self._norm.items()}


def phrase_score(phrase: str, text: str) -> float:
    """How well ``text`` says ``phrase`` (0..1); see the module docstring."""
    p = normalize(phrase)
    toks = [normalize(t) for t in tokens(text)][:MAX_TOKENS]
    toks = [t for t in toks if t]
    if not p or not toks:
        return 0.0
    best = 0.0
    n = len(toks)
    for i in range(n):
        for j in range(i + 1, n + 1):
            window = "".join(toks[i:j])
            # a window far longer than the phrase cannot win; skip the difflib work
            if len(window) > 2 * len(p) + 2 and j > i + 1:
                break
            score = difflib.SequenceMatcher(None, p, window, autojunk=False).ratio()
            score -= EXTRA_TOKEN_PENALTY * (n - (j - i))
            best = max(best, score)
    return max(best, 0.0)


def match(text: str, grammar: Grammar, threshold: float = MATCH_THRESHOLD) -> tuple[str | None, float]:
    """Map recognised ``text`` to a target of ``grammar``: ``(target, score)`` or ``(None, score)``.

    ``score`` is the best phrase's score even when no target is returned (below the threshold,
    or ambiguous between two targets).
    """
    if not text or not normalize(text):
        return None, 0.0
    per_target: dict[str, float] = {}
    for phrase, target in grammar.phrases.items():
        s = phrase_score(phrase, text)
        if s > per_target.get(target, -1.0):
            per_target[target] = s
    ranked = sorted(per_target.items(), key=lambda kv: kv[1], reverse=True)
    target, score = ranked[0]
    if score < threshold:
        return None, score
    if len(ranked) > 1 and ranked[1][1] >= threshold and score - ranked[1][1] < AMBIGUITY_MARGIN:
        return None, score
    return target, score


def vosk_grammar(grammar: Grammar, in_vocabulary: Callable[[str], bool] | None = None,
                 unk: str = "[unk]") -> str:
    """The JSON list vosk's ``KaldiRecognizer`` takes: the phrases, then ``unk``.

    Phrases are NFKC + lower case with punctuation turned into single spaces (vosk splits them on
    spaces into vocabulary words). With ``in_vocabulary`` (the model's word lookup), a word the
    model does not know is split into known words where possible (``건강복지국`` ->
    ``건강 복지국``); a phrase that still has an unknown word is left out, since vosk would
    silently drop that word and accept the rest. ``unk`` is the model's garbage word (``[unk]``
    in most vosk models); ``None`` leaves it out.
    """
    out: list[str] = []
    for phrase in grammar.phrases:
        words = tokens(phrase)
        if in_vocabulary is not None:
            split: list[str] = []
            for w in words:
                parts = segment(w, in_vocabulary)
                if parts is None:
                    split = []
                    break
                split.extend(parts)
            words = split
        if words:
            line = " ".join(words)
            if line not in out:
                out.append(line)
    if unk:
        out.append(unk)
    return json.dumps(out, ensure_ascii=False)


def segment(word: str, in_vocabulary: Callable[[str], bool], max_len: int = 12) -> list[str] | None:
    """Split ``word`` into the fewest vocabulary words (``None`` if impossible)."""
    if in_vocabulary(word):
        return [word]
    n = len(word)
    best: list[list[str] | None] = [None] * (n + 1)
    best[0] = []
    for end in range(1, n + 1):
        for start in range(max(0, end - max_len), end):
            prev = best[start]
            if prev is None:
                continue
            piece = word[start:end]
            if in_vocabulary(piece):
                cand = prev + [piece]
                if best[end] is None or len(cand) < len(best[end]):
                    best[end] = cand
    return best[n]
