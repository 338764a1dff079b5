"""Prompt names: how a (prompt id, language) pair becomes an Asterisk sound name.

Sounds live under ``<sounds dir>/madoguchi/<language>/<prompt>``; Asterisk picks the format.
Only ids and language codes from validated site data reach here, and both are checked again
because the result is sent to Asterisk as a file name.
"""
from __future__ import annotations

import re

_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_LANG = re.compile(r"^[a-z]{2}$")

# Prompts the call handler itself plays (the site's menus name the rest).
SYSTEM_PROMPTS = ("please-wait", "all-busy", "closed", "goodbye")


def sound_name(prompt: str, language: str) -> str:
    if not _ID.match(prompt) or not _LANG.match(language):
        raise ValueError(f"bad prompt reference {prompt!r}/{language!r}")
    return f"madoguchi/{language}/{prompt}"


def site_prompts(site) -> set[str]:
    """Every prompt id a site can play: menu prompts, message targets, and the system prompts."""
    ids = set(SYSTEM_PROMPTS)
    for menu in site.menus.values():
        ids.add(menu.prompt)
        for t in [*menu.options.values(), menu.on_timeout, menu.on_invalid]:
            if t is not None and t.kind == "message":
                ids.add(t.value)
    for q in site.queues.values():
        if q.overflow is not None and q.overflow.kind == "message":
            ids.add(q.overflow.value)
    return ids
