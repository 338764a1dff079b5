"""Realistic caller scripts for the lab: who calls which number, what they press and when.

A caller walks the site's menus the way a resident does: listens a little, presses a key while
the prompt plays (GET DATA is interrupted by the first digit), sometimes hesitates past the
timeout, sometimes gives up while waiting for an operator.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

ANSWER_SECONDS = 0.5      # a ringing channel's ANSWER took ~0.5 s on the real Asterisk
REACTION = (0.8, 2.5)     # seconds into a prompt before the caller presses a key


@dataclass
class PlannedCall:
    at: float                 # arrival, seconds after the stream starts
    caller_id: str
    dialed: str
    digits: list[tuple[float, str]]
    intent: str               # where the caller means to go, e.g. "main>1>general"
    patience: float | None
    hangup_at: float | None


def plan_calls(site, n: int, rng: random.Random, prompt_seconds, mean_gap: float = 8.0) -> list[PlannedCall]:
    normal = [x for x in site.numbers if x.mode != "disaster"] or list(site.numbers)
    calls, t = [], 0.0
    for i in range(n):
        t += rng.expovariate(1 / mean_gap)
        number = normal[0] if rng.random() < 0.9 else rng.choice(site.numbers)
        digits, intent = _walk(site, number, rng, prompt_seconds)
        patience = rng.uniform(30, 180) if rng.random() < 0.85 else rng.uniform(5, 20)
        hangup_at = rng.uniform(2, 6) if rng.random() < 0.05 else None   # hangs up in the IVR
        caller = "0" + rng.choice(["22", "80", "90", "70"]) + "".join(rng.choice("0123456789") for _ in range(8))
        calls.append(PlannedCall(t, caller, number.number, digits, intent, patience, hangup_at))
    return calls


def _walk(site, number, rng, prompt_seconds):
    """Digits with the time each is pressed, for one pass through the menus."""
    t = ANSWER_SECONDS
    digits: list[tuple[float, str]] = []
    steps = [number.menu]
    menu_id = number.menu
    visited: list[str] = []
    for _ in range(6):
        menu = site.menus[menu_id]
        if not visited or visited[-1] != menu_id:
            visited.append(menu_id)
        if rng.random() < 0.1:   # hesitates: the prompt plays out and the menu times out once
            t += prompt_seconds(menu.prompt) + menu.timeout + 0.1
        choices = [d for d, tg in menu.options.items() if tg.kind not in ("hangup", "repeat")]
        if not choices:
            break
        digit = rng.choice(choices)
        t += rng.uniform(*REACTION)
        digits.append((round(t, 3), digit))
        t += 0.05
        target = menu.options[digit]
        steps.append(digit)
        if target.kind == "menu":
            menu_id = target.value
            steps.append(menu_id)
            continue
        if target.kind == "lang":
            steps.append(f"lang:{target.value}")
            # like dialplan.flow: back to the menu that offered the language choice
            menu_id = visited[-2] if len(visited) >= 2 else number.menu
            continue
        steps.append(target.value)
        break
    return digits, ">".join(steps)
