"""The call-flow engine, sans I/O.

A call's walk through its flow (``flows.toml``) is a generator: it *yields* actions (play this,
collect digits, hand to that queue) and is *sent* the outcome of each. It never touches a
socket, so the FastAGI adapter (agi.call_handler) and the FreeSWITCH adapter drive the very same
code, and tests drive it with plain values. The clock and the service mode come in through
``Context`` so scenario tests can set any date and mode.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Callable, Generator, Union

from .modes import ServiceState


# ------------------------------------------------------------------ actions (flow -> adapter)

@dataclass(frozen=True)
class Answer:
    pass


@dataclass(frozen=True)
class SetLanguage:
    """Prompts from now on in this language (Asterisk: CHANNEL(language))."""
    language: str


@dataclass(frozen=True)
class Play:
    """Outcome: the key that interrupted it (``Digits``) or None."""
    prompt: str
    interruptible: bool = False


@dataclass(frozen=True)
class Collect:
    """Play ``prompt`` and collect up to ``max_digits`` digits; outcome: ``Digits``."""
    prompt: str
    timeout: float
    max_digits: int = 1
    terminator: str = "#"


@dataclass(frozen=True)
class Listen:
    """Play ``prompt`` and recognise speech against ``phrases``; outcome: ``Heard``."""
    prompt: str
    phrases: tuple[str, ...]
    timeout: float
    language: str


@dataclass(frozen=True)
class Connect:
    """Hand the caller to a queue; outcome: ``Connected``."""
    queue: str
    language: str
    skills: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    priority: int = 0


@dataclass(frozen=True)
class Transfer:
    """Send the caller to a city department over the OD trunk; outcome: ``Connected``."""
    entry: str
    language: str


@dataclass(frozen=True)
class Hangup:
    reason: str


Action = Union[Answer, SetLanguage, Play, Collect, Listen, Connect, Transfer, Hangup]


# ------------------------------------------------------------------ outcomes (adapter -> flow)

@dataclass(frozen=True)
class Digits:
    digits: str
    timed_out: bool = False


@dataclass(frozen=True)
class Heard:
    available: bool            # False: no recogniser; the flow falls back to keys
    phrase: str | None = None  # the grammar phrase recognised, if any


@dataclass(frozen=True)
class Connected:
    ok: bool
    agent: str | None = None
    reason: str = ""          # answered | timeout | hangup | busy | notrunk ...


# ------------------------------------------------------------------ context and trail

@dataclass(frozen=True)
class Context:
    now: Callable[[], datetime]                 # aware datetime
    state: Callable[[], ServiceState] = ServiceState


@dataclass
class Trail:
    """What the call did, for the call log: ``path`` like ``main:hours>welcome>menu>1>general``."""

    steps: list[str] = field(default_factory=list)
    language: str = "ja"
    queue: str | None = None
    agent: str | None = None
    tags: list[str] = field(default_factory=list)
    values: dict[str, str] = field(default_factory=dict)   # collect nodes; never stored
    outcome: str = "abandoned"

    @property
    def path(self) -> str:
        return ">".join(self.steps)


MAX_STEPS = 200   # a caller wandering the menus forever is shown the door politely
DISASTER_PRIORITY = 10


def run(site, dnid: str, trail: Trail, ctx: Context) -> Generator[Action, object, Trail]:
    """The call flow for a call to ``dnid``; returns the trail."""
    number = site.number(dnid)
    if number is None:
        trail.outcome = "misrouted"
        yield Hangup("unknown number")
        return trail
    yield Answer()
    trail.language = site.languages[0]
    yield SetLanguage(trail.language)
    state = ctx.state()
    if state.mode == "emergency":
        trail.steps.append("emergency")
        trail.outcome = "suspended"
        yield Play("service-suspended")
        yield Hangup("service suspended")
        return trail
    if number.recorded:
        yield Play("recording-notice")     # before any operator can answer [000:L428-430]
    flow = site.flows[number.flow]
    stack: list[tuple] = []               # (flow, node id to resume) for call/return
    node = flow.nodes[flow.start]
    entered = flow.id                     # the path names a flow where it is entered: main:hours>...
    typed = ""                            # keys pressed during an interruptible prompt
    for _ in range(MAX_STEPS):
        trail.steps.append(f"{entered}:{node.id}" if entered else node.id)
        entered = None
        k = node.kind
        if k == "play":
            got = yield Play(node.prompt, node.interruptible)
            typed = got.digits if isinstance(got, Digits) else ""
            node = flow.nodes[node.next]
            continue
        if k == "menu":
            nid = yield from _menu(node, trail, typed)
        elif k == "language":
            nid = yield from _language(node, trail, typed)
        elif k == "collect":
            nid = yield from _collect(node, trail, typed)
        elif k == "speech":
            nid = yield from _speech(node, trail)
        elif k == "time":
            now = ctx.now()
            state = ctx.state()
            is_open = state.round_the_clock(now) or site.calendars[node.calendar].is_open(now)
            nid = node.open if is_open else node.closed
            if not is_open:
                trail.outcome = "closed"
        elif k == "mode":
            nid = node.disaster if ctx.state().mode == "disaster" and node.disaster else node.normal
        elif k == "tag":
            trail.tags.append(node.tag)
            nid = node.next
        elif k == "queue":
            state = ctx.state()
            if state.congestion:
                yield Play("congestion")
            trail.queue = node.queue
            priority = DISASTER_PRIORITY if state.mode == "disaster" and number.mode == "disaster" else 0
            result = yield Connect(node.queue, trail.language, tuple(node.skills), tuple(trail.tags), priority)
            if result.ok:
                trail.agent, trail.outcome = result.agent, "answered"
                yield Hangup("answered")
                return trail
            trail.outcome = "abandoned" if result.reason == "hangup" else "unanswered"
            nid = node.next
        elif k == "transfer":
            result = yield Transfer(node.entry, trail.language)
            if result.ok:
                trail.outcome = "transferred"
                yield Hangup("transferred")
                return trail
            trail.outcome = "abandoned" if result.reason == "hangup" else "failed"
            nid = node.next
        elif k == "goto":
            flow = site.flows[node.flow]
            entered, nid = flow.id, flow.start
        elif k == "call":
            stack.append((flow, node.next))
            flow = site.flows[node.flow]
            entered, nid = flow.id, flow.start
        elif k == "return":
            flow, nid = stack.pop()
            entered = flow.id
        else:  # hangup
            if node.prompt:
                yield Play(node.prompt)
            if trail.outcome == "abandoned":   # nothing decided yet: the flow ended the call
                trail.outcome = "message" if node.prompt else "completed"
            yield Hangup(node.id)
            return trail
        typed = ""
        node = flow.nodes[nid]
    trail.outcome = "no_input"
    yield Hangup("too many steps")
    return trail


def _menu(node, trail: Trail, typed: str):
    for attempt in range(node.retries + 1):
        digits = yield from _ask_once(node, typed)
        typed = ""
        if digits and digits[0] in node.options:
            trail.steps.append(digits[0])
            return node.options[digits[0]]
        prompt = node.invalid_prompt if digits else node.timeout_prompt
        if prompt and attempt < node.retries:
            yield Play(prompt)
    trail.steps.append("fallback")
    return node.fallback


def _ask_once(node, typed: str, max_digits: int = 1, terminator: str = "#"):
    if typed:
        return typed
    got = yield Collect(node.prompt, node.timeout, max_digits, terminator)
    return got.digits


def _language(node, trail: Trail, typed: str):
    for _ in range(node.retries + 1):
        digits = yield from _ask_once(node, typed)
        typed = ""
        if digits and digits[0] in node.options:
            trail.language = node.options[digits[0]]
            trail.steps.append(f"lang:{trail.language}")
            yield SetLanguage(trail.language)
            break
    return node.next


def _collect(node, trail: Trail, typed: str):
    for attempt in range(node.retries + 1):
        got = yield from _ask_once(node, typed, node.max_digits, node.terminator)
        typed = ""
        if got and node.min_digits <= len(got) <= node.max_digits and got.isdigit():
            trail.values[node.var] = got
            return node.next
        if node.invalid_prompt and attempt < node.retries:
            yield Play(node.invalid_prompt)
    trail.steps.append("fallback")
    return node.fallback


def _speech(node, trail: Trail):
    heard = yield Listen(node.prompt, tuple(node.phrases), node.timeout, trail.language)
    if not heard.available:
        trail.steps.append("dtmf")
        return node.dtmf
    if heard.phrase in node.phrases:
        trail.steps.append(f"said:{node.phrases[heard.phrase]}")
        return node.phrases[heard.phrase]
    trail.steps.append("fallback")
    return node.fallback
