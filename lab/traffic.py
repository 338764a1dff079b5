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
    """Digits with the time each is pressed, for one pass through the number's flow (open hours)."""
    flow = site.flows[number.flow]
    t = ANSWER_SECONDS + (prompt_seconds("recording-notice") if number.recorded else 0.0)
    digits: list[tuple[float, str]] = []
    steps = []
    node = flow.nodes[flow.start]
    for _ in range(30):
        steps.append(node.id)
        k = node.kind
        if k == "play":
            t += prompt_seconds(node.prompt)
            node = flow.nodes[node.next]
            continue
        if k in ("time", "mode"):
            node = flow.nodes[node.open if k == "time" else node.normal]
            continue
        if k in ("menu", "language"):
            if rng.random() < 0.1:   # hesitates: the prompt plays out and the menu times out once
                t += prompt_seconds(node.prompt) + node.timeout + 0.1
            key = rng.choice(sorted(node.options))
            t += rng.uniform(*REACTION)
            digits.append((round(t, 3), key))
            t += 0.05
            steps.append(key)
            node = flow.nodes[node.options[key] if k == "menu" else node.next]
            continue
        break   # queue, transfer, hangup...: the caller's part is done
    return digits, ">".join(steps)
