"""The ACD engine: which caller goes to which operator, and when a caller gives up on the queue.

Sans I/O and without a clock of its own: every call passes ``now`` (seconds, float). Use
``time.time()`` if the queue log and the agent states should carry wall-clock times (the stores
in ``acd/queue_log.py`` read them as Unix time); any monotonic number works for routing. A
``now`` smaller than one already seen is taken as the latest seen (clocks that step back a
little never reorder decisions).

Model
-----
* **Skills with levels.** An agent holds skills at levels 1-10 (``AgentSpec.skills``); the
  languages they speak are the skills ``lang:<code>`` (``lang_skill``), so one mechanism covers
  both. A call requires ``{queue.skill: queue.min_level}``, plus ``lang:<code>`` at level 1 when
  the queue lists the caller's language, plus any ``extra_skills`` from the flow (level 1 unless
  given as ``(skill, level)``).
* **Strategies** (per queue): ``longest-idle`` (default; Toshima 1.3.1: the qualified agent idle
  longest), ``most-skilled`` (highest level in the queue's skill, ties by longest idle),
  ``round-robin`` (the next qualified agent after the one offered last by this queue, in agent
  order). Idle time counts from login, unpause or the end of wrap-up; a missed offer does not
  reset it. An agent who let this call ring unanswered is offered it again only when nobody
  else qualified is free (a new round, as Asterisk's queues do).
* **Order of callers**: higher ``priority`` first, then arrival order.
* **Overflow by wait** (per queue, from the time of ``enqueue``): after ``widen_after`` s every
  required level drops to 1; after ``open_after`` s agents holding ``overflow_skill`` (any level)
  may answer too, with the call's other requirements (language, extra skills) at level 1 -- the
  queue's own group is still preferred when both are free; after ``fallback_after`` s, and at
  the latest after ``max_wait`` s, a waiting caller leaves the queue: ``tick`` returns a
  ``Fallback`` (``callback``, ``message`` + prompt id, ``voicemail``, or ``timeout`` = the flow's
  next node) that the adapter carries out. A caller whose offer is ringing is never pulled out;
  a due exit applies once the ring fails.
* **Agent states**: ``logged_out``, ``available``, ``ringing``, ``on_call``, ``wrap_up``,
  ``break`` (with a reason). Wrap-up ends by the queue's ``wrapup`` timer, or -- when the queue
  says ``wrapup_until_record`` (Toshima 2.1.4: no new call until the contact record is saved) --
  only on ``record_saved`` (a record saved during the call ends it at hang-up). On a timer queue
  ``record_saved`` ends wrap-up early (the agent's "ready"). ``pause_after_misses`` consecutive
  ring-no-answers put the agent on break with reason ``missed``. ``pause`` and ``logout`` of a
  busy agent take effect when that agent would next become available.

Routing (``offers``) is incremental: after each ``offers(now)`` no waiting call has a free
qualified agent, so the next one only needs to look at what changed since -- agents that became
free and calls that arrived, came back from a failed ring or reached an overflow stage. Free
agents are indexed per skill in three sorted lists (idle time, level, agent order), waiting
calls per requirement signature in FIFO heaps keyed (-priority, arrival). ``lab/bench_acd.py``
measures it against a full scan.

Waiting figures
---------------
``position(call)``: 1 + the callers ahead of it (waiting or ringing, higher priority or same
priority and earlier) in the same queue with the same requirements (they need the same agents).

``estimated_wait(call, now)`` = max(0, (position - f) / max(1, n) * AHT - R), and 0 when
position <= f, where n = qualified agents logged in and not on break (for the call's current
overflow stage), f = those of them free now, AHT = the queue's exponentially weighted mean
(alpha ``AHT_ALPHA``) of talk + wrap-up of its finished calls (``QueueSpec.aht`` until the first
one), R = the mean time the n agents' current calls have already taken (ringing, talking,
wrap-up; each capped at AHT; free agents count 0). A ringing call's estimate is 0.

Queue log
---------
Every change appends a ``QueueEvent`` (``drain_events()`` hands them over), after Asterisk's
queue_log; ``data`` fields per event:

==================  ===========================================================
ENTERQUEUE          language, priority, position
RINGNOANSWER        ring seconds
CONNECT             wait, ring seconds, original position
COMPLETECALLER      wait, talk, original position   (COMPLETEAGENT alike)
TRANSFER            target, wait, talk, original position
ABANDON             position, original position, wait
EXITWITHTIMEOUT     position, original position, wait, fallback kind
OVERFLOW            stage (widen | open), wait
AGENTLOGIN          --
AGENTLOGOFF         seconds logged in
PAUSE / UNPAUSE     reason
==================  ===========================================================
"""
from __future__ import annotations

import heapq
from bisect import bisect_left, bisect_right, insort
from dataclasses import dataclass, field
from itertools import chain, count
from typing import Iterable, Mapping, NamedTuple

__all__ = ["ACD", "ACDError", "QueueSpec", "AgentSpec", "Enqueued", "Refused", "Offer", "Fallback", "QueueEvent",
           "AgentStateRow", "AgentView", "CallView", "lang_skill", "STRATEGIES", "AGENT_STATES",
           "LOGGED_OUT", "AVAILABLE", "RINGING", "ON_CALL", "WRAP_UP", "BREAK"]

LOGGED_OUT, AVAILABLE, RINGING, ON_CALL, WRAP_UP, BREAK = \
    "logged_out", "available", "ringing", "on_call", "wrap_up", "break"
AGENT_STATES = (LOGGED_OUT, AVAILABLE, RINGING, ON_CALL, WRAP_UP, BREAK)
STRATEGIES = ("longest-idle", "most-skilled", "round-robin")
FALLBACK_KINDS = ("callback", "message", "voicemail", "timeout")

# call states
WAITING, CALL_RINGING, CONNECTED, DONE = "waiting", "ringing", "connected", "done"

LANGUAGE_LEVEL = 5     # the level of lang:<code> skills built from an agent's languages
AHT_ALPHA = 0.2        # weight of the newest handle time in the per-queue moving mean
MISSED = "missed"      # break reason after pause_after_misses ring-no-answers


def lang_skill(code: str) -> str:
    return f"lang:{code}"


class ACDError(ValueError):
    """An operation that does not fit the call's or the agent's state."""


# --- configuration --------------------------------------------------------------------------

@dataclass(frozen=True)
class QueueSpec:
    id: str
    skill: str
    languages: tuple[str, ...] = ()
    strategy: str = "longest-idle"
    min_level: int = 1
    widen_after: float | None = None
    open_after: float | None = None
    overflow_skill: str | None = None
    fallback_after: float | None = None
    fallback: str | None = None            # callback | voicemail | message:<prompt-id>
    max_wait: float | None = None          # the flow's own limit: the caller leaves with kind "timeout"
    wrapup: float = 10
    wrapup_until_record: bool = False
    ring_timeout: float = 20
    pause_after_misses: int = 2            # 0: never
    max_length: int = 50
    aht: float = 180.0                     # handle time assumed before the first call ends

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ValueError(f"queue {self.id}: strategy must be one of {', '.join(STRATEGIES)}")
        if self.fallback_after is not None and self.fallback is None:
            raise ValueError(f"queue {self.id}: fallback_after needs a fallback")
        if self.fallback is not None and self.fallback.split(":", 1)[0] not in ("callback", "message", "voicemail"):
            raise ValueError(f"queue {self.id}: fallback must be callback, voicemail or message:<prompt>")

    @classmethod
    def from_site(cls, q) -> "QueueSpec":
        """From ``provisioning.site.Queue``."""
        return cls(q.id, q.skill, tuple(q.languages), q.strategy, q.min_level, q.widen_after, q.open_after,
                   q.overflow_skill, q.fallback_after, q.fallback, q.max_wait, q.wrapup, q.wrapup_until_record,
                   q.ring_timeout, q.pause_after_misses, q.max_length)


@dataclass(frozen=True)
class AgentSpec:
    id: str
    endpoint: str
    skills: Mapping[str, int] = field(default_factory=dict)   # skill -> level 1..10, lang:<code> included

    @classmethod
    def from_site(cls, a) -> "AgentSpec":
        """From ``provisioning.site.Agent``: its skills at their levels, its languages as lang:<code>."""
        skills = {s: a.level(s) for s in a.skills}
        skills.update({lang_skill(lang): LANGUAGE_LEVEL for lang in a.languages})
        return cls(a.id, a.endpoint, skills)


# --- results ------------------------------------------------------------------------------

class Enqueued(NamedTuple):
    call_id: str
    position: int
    estimated_wait: float


class Refused(NamedTuple):
    call_id: str
    reason: str            # "full": the queue holds max_length callers (play the congestion message)


class Offer(NamedTuple):
    call_id: str
    agent_id: str
    endpoint: str
    queue: str
    ring_timeout: float


class Fallback(NamedTuple):
    call_id: str
    kind: str              # callback | message | voicemail | timeout
    value: str | None      # the prompt id for "message"


class QueueEvent(NamedTuple):
    time: float
    call_id: str | None
    queue: str | None
    agent: str | None
    event: str
    data: tuple = ()


class AgentStateRow(NamedTuple):
    agent_id: str
    state: str
    reason: str | None     # break reason; for ringing/on_call/wrap_up the queue whose rules apply
    since: float
    missed: int


class AgentView(NamedTuple):
    id: str
    state: str
    reason: str | None
    since: float
    idle_since: float
    missed: int
    call_id: str | None
    pending: str | None    # "break:<reason>" or "logout" once the current call is done


class CallView(NamedTuple):
    id: str
    queue: str
    state: str             # waiting | ringing | connected
    priority: int
    enqueued: float
    requirements: dict     # the base requirements, skill -> level
    widened: bool
    opened: bool
    agent: str | None


# --- internal state --------------------------------------------------------------------------

class _Agent:
    __slots__ = ("spec", "order", "state", "reason", "since", "idle_since", "missed", "call", "queue",
                 "pending", "saved", "wrap_token", "talk", "busy_since", "login_at", "keys")

    def __init__(self, spec: AgentSpec, order: int):
        self.spec, self.order = spec, order
        self.state, self.reason, self.since = LOGGED_OUT, None, 0.0
        self.idle_since, self.missed = 0.0, 0
        self.call: str | None = None
        self.queue: QueueSpec | None = None      # of the current / last call (wrap-up rules)
        self.pending: tuple | None = None        # ("break", reason) | ("logout",)
        self.saved = False                       # record saved during the current call
        self.wrap_token = 0
        self.talk = 0.0
        self.busy_since = 0.0
        self.login_at = 0.0
        self.keys: list | None = None            # index entries while available


class _Call:
    __slots__ = ("id", "queue", "req", "base_sig", "priority", "seq", "key", "enqueued", "state", "widened",
                 "opened", "version", "tried", "agent", "orig_position", "answered", "ring_started", "overdue")

    def __init__(self, cid, queue, req, priority, seq, now):
        self.id, self.queue, self.req, self.priority, self.seq = cid, queue, req, priority, seq
        self.base_sig = tuple(sorted(req.items()))
        self.key = (-priority, seq)
        self.enqueued = now
        self.state = WAITING
        self.widened = self.opened = False
        self.version = 0
        self.tried: set[str] = set()
        self.agent: str | None = None
        self.orig_position = 0
        self.answered = self.ring_started = 0.0
        self.overdue: str | None = None

    def alternatives(self) -> list[tuple[tuple, str]]:
        """The requirement sets an agent may meet now, as (sorted (skill, level) pairs, the skill
        that ranks agents for most-skilled), the queue's own group first."""
        q = self.queue
        base = self.base_sig if not self.widened else tuple((s, 1) for s, _ in self.base_sig)
        out = [(base, q.skill)]
        if self.opened and q.overflow_skill:
            alt = dict((s, 1) for s, _ in self.base_sig if s != q.skill)
            alt[q.overflow_skill] = 1
            alt_sig = tuple(sorted(alt.items()))
            if alt_sig != base:
                out.append((alt_sig, q.overflow_skill))
        return out


class _Group:
    """Waiting calls with one requirement signature: a heap of (-priority, seq, version, call id)."""
    __slots__ = ("sig", "heap")

    def __init__(self, sig):
        self.sig, self.heap = sig, []


def _qualifies(levels: Mapping[str, int], sig) -> bool:
    for s, lvl in sig:
        if levels.get(s, 0) < lvl:
            return False
    return True


# --- the engine ------------------------------------------------------------------------------

class ACD:
    def __init__(self, queues: Mapping[str, QueueSpec], agents: Mapping[str, AgentSpec]):
        self.queues = dict(queues)
        self._agents: dict[str, _Agent] = {}
        for i, aid in enumerate(sorted(agents)):
            spec = agents[aid]
            if spec.id != aid:
                raise ValueError(f"agent key {aid!r} differs from its id {spec.id!r}")
            self._agents[aid] = _Agent(spec, i)
        self._by_order = sorted(self._agents)
        # how many agents hold each skill (any level): groups are indexed under their rarest skill
        self._population: dict[str, int] = {}
        for a in self._agents.values():
            for s in a.spec.skills:
                self._population[s] = self._population.get(s, 0) + 1
        # free agents per skill
        self._idle: dict[str, list] = {}       # (idle_since, order, id)
        self._lvl: dict[str, list] = {}        # (-level, idle_since, order, id)
        self._ord: dict[str, list] = {}        # order
        # staffed (logged in, not on break) agents per skill, for the wait estimate
        self._staffed: dict[str, set] = {}
        self._calls: dict[str, _Call] = {}
        self._groups: dict[tuple, _Group] = {}
        self._groups_by_skill: dict[str, list[_Group]] = {}
        self._lines: dict[tuple, list] = {}    # (queue, base sig) -> sorted keys of waiting/ringing calls
        self._size: dict[str, int] = {q: 0 for q in self.queues}
        self._rr: dict[str, int] = {q: -1 for q in self.queues}
        self._aht: dict[str, float] = {qid: q.aht for qid, q in self.queues.items()}
        self._stages: list = []                # (due, n, stage, call id)
        self._exits: list = []                 # (due, n, kind, call id)
        self._wraps: list = []                 # (due, n, agent id, token)
        self._pending_agents: set[str] = set()
        self._pending_calls: set[str] = set()
        self._events: list[QueueEvent] = []
        self._seq = count()
        self._n = count()
        self._now = float("-inf")

    @classmethod
    def from_site(cls, site) -> "ACD":
        return cls({qid: QueueSpec.from_site(q) for qid, q in site.queues.items()},
                   {a.id: AgentSpec.from_site(a) for a in site.agents})

    # ------------------------------------------------------------ agents

    def login(self, agent_id: str, now: float) -> None:
        a, now = self._agent(agent_id), self._clock(now)
        if a.state == LOGGED_OUT:
            a.login_at, a.missed, a.reason = now, 0, None
            self._log(now, None, None, a.spec.id, "AGENTLOGIN")
            self._staff(a, True)
            self._make_available(a, now, idle_since=now)
        elif a.pending == ("logout",):
            a.pending = None

    def logout(self, agent_id: str, now: float) -> None:
        a, now = self._agent(agent_id), self._clock(now)
        if a.state in (AVAILABLE, BREAK):
            self._log_off(a, now)
        elif a.state != LOGGED_OUT:
            a.pending = ("logout",)

    def pause(self, agent_id: str, now: float, reason: str | None = None) -> None:
        a, now = self._agent(agent_id), self._clock(now)
        reason = reason or "break"
        if a.state == LOGGED_OUT:
            raise ACDError(f"{agent_id} is not logged in")
        if a.state in (AVAILABLE, BREAK):
            self._to_break(a, now, reason)
        elif a.pending != ("logout",):
            a.pending = ("break", reason)

    def unpause(self, agent_id: str, now: float, reason: str | None = None) -> None:
        a, now = self._agent(agent_id), self._clock(now)
        if a.state == BREAK:
            self._log(now, None, None, a.spec.id, "UNPAUSE", (a.reason,))
            a.missed, a.reason = 0, None
            self._staff(a, True)
            self._make_available(a, now, idle_since=now)
        elif a.pending and a.pending[0] == "break":
            a.pending = None

    def record_saved(self, agent_id: str, now: float) -> None:
        """The agent saved the contact record of their current or last call."""
        a, now = self._agent(agent_id), self._clock(now)
        if a.state == WRAP_UP:
            self._finish_wrapup(a, now)
        elif a.state in (RINGING, ON_CALL):
            a.saved = True

    # ------------------------------------------------------------ calls

    def enqueue(self, call_id: str, queue_id: str, language: str | None, priority: int, now: float,
                extra_skills: Iterable = ()) -> Enqueued | Refused:
        """A caller joins ``queue_id``. ``language`` becomes the requirement lang:<code> when the
        queue lists it; ``extra_skills`` are skill names (level 1) or (skill, level) pairs."""
        now = self._clock(now)
        q = self.queues.get(queue_id)
        if q is None:
            raise KeyError(f"unknown queue {queue_id!r}")
        if call_id in self._calls:
            raise ACDError(f"call {call_id} is already queued")
        if self._size[queue_id] >= q.max_length:
            return Refused(call_id, "full")
        req = {q.skill: q.min_level}
        if language is not None and language in q.languages:
            req[lang_skill(language)] = 1
        for s in extra_skills:
            skill, level = (s, 1) if isinstance(s, str) else s
            req[skill] = max(req.get(skill, 0), int(level))
        c = _Call(call_id, q, req, int(priority), next(self._seq), now)
        self._calls[call_id] = c
        self._size[queue_id] += 1
        line = self._lines.setdefault((q.id, c.base_sig), [])
        insort(line, c.key)
        c.orig_position = bisect_left(line, c.key) + 1
        for stage, after in (("widen", q.widen_after), ("open", q.open_after if q.overflow_skill else None)):
            if after is not None:
                heapq.heappush(self._stages, (now + after, next(self._n), stage, call_id))
        for kind, after in (("fallback", q.fallback_after), ("timeout", q.max_wait)):
            if after is not None:
                heapq.heappush(self._exits, (now + after, next(self._n), kind, call_id))
        self._log(now, call_id, q.id, None, "ENTERQUEUE", (language or "", c.priority, c.orig_position))
        self._queue_call(c)
        return Enqueued(call_id, c.orig_position, self.estimated_wait(call_id, now))

    def offers(self, now: float) -> list[Offer]:
        """Match waiting calls with free qualified agents; the agents offered are ``ringing``.

        Calls are served in order (priority, arrival), each by its queue's strategy. Afterwards
        no waiting call has a free agent who qualifies for it.
        """
        now = self._clock(now)
        out: list[Offer] = []
        calls, agents = self._calls, self._agents
        # Candidates, best (priority, arrival) first: calls that arrived, came back or reached a
        # stage since the last round, and for each agent freed since then the first call it
        # qualifies for. When that call goes to someone else, the agent's next call joins.
        heap: list = []
        watchers: dict[str, list[str]] = {}
        seen: set[str] = set()       # each call is decided once per round

        def push(c: _Call) -> None:
            if c.id not in watchers and c.id not in seen:
                watchers[c.id] = []
                heapq.heappush(heap, (c.key, c.id))

        def watch(a: _Agent) -> None:
            c = self._best_call(a)
            if c is not None:
                push(c)
                watchers[c.id].append(a.spec.id)

        for aid in sorted(self._pending_agents, key=lambda aid: agents[aid].order):
            if agents[aid].state == AVAILABLE:
                watch(agents[aid])
        for cid in sorted(self._pending_calls):
            c = calls.get(cid)
            if c is not None and c.state == WAITING:
                push(c)
        self._pending_agents.clear()
        self._pending_calls.clear()
        while heap:
            _, cid = heapq.heappop(heap)
            seen.add(cid)
            c = calls.get(cid)
            if c is not None and c.state == WAITING:
                aid = self._best_agent(c)
                if aid is not None:
                    out.append(self._offer(c, agents[aid], now))
            for aid in watchers.pop(cid):
                if agents[aid].state == AVAILABLE:
                    watch(agents[aid])
        return out

    def answered(self, call_id: str, agent_id: str, now: float) -> None:
        c, a, now = self._ringing(call_id, agent_id), self._agents[agent_id], self._clock(now)
        c.state, c.answered = CONNECTED, now
        self._leave_line(c)
        a.state, a.since, a.missed = ON_CALL, now, 0
        self._log(now, call_id, c.queue.id, agent_id, "CONNECT",
                  (now - c.enqueued, now - c.ring_started, c.orig_position))

    def ring_no_answer(self, call_id: str, agent_id: str, now: float) -> None:
        """The offer rang out (or was rejected): the call goes back to its place in line and the
        next ``offers`` rings someone else; the agent is paused after K misses in a row."""
        c, a, now = self._ringing(call_id, agent_id), self._agents[agent_id], self._clock(now)
        q = c.queue
        self._log(now, call_id, q.id, agent_id, "RINGNOANSWER", (now - c.ring_started,))
        c.state, c.agent = WAITING, None
        c.tried.add(agent_id)
        self._queue_call(c)
        if c.overdue is not None:
            heapq.heappush(self._exits, (now, next(self._n), c.overdue, call_id))
            c.overdue = None
        a.missed += 1
        a.call = None
        if q.pause_after_misses and a.missed >= q.pause_after_misses and a.pending != ("logout",):
            a.pending = None
            self._to_break(a, now, MISSED)
        else:
            self._become_free(a, now, idle_since=a.idle_since)

    def ended(self, call_id: str, now: float, by: str = "caller") -> None:
        """A connected call hung up (``by`` the caller or the agent); the agent starts wrap-up."""
        if by not in ("caller", "agent"):
            raise ValueError("by must be 'caller' or 'agent'")
        c, now = self._connected(call_id), self._clock(now)
        self._log(now, call_id, c.queue.id, c.agent, "COMPLETECALLER" if by == "caller" else "COMPLETEAGENT",
                  (c.answered - c.enqueued, now - c.answered, c.orig_position))
        self._close(c, now)

    def transferred(self, call_id: str, now: float, target: str = "") -> None:
        """The agent handed a connected call on (e.g. to a department); the agent starts wrap-up."""
        c, now = self._connected(call_id), self._clock(now)
        self._log(now, call_id, c.queue.id, c.agent, "TRANSFER",
                  (target, c.answered - c.enqueued, now - c.answered, c.orig_position))
        self._close(c, now)

    def abandon(self, call_id: str, now: float) -> None:
        """The caller hung up while waiting or while an agent's phone rang."""
        c, now = self._call(call_id), self._clock(now)
        if c.state not in (WAITING, CALL_RINGING):
            raise ACDError(f"call {call_id} is {c.state}: use ended()")
        self._log(now, call_id, c.queue.id, c.agent, "ABANDON",
                  (self._position(c), c.orig_position, now - c.enqueued))
        if c.state == CALL_RINGING:
            a = self._agents[c.agent]
            a.call = None
            self._become_free(a, now, idle_since=a.idle_since)
        self._remove(c)

    def tick(self, now: float) -> list[Fallback]:
        """Run what is due: wrap-up timers, overflow stages, and callers who leave the queue."""
        now = self._clock(now)
        out = []
        while self._exits and self._exits[0][0] <= now:
            due, _, kind, cid = heapq.heappop(self._exits)
            c = self._calls.get(cid)
            if c is None or c.state in (CONNECTED, DONE):
                continue
            if c.state == CALL_RINGING:
                if c.overdue is None:
                    c.overdue = kind
                continue
            q = c.queue
            if kind == "fallback":
                kind, _, value = q.fallback.partition(":")
                value = value or None
            else:
                value = None
            self._log(now, cid, q.id, None, "EXITWITHTIMEOUT",
                      (self._position(c), c.orig_position, now - c.enqueued, kind))
            self._remove(c)
            out.append(Fallback(cid, kind, value))
        return out

    # ------------------------------------------------------------ figures and views

    def position(self, call_id: str) -> int:
        c = self._call(call_id)
        return self._position(c) if c.state in (WAITING, CALL_RINGING) else 0

    def estimated_wait(self, call_id: str, now: float) -> float:
        """Seconds until an agent is expected (formula in the module docstring)."""
        c = self._call(call_id)
        if c.state != WAITING:
            return 0.0
        aht = self._aht[c.queue.id]
        staffed, free, elapsed = 0, 0, 0.0
        for aid in self._qualified_staffed(c):
            a = self._agents[aid]
            staffed += 1
            if a.state == AVAILABLE:
                free += 1
            else:
                elapsed += min(max(0.0, now - a.busy_since), aht)
        ahead = self._position(c) - free
        if ahead <= 0:
            return 0.0
        return max(0.0, ahead / max(1, staffed) * aht - (elapsed / staffed if staffed else 0.0))

    def queue_length(self, queue_id: str) -> int:
        """Callers in the queue (waiting or ringing)."""
        return self._size[queue_id]

    def handle_time(self, queue_id: str) -> float:
        """The queue's current mean handle time (talk + wrap-up)."""
        return self._aht[queue_id]

    def agent(self, agent_id: str) -> AgentView:
        a = self._agent(agent_id)
        pending = None if a.pending is None else ("logout" if a.pending[0] == "logout" else f"break:{a.pending[1]}")
        return AgentView(a.spec.id, a.state, a.reason, a.since, a.idle_since, a.missed, a.call, pending)

    def agents(self) -> list[AgentView]:
        return [self.agent(aid) for aid in self._by_order]

    def call(self, call_id: str) -> CallView:
        c = self._call(call_id)
        return CallView(c.id, c.queue.id, c.state, c.priority, c.enqueued, dict(c.req), c.widened, c.opened, c.agent)

    def calls(self) -> list[CallView]:
        """Calls in the queues or connected, in order (priority, arrival)."""
        return [self.call(c.id) for c in sorted(self._calls.values(), key=lambda c: c.key)]

    def qualifies(self, agent_id: str, call_id: str) -> bool:
        """Whether the agent may take the call at its current overflow stage."""
        levels = self._agent(agent_id).spec.skills
        return any(_qualifies(levels, sig) for sig, _ in self._call(call_id).alternatives())

    def drain_events(self) -> list[QueueEvent]:
        out, self._events = self._events, []
        return out

    # ------------------------------------------------------------ persistence

    def snapshot(self) -> list[AgentStateRow]:
        """Agent states to keep across a restart (acd.queue_log.AgentStateStore)."""
        rows = []
        for aid in self._by_order:
            a = self._agents[aid]
            reason = a.reason if a.state == BREAK else (a.queue.id if a.state in (RINGING, ON_CALL, WRAP_UP)
                                                        and a.queue is not None else None)
            since = a.idle_since if a.state == AVAILABLE else a.since
            rows.append(AgentStateRow(aid, a.state, reason, since, a.missed))
        return rows

    def restore(self, rows: Iterable, now: float) -> None:
        """Bring agents back to the states of ``snapshot()`` rows (before any call is queued).

        Calls do not survive a restart: an agent who was ringing is available again, one who was
        on a call starts wrap-up now, one in wrap-up goes on with it (a record-gated queue still
        waits for the record; a timer counts from when wrap-up began). Unknown agents are skipped.
        """
        now = self._clock(now)
        if self._calls:
            raise ACDError("restore() must come before any call is queued")
        for row in rows:
            aid, state, reason, since, missed = (row.agent_id, row.state, row.reason, row.since, row.missed) \
                if hasattr(row, "agent_id") else row
            a = self._agents.get(aid)
            if a is None or state not in AGENT_STATES:
                continue
            self._unindex(a)
            self._staff(a, False)
            a.pending, a.call, a.missed, a.reason = None, None, int(missed or 0), None
            a.state, a.since = LOGGED_OUT, since
            if state == LOGGED_OUT:
                continue
            a.login_at = since
            if state == BREAK:
                a.state, a.reason = BREAK, reason or "break"
                continue
            self._staff(a, True)
            q = self.queues.get(reason) if reason else None
            if state in (ON_CALL, WRAP_UP) and q is not None:
                a.queue, a.talk, a.busy_since = q, 0.0, since
                self._start_wrapup(a, now if state == ON_CALL else since)
            else:
                self._make_available(a, now, idle_since=since if state == AVAILABLE else now)
        self._advance(now)

    # ------------------------------------------------------------ internals: time

    def _clock(self, now: float) -> float:
        now = float(now)
        if now < self._now:
            now = self._now
        self._now = now
        self._advance(now)
        return now

    def _advance(self, now: float) -> None:
        """Wrap-up timers and overflow stages that are due."""
        wraps, stages = self._wraps, self._stages
        while wraps and wraps[0][0] <= now:
            due, _, aid, token = heapq.heappop(wraps)
            a = self._agents[aid]
            if a.state == WRAP_UP and a.wrap_token == token:
                self._finish_wrapup(a, due)
        while stages and stages[0][0] <= now:
            due, _, stage, cid = heapq.heappop(stages)
            c = self._calls.get(cid)
            if c is None or c.state not in (WAITING, CALL_RINGING):
                continue
            if stage == "widen":
                c.widened = True
            else:
                c.opened = True
            self._log(due, cid, c.queue.id, None, "OVERFLOW", (stage, due - c.enqueued))
            if c.state == WAITING:
                self._queue_call(c)

    # ------------------------------------------------------------ internals: agents

    def _agent(self, agent_id: str) -> _Agent:
        try:
            return self._agents[agent_id]
        except KeyError:
            raise KeyError(f"unknown agent {agent_id!r}") from None

    def _log(self, now, call_id, queue, agent, event, data=()) -> None:
        self._events.append(QueueEvent(now, call_id, queue, agent, event, tuple(data)))

    def _log_off(self, a: _Agent, now: float) -> None:
        self._unindex(a)
        self._staff(a, False)
        a.state, a.since, a.reason, a.pending, a.missed = LOGGED_OUT, now, None, None, 0
        self._log(now, None, None, a.spec.id, "AGENTLOGOFF", (now - a.login_at,))

    def _to_break(self, a: _Agent, now: float, reason: str) -> None:
        self._unindex(a)
        self._staff(a, False)
        a.state, a.since, a.reason = BREAK, now, reason
        self._log(now, None, None, a.spec.id, "PAUSE", (reason,))

    def _staff(self, a: _Agent, on: bool) -> None:
        for s in a.spec.skills:
            group = self._staffed.setdefault(s, set())
            if on:
                group.add(a.spec.id)
            else:
                group.discard(a.spec.id)

    def _make_available(self, a: _Agent, now: float, idle_since: float) -> None:
        a.state, a.since, a.idle_since, a.call = AVAILABLE, now, idle_since, None
        aid, order, keys = a.spec.id, a.order, []
        for s, level in a.spec.skills.items():
            k1, k2 = (idle_since, order, aid), (-level, idle_since, order, aid)
            insort(self._idle.setdefault(s, []), k1)
            insort(self._lvl.setdefault(s, []), k2)
            insort(self._ord.setdefault(s, []), order)
            keys.append((s, k1, k2))
        a.keys = keys
        self._pending_agents.add(aid)

    def _unindex(self, a: _Agent) -> None:
        if a.keys is None:
            return
        for s, k1, k2 in a.keys:
            for lst, k in ((self._idle[s], k1), (self._lvl[s], k2), (self._ord[s], a.order)):
                i = bisect_left(lst, k)
                del lst[i]
        a.keys = None
        self._pending_agents.discard(a.spec.id)

    def _become_free(self, a: _Agent, now: float, idle_since: float) -> None:
        """The agent's call (or offer) is over: a deferred logout or break applies, else available."""
        pending, a.pending = a.pending, None
        a.call = None
        if pending == ("logout",):
            self._log_off(a, now)
        elif pending is not None:
            self._to_break(a, now, pending[1])
        else:
            self._make_available(a, now, idle_since)

    def _start_wrapup(self, a: _Agent, now: float) -> None:
        q = a.queue
        a.state, a.since = WRAP_UP, now
        a.wrap_token += 1
        if q.wrapup_until_record:
            if a.saved:
                self._finish_wrapup(a, now)
        elif q.wrapup <= 0:
            self._finish_wrapup(a, now)
        else:
            heapq.heappush(self._wraps, (now + q.wrapup, next(self._n), a.spec.id, a.wrap_token))

    def _finish_wrapup(self, a: _Agent, now: float) -> None:
        a.wrap_token += 1
        if a.queue is not None:
            handle = a.talk + (now - a.since)
            qid = a.queue.id
            self._aht[qid] += AHT_ALPHA * (handle - self._aht[qid])
        self._become_free(a, now, idle_since=now)

    # ------------------------------------------------------------ internals: calls

    def _call(self, call_id: str) -> _Call:
        try:
            return self._calls[call_id]
        except KeyError:
            raise KeyError(f"unknown call {call_id!r}") from None

    def _ringing(self, call_id: str, agent_id: str) -> _Call:
        c = self._call(call_id)
        if c.state != CALL_RINGING or c.agent != agent_id:
            raise ACDError(f"call {call_id} is not ringing {agent_id} (state {c.state}, agent {c.agent})")
        return c

    def _connected(self, call_id: str) -> _Call:
        c = self._call(call_id)
        if c.state != CONNECTED:
            raise ACDError(f"call {call_id} is {c.state}, not connected")
        return c

    def _position(self, c: _Call) -> int:
        return bisect_left(self._lines[(c.queue.id, c.base_sig)], c.key) + 1

    def _leave_line(self, c: _Call) -> None:
        line = self._lines[(c.queue.id, c.base_sig)]
        del line[bisect_left(line, c.key)]
        if not line:
            del self._lines[(c.queue.id, c.base_sig)]
        self._size[c.queue.id] -= 1

    def _remove(self, c: _Call) -> None:
        """The call leaves the queue without being connected."""
        self._leave_line(c)
        c.state = DONE
        del self._calls[c.id]
        self._pending_calls.discard(c.id)

    def _close(self, c: _Call, now: float) -> None:
        """A connected call is over: its agent starts wrap-up."""
        a = self._agents[c.agent]
        a.talk, a.call = now - c.answered, None
        c.state = DONE
        del self._calls[c.id]
        self._start_wrapup(a, now)

    def _queue_call(self, c: _Call) -> None:
        """(Re)file a waiting call under the requirement groups of its current stage."""
        c.version += 1
        entry = (c.key[0], c.key[1], c.version, c.id)
        for sig, _ in c.alternatives():
            g = self._groups.get(sig)
            if g is None:
                g = self._groups[sig] = _Group(sig)
                anchor = min((s for s, _ in sig), key=lambda s: (self._population.get(s, 0), s))
                self._groups_by_skill.setdefault(anchor, []).append(g)
            heapq.heappush(g.heap, entry)
        self._pending_calls.add(c.id)

    def _head(self, g: _Group) -> _Call | None:
        heap, calls = g.heap, self._calls
        while heap:
            _, _, version, cid = heap[0]
            c = calls.get(cid)
            if c is not None and c.state == WAITING and c.version == version:
                return c
            heapq.heappop(heap)
        return None

    def _best_call(self, a: _Agent) -> _Call | None:
        """The first waiting call (priority, arrival) this agent qualifies for."""
        best = None
        levels = a.spec.skills
        for s in levels:
            for g in self._groups_by_skill.get(s, ()):
                if not g.heap or not _qualifies(levels, g.sig):
                    continue
                c = self._head(g)
                if c is not None and (best is None or c.key < best.key):
                    best = c
        return best

    def _best_agent(self, c: _Call) -> str | None:
        for sig, rank_skill in c.alternatives():
            aid = self._pick(c, sig, rank_skill)
            if aid is not None:
                return aid
        return None

    def _pick(self, c: _Call, sig, rank_skill: str) -> str | None:
        """The free agent meeting ``sig`` that the queue's strategy prefers; agents who let this
        call ring out come last."""
        idle = self._idle
        smallest, size = None, None
        for s, _ in sig:
            n = len(idle.get(s, ()))
            if n == 0:
                return None
            if size is None or n < size:
                smallest, size = s, n
        agents, tried, strategy = self._agents, c.tried, c.queue.strategy
        fallback = None
        if strategy == "longest-idle":
            for _, _, aid in idle[smallest]:
                if _qualifies(agents[aid].spec.skills, sig):
                    if aid not in tried:
                        return aid
                    fallback = fallback or aid
            return fallback
        if strategy == "most-skilled":
            if len(self._lvl[rank_skill]) <= 4 * size:
                for _, _, _, aid in self._lvl[rank_skill]:
                    if _qualifies(agents[aid].spec.skills, sig):
                        if aid not in tried:
                            return aid
                        fallback = fallback or aid
                return fallback
            best = best_key = None
            for idle_since, order, aid in idle[smallest]:
                levels = agents[aid].spec.skills
                if _qualifies(levels, sig):
                    key = (aid in tried, -levels.get(rank_skill, 0), idle_since, order)
                    if best_key is None or key < best_key:
                        best, best_key = aid, key
            return best
        # round-robin: the next agent in agent order after the one this queue offered last
        ords = self._ord[smallest]
        i = bisect_right(ords, self._rr[c.queue.id])
        by_order = self._by_order
        for order in chain(ords[i:], ords[:i]):
            aid = by_order[order]
            if _qualifies(agents[aid].spec.skills, sig):
                if aid not in tried:
                    return aid
                fallback = fallback or aid
        return fallback

    def _offer(self, c: _Call, a: _Agent, now: float) -> Offer:
        self._unindex(a)
        a.state, a.since, a.busy_since, a.call, a.queue, a.saved = RINGING, now, now, c.id, c.queue, False
        c.state, c.agent, c.ring_started = CALL_RINGING, a.spec.id, now
        self._rr[c.queue.id] = a.order
        return Offer(c.id, a.spec.id, a.spec.endpoint, c.queue.id, c.queue.ring_timeout)

    def _qualified_staffed(self, c: _Call) -> set[str]:
        out: set[str] = set()
        for sig, _ in c.alternatives():
            smallest = min((self._staffed.get(s, set()) for s, _ in sig), key=len)
            out.update(aid for aid in smallest if _qualifies(self._agents[aid].spec.skills, sig))
        return out
