"""Prompt names: how a prompt id becomes a sound name, and where built prompt files live.

A sound name carries no language: ``madoguchi/<prompt>``. The channel's language picks the
folder, as Asterisk does with ``CHANNEL(language)``: ``sounds/<lang>/madoguchi/<prompt>.wav``
(FreeSWITCH: ``<sound_prefix>/<lang>/madoguchi/8000/<prompt>.wav``). Only ids and language codes
from validated site data reach here, and both are checked again because the result is sent to
the PBX as a file name.
"""
from __future__ import annotations

import re
from pathlib import Path

_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_LANG = re.compile(r"^[a-z]{2,3}$")

SOUND_FOLDER = "madoguchi"   # the folder under sounds/<lang>/ that holds every madoguchi prompt
RATE = 8000                  # built prompts: 8 kHz mono 16-bit PCM WAV

# Prompts the call handler itself plays (the site's menus name the rest).
SYSTEM_PROMPTS = ("recording-notice", "service-suspended", "congestion", "please-wait")


def check_prompt_id(prompt: str) -> str:
    if not isinstance(prompt, str) or not _ID.match(prompt):
        raise ValueError(f"bad prompt id {prompt!r}")
    return prompt


def check_language(language: str) -> str:
    if not isinstance(language, str) or not _LANG.match(language):
        raise ValueError(f"bad language code {language!r}")
    return language


def sound_name(prompt: str) -> str:
    """``madoguchi/<prompt>``: the name to hand to Playback/STREAM FILE/GET DATA.

    The channel language (``CHANNEL(language)``) selects the folder.
    """
    return f"{SOUND_FOLDER}/{check_prompt_id(prompt)}"


def asterisk_file(root: str | Path, language: str, prompt: str) -> Path:
    """``<root>/<lang>/madoguchi/<prompt>.wav`` (``root`` is Asterisk's sounds directory)."""
    return Path(root) / check_language(language) / SOUND_FOLDER / f"{check_prompt_id(prompt)}.wav"


def freeswitch_file(root: str | Path, language: str, prompt: str) -> Path:
    """``<root>/<lang>/madoguchi/8000/<prompt>.wav`` (``root`` is FreeSWITCH's sound_prefix parent)."""
    return Path(root) / check_language(language) / SOUND_FOLDER / str(RATE) / f"{check_prompt_id(prompt)}.wav"
