"""The IVR flow engine, sans I/O.

A call's path through the site's menus is a generator: it *yields* actions (play this, collect
digits, connect to that queue) and is *sent* the outcome of each. It never touches a socket, so
the FastAGI adapter (agi.call_handler) and the FreeSWITCH ESL adapter drive the very same code,
and tests drive it with plain values.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generator, Union


# ------------------------------------------------------------------ actions (flow -> adapter)

@dataclass(frozen=True)
class Answer:
    pass


@dataclass(frozen=True)
class Play:
    prompt: str
    language: str


@dataclass(frozen=True)
class Collect:
    """Play ``prompt`` and collect up to ``max_digits`` digits; outcome: ``Digits``."""
    prompt: str
    language: str
    timeout: float
    max_digits: int = 1


@dataclass(frozen=True)
class Connect:
    """Hand the caller to a queue; outcome: ``Connected``."""
    queue: str
    language: str


@dataclass(frozen=True)
class Transfer:
    """Send the caller to a city department over the OD trunk; outcome: ``Connected``."""
    entry: str
    language: str


@dataclass(frozen=True)
class Hangup:
    reason: str


Action = Union[Answer, Play, Collect, Connect, Transfer, Hangup]


# ------------------------------------------------------------------ outcomes (adapter -> flow)

@dataclass(frozen=True)
class Digits:
    digits: str
    timed_out: bool = False


@dataclass(frozen=True)
class Connected:
    ok: bool
    agent: str | None = None
    reason: str = ""          # answered | timeout | hangup | busy | notrunk ...


# ------------------------------------------------------------------ the record a flow leaves

@dataclass
class Trail:
    """What the call did, for the call log: ``path`` like ``main>2>language>1>general``."""

    steps: list[str] = field(default_factory=list)
    language: str = "ja"
    queue: str | None = None
    agent: str | None = None
    outcome: str = "abandoned"

    @property
    def path(self) -> str:
        return ">".join(self.steps)


MAX_MENU_VISITS = 20  # a caller looping through menus forever is shown the door politely


def run(site, dnid: str, trail: Trail) -> Generator[Action, object, Trail]:
    """The call flow for a call to ``dnid``. Outcomes arrive via ``send``; returns the trail."""
    number = site.number(dnid)
    if number is None:
        trail.outcome = "misrouted"
        yield Hangup("unknown number")
        return trail
    trail.language = site.languages[0] if site.languages else "ja"
    yield Answer()
    menu_id: str | None = number.menu
    previous: list[str] = []   # menus visited, for returning after a language choice
    visits = 0
    while menu_id is not None:
        visits += 1
        if visits > MAX_MENU_VISITS:
            trail.outcome = "no_input"
            yield Hangup("menu loop")
            return trail
        menu = site.menus[menu_id]
        trail.steps.append(menu.id)
        if not previous or previous[-1] != menu_id:
            previous.append(menu_id)
        target = yield from _menu(menu, trail)
        if target is None:                       # caller hung up or gave up
            return trail
        kind, value = target.kind, target.value
        if kind == "menu":
            menu_id = value
        elif kind == "repeat":
            del trail.steps[-2:]          # the key and the menu: the loop records the menu again
            menu_id = menu.id
        elif kind == "lang":
            trail.language = value
            trail.steps.append(f"lang:{value}")
            # back to the menu that offered the language choice, now in that language
            menu_id = previous[-2] if len(previous) >= 2 else number.menu
        elif kind == "queue":
            trail.steps.append(value)
            result = yield from _queue(site, value, trail)
            if not result.ok and result.reason != "hangup":
                overflow = site.queues[value].overflow
                if overflow is not None and overflow.kind == "queue" and overflow.value != value:
                    trail.steps.append(f"overflow:{overflow.value}")
                    result = yield from _queue(site, overflow.value, trail)
                elif overflow is not None and overflow.kind == "message":
                    yield Play(overflow.value, trail.language)
            yield Hangup(trail.outcome)
            return trail
        elif kind == "transfer":
            trail.steps.append(f"transfer:{value}")
            result = yield Transfer(value, trail.language)
            trail.outcome = "transferred" if result.ok else "abandoned" if result.reason == "hangup" else "failed"
            yield Hangup(trail.outcome)
            return trail
        elif kind == "message":
            trail.steps.append(f"message:{value}")
            yield Play(value, trail.language)
            trail.outcome = "message"
            yield Hangup("message")
            return trail
        else:  # hangup
            trail.outcome = "completed"
            yield Hangup("caller chose to end")
            return trail
    return trail


def _queue(site, queue_id: str, trail: Trail):
    trail.queue = queue_id
    result = yield Connect(queue_id, trail.language)
    trail.agent = result.agent
    trail.outcome = "answered" if result.ok else "abandoned" if result.reason == "hangup" else "unanswered"
    return result


def _menu(menu, trail: Trail):
    """Ask once, retry on timeout/invalid input; returns the chosen Target or None."""
    attempts = 0
    while True:
        got: Digits = yield Collect(menu.prompt, trail.language, menu.timeout, 1)
        if got is None:
            return None
        digit = got.digits[:1]
        if digit in menu.options:
            trail.steps.append(digit)
            return menu.options[digit]
        attempts += 1
        fallback = menu.on_timeout if not digit else menu.on_invalid
        if attempts > menu.retries:
            if fallback is None or fallback.kind == "repeat":
                trail.outcome = "no_input"
                yield Hangup("no valid choice")
                return None
            trail.steps.append("timeout" if not digit else "invalid")
            return fallback
