"""The ACD engine (acd/engine.py): strategies, overflow, wrap-up, misses, waiting figures, storage."""
from datetime import datetime, timezone
from pathlib import Path

import pytest

from acd.engine import (ACD, AVAILABLE, BREAK, LOGGED_OUT, ON_CALL, RINGING, WRAP_UP, ACDError, AgentSpec,
                        Enqueued, Fallback, Offer, QueueSpec, Refused, lang_skill)
from acd.queue_log import AgentStateStore, QueueLogStore
from provisioning.site import load_site

SENDAI = Path(__file__).resolve().parents[1] / "lab" / "sites" / "sendai"


def agent(aid, **skills):
    langs = skills.pop("langs", ("ja",))
    levels = dict(skills)
    levels.update({lang_skill(x): 5 for x in langs})
    return AgentSpec(aid, f"PJSIP/{aid}", levels)


def make(queues, agents, login=True):
    acd = ACD({q.id: q for q in queues}, {a.id: a for a in agents})
    if login:
        for i, a in enumerate(sorted(x.id for x in agents)):
            acd.login(a, i * 0.001)
    return acd


def offered(acd, now):
    return [(o.call_id, o.agent_id) for o in acd.offers(now)]


def events(acd, *names):
    return [e for e in acd.drain_events() if not names or e.event in names]


# --- strategies -----------------------------------------------------------------------------

def test_longest_idle_among_the_qualified():
    q = QueueSpec("general", "general", ("ja", "en"))
    acd = make([q], [agent("a", general=5), agent("b", general=5, langs=("ja", "en")), agent("c", general=5),
                     agent("d", billing=5)])
    acd.unpause("a", 0)
    acd.pause("a", 1, "lunch")
    acd.unpause("a", 2)                       # back from a break: idle from now, so last in line
    assert isinstance(acd.enqueue("c1", "general", "ja", 0, 10), Enqueued)
    assert offered(acd, 10) == [("c1", "b")]  # b logged in before c; d lacks the skill
    acd.enqueue("c2", "general", "en", 0, 11)
    acd.enqueue("c3", "general", "ja", 0, 11)
    assert offered(acd, 11) == [("c3", "c")]  # only b speaks English, and b is ringing
    assert acd.call("c2").state == "waiting" and acd.position("c2") == 1


def test_most_skilled_then_longest_idle():
    q = QueueSpec("d", "disaster", strategy="most-skilled")
    acd = make([q], [agent("a", disaster=3), agent("b", disaster=9), agent("c", disaster=9), agent("e", disaster=1)])
    for i in range(4):
        acd.enqueue(f"c{i}", "d", None, 0, 10 + i)
    assert offered(acd, 20) == [("c0", "b"), ("c1", "c"), ("c2", "a"), ("c3", "e")]


def test_round_robin_remembers_the_last_agent():
    q = QueueSpec("i", "interpreter", strategy="round-robin", wrapup=0)
    acd = make([q], [agent(x, interpreter=5) for x in "abc"])
    got = []
    for i in range(5):
        acd.enqueue(f"c{i}", "i", None, 0, 10 + i)
        (o,) = acd.offers(10 + i)
        acd.answered(o.call_id, o.agent_id, 10 + i)
        acd.ended(o.call_id, 10.5 + i)
        got.append(o.agent_id)
    assert got == ["a", "b", "c", "a", "b"]


def test_priority_then_arrival_and_one_call_per_agent():
    q = QueueSpec("g", "general")
    acd = make([q], [agent("a", general=5)])
    acd.pause("a", 1)
    acd.enqueue("first", "g", None, 0, 10)
    acd.enqueue("second", "g", None, 0, 11)
    acd.enqueue("disaster", "g", None, 10, 12)
    assert [acd.position(c) for c in ("disaster", "first", "second")] == [1, 2, 3]
    acd.unpause("a", 13)
    assert offered(acd, 13) == [("disaster", "a")]
    assert offered(acd, 14) == []             # a is ringing: nobody gets a second call
    acd.answered("disaster", "a", 15)
    acd.ended("disaster", 20, by="agent")
    assert offered(acd, 31) == [("first", "a")]   # after the 10 s wrap-up


def test_an_agent_passed_over_by_its_first_call_takes_the_next_in_line():
    """Two agents free at once: the first call prefers b (most skilled), so a must take the next
    call it qualifies for in line (d, waiting since before), not the newer c."""
    g = QueueSpec("g", "general", strategy="most-skilled")
    t = QueueSpec("t", "tax")
    acd = make([g, t], [agent("a", general=5, tax=5), agent("b", general=9)])
    acd.pause("a", 1)
    acd.pause("b", 1)
    acd.enqueue("e", "g", None, 0, 2)
    acd.enqueue("d", "t", None, 0, 3)
    assert offered(acd, 4) == []
    acd.unpause("a", 5)
    acd.unpause("b", 5)
    acd.enqueue("c", "g", None, 0, 6)
    assert offered(acd, 6) == [("e", "b"), ("d", "a")]
    assert acd.call("c").state == "waiting"


def test_extra_skills_and_levels():
    q = QueueSpec("g", "general", min_level=6)
    acd = make([q], [agent("a", general=5, tax=5), agent("b", general=7), agent("c", general=8, tax=2)])
    acd.enqueue("c1", "g", None, 0, 10, extra_skills=[("tax", 3)])
    assert offered(acd, 10) == []             # a's general is too low, c's tax too
    acd.enqueue("c2", "g", None, 0, 11, extra_skills=["tax"])
    assert offered(acd, 11) == [("c2", "c")]


# --- overflow -----------------------------------------------------------------------------

def test_overflow_stages_and_fallback():
    q = QueueSpec("g", "general", ("ja",), min_level=7, widen_after=30, open_after=60, overflow_skill="supervisor",
                  fallback_after=90, fallback="message:congestion", max_wait=300)
    acd = make([q], [agent("low", general=2), agent("sv", supervisor=9)])
    acd.pause("low", 0)
    acd.enqueue("c1", "g", "ja", 0, 10)
    acd.enqueue("c2", "g", "ja", 0, 11)
    assert offered(acd, 39) == []
    acd.unpause("low", 39.5)
    assert offered(acd, 39.9) == []           # level 2 < 7 before widening
    assert offered(acd, 40) == [("c1", "low")]
    assert [e.data for e in events(acd, "OVERFLOW")] == [("widen", 30.0)]
    assert offered(acd, 70) == []             # c2 widened at 41: low is ringing c1
    assert offered(acd, 71) == [("c2", "sv")]  # the supervisor group opens at 60 s of waiting
    acd.ring_no_answer("c2", "sv", 80)
    assert acd.agent("sv").state == AVAILABLE
    assert offered(acd, 80) == [("c2", "sv")]  # nobody else: sv is rung again
    acd.ring_no_answer("c2", "sv", 100)       # second miss in a row: paused
    assert acd.agent("sv").state == BREAK and acd.agent("sv").reason == "missed"
    assert acd.tick(101) == [Fallback("c2", "message", "congestion")]
    ex = events(acd, "EXITWITHTIMEOUT", "PAUSE")
    assert [e.event for e in ex] == ["PAUSE", "EXITWITHTIMEOUT"]
    assert ex[1].data == (2, 2, 90.0, "message")   # c1 still rings ahead of it
    with pytest.raises(KeyError):
        acd.position("c2")


def test_timeout_without_fallback_and_ringing_calls_are_not_pulled():
    q = QueueSpec("g", "general", max_wait=60)
    acd = make([q], [agent("a", general=5)])
    acd.enqueue("c1", "g", None, 0, 0)
    acd.enqueue("c2", "g", None, 0, 1)
    assert offered(acd, 1) == [("c1", "a")]
    assert acd.tick(65) == [Fallback("c2", "timeout", None)]
    acd.ring_no_answer("c1", "a", 70)         # c1 was ringing at 60: it leaves once the ring fails
    assert acd.tick(70) == [Fallback("c1", "timeout", None)]
    assert acd.queue_length("g") == 0


def test_open_stage_keeps_the_language():
    q = QueueSpec("g", "general", ("ja", "vi"), open_after=10, overflow_skill="supervisor")
    acd = make([q], [agent("sv", supervisor=9, langs=("ja",)), agent("svv", supervisor=1, langs=("ja", "vi"))])
    acd.pause("svv", 0)
    acd.enqueue("c1", "g", "vi", 0, 0)
    assert offered(acd, 20) == []
    acd.unpause("svv", 21)
    assert offered(acd, 21) == [("c1", "svv")]


# --- agent states -------------------------------------------------------------------------

def test_wrapup_timer():
    q = QueueSpec("g", "general", wrapup=30)
    acd = make([q], [agent("a", general=5)])
    acd.enqueue("c1", "g", None, 0, 0)
    acd.offers(0)
    acd.answered("c1", "a", 5)
    assert acd.agent("a").state == ON_CALL
    acd.ended("c1", 65)
    assert acd.agent("a").state == WRAP_UP
    acd.enqueue("c2", "g", None, 0, 70)
    assert offered(acd, 94.9) == []
    assert offered(acd, 95) == [("c2", "a")]
    assert acd.handle_time("g") == pytest.approx(180 + 0.2 * (90 - 180))


def test_wrapup_until_the_record_is_saved():
    """Toshima 2.1.4: no new call until the contact record is saved."""
    q = QueueSpec("g", "general", wrapup=5, wrapup_until_record=True)
    acd = make([q], [agent("a", general=5)])
    acd.enqueue("c1", "g", None, 0, 0)
    acd.offers(0)
    acd.answered("c1", "a", 1)
    acd.ended("c1", 10)
    acd.enqueue("c2", "g", None, 0, 11)
    assert offered(acd, 3600) == [] and acd.agent("a").state == WRAP_UP
    acd.record_saved("a", 3601)
    assert offered(acd, 3601) == [("c2", "a")]
    acd.answered("c2", "a", 3602)
    acd.record_saved("a", 3610)               # saved during the call: free at hang-up
    acd.ended("c2", 3620)
    assert acd.agent("a").state == AVAILABLE


def test_auto_pause_after_k_misses_and_answer_resets_the_count():
    q = QueueSpec("g", "general", pause_after_misses=3)
    acd = make([q], [agent("a", general=5)])
    acd.enqueue("c1", "g", None, 0, 0)
    for t in (0, 10):
        assert offered(acd, t) == [("c1", "a")]      # the only agent: rung again in a new round
        acd.ring_no_answer("c1", "a", t + 5)
    assert acd.agent("a").missed == 2 and acd.agent("a").state == AVAILABLE
    assert offered(acd, 20) == [("c1", "a")]
    acd.answered("c1", "a", 21)
    assert acd.agent("a").missed == 0
    acd.ended("c1", 30)
    acd.enqueue("c2", "g", None, 0, 40)
    for t in (45, 55, 65):
        assert offered(acd, t) == [("c2", "a")]
        acd.ring_no_answer("c2", "a", t + 5)
    assert (acd.agent("a").state, acd.agent("a").reason) == (BREAK, "missed")
    assert [(e.event, e.data) for e in events(acd, "PAUSE", "RINGNOANSWER")][-2:] == \
        [("RINGNOANSWER", (5.0,)), ("PAUSE", ("missed",))]
    assert offered(acd, 80) == []
    acd.unpause("a", 90)
    assert acd.agent("a").missed == 0 and offered(acd, 90) == [("c2", "a")]


def test_login_logout_pause_while_busy_apply_afterwards():
    q = QueueSpec("g", "general", wrapup=10)
    acd = make([q], [agent("a", general=5)], login=False)
    with pytest.raises(ACDError):
        acd.pause("a", 0)
    acd.login("a", 0)
    acd.enqueue("c1", "g", None, 0, 1)
    acd.offers(1)
    acd.pause("a", 2, "training")             # requested while ringing
    acd.answered("c1", "a", 3)
    assert acd.agent("a").state == ON_CALL and acd.agent("a").pending == "break:training"
    acd.ended("c1", 20)
    acd.tick(30)
    assert (acd.agent("a").state, acd.agent("a").reason) == (BREAK, "training")
    acd.logout("a", 31)
    assert acd.agent("a").state == LOGGED_OUT
    assert [e.event for e in events(acd) if e.agent == "a" and e.call_id is None] == \
        ["AGENTLOGIN", "PAUSE", "AGENTLOGOFF"]


def test_abandon_while_ringing_frees_the_agent_without_a_miss():
    q = QueueSpec("g", "general")
    acd = make([q], [agent("a", general=5)])
    acd.enqueue("c1", "g", None, 0, 0)
    acd.enqueue("c2", "g", None, 0, 1)
    acd.offers(1)
    acd.abandon("c1", 4)
    assert acd.agent("a").state == AVAILABLE and acd.agent("a").missed == 0
    assert offered(acd, 4) == [("c2", "a")]
    ab = events(acd, "ABANDON")[0]
    assert (ab.call_id, ab.data) == ("c1", (1, 1, 4.0))
    with pytest.raises(ACDError):
        acd.answered("c2", "zz", 5)
    acd.answered("c2", "a", 5)
    with pytest.raises(ACDError):
        acd.abandon("c2", 6)


# --- waiting figures, max length --------------------------------------------------------

def test_estimated_wait_uses_qualified_staff_and_handle_time():
    q = QueueSpec("g", "general", ("ja", "vi"), aht=100, wrapup=0)
    acd = make([q], [agent("a", general=5), agent("b", general=5), agent("v", general=5, langs=("ja", "vi"))])
    for i in range(3):
        acd.enqueue(f"busy{i}", "g", "ja", 0, 0)
    for o in acd.offers(0):
        acd.answered(o.call_id, o.agent_id, 0)
    acd.enqueue("j1", "g", "ja", 0, 40)
    acd.enqueue("j2", "g", "ja", 0, 41)
    acd.enqueue("v1", "g", "vi", 0, 42)
    # 3 Japanese speakers, each 50 s into a call: 1/3*100 - 50 < 0, 2/3*100 - 50
    assert acd.estimated_wait("j1", 50) == 0.0
    assert acd.estimated_wait("j2", 50) == pytest.approx(200 / 3 - 50, abs=0.01)
    assert acd.estimated_wait("v1", 50) == pytest.approx(100 - 50, abs=0.01)   # only v speaks Vietnamese
    acd.pause("a", 51, "lunch")                                      # applies after the call
    acd.ended("busy0", 60)
    assert acd.agent("a").state == BREAK
    # the pending break applied at wrap-up's end, so j1 still waits for b or v
    assert acd.handle_time("g") == pytest.approx(100 + 0.2 * (60 - 100), abs=0.01)
    assert acd.estimated_wait("j2", 60) == pytest.approx(2 / 2 * acd.handle_time("g") - 60, abs=0.01)


def test_max_length_refuses_with_a_reason():
    q = QueueSpec("g", "general", max_length=2)
    acd = make([q], [agent("a", general=5)], login=False)
    assert isinstance(acd.enqueue("c1", "g", None, 0, 0), Enqueued)
    assert isinstance(acd.enqueue("c2", "g", None, 0, 0), Enqueued)
    assert acd.enqueue("c3", "g", None, 0, 0) == Refused("c3", "full")
    acd.abandon("c1", 1)
    assert isinstance(acd.enqueue("c3", "g", None, 0, 2), Enqueued)
    with pytest.raises(ACDError):
        acd.enqueue("c3", "g", None, 0, 2)
    with pytest.raises(KeyError):
        acd.enqueue("c4", "nope", None, 0, 2)


def test_clock_never_runs_backwards():
    q = QueueSpec("g", "general", widen_after=10, min_level=9)
    acd = make([q], [agent("a", general=5)])
    acd.enqueue("c1", "g", None, 0, 100)
    assert offered(acd, 111) == [("c1", "a")]
    acd.answered("c1", "a", 50)               # a stale timestamp counts as the latest seen
    assert events(acd, "CONNECT")[0].time == 111


# --- snapshot / restore -------------------------------------------------------------------

def test_snapshot_and_restore():
    q1 = QueueSpec("g", "general", wrapup=30)
    q2 = QueueSpec("t", "tax", wrapup_until_record=True)
    specs = [agent("a", general=5), agent("b", general=5), agent("c", tax=5), agent("d", general=5),
             agent("e", general=5)]
    acd = make([q1, q2], specs)
    acd.pause("b", 1, "lunch")
    acd.enqueue("t1", "t", None, 0, 2)
    acd.enqueue("g1", "g", None, 0, 2)
    acd.offers(2)
    acd.answered("t1", "c", 3)
    acd.ended("t1", 10)                       # c: wrap-up until the record is saved
    acd.answered("g1", "a", 3)                # a: on a call when the app stops
    acd.logout("e", 4)
    rows = acd.snapshot()
    states = {r.agent_id: (r.state, r.reason) for r in rows}
    assert states == {"a": (ON_CALL, "g"), "b": (BREAK, "lunch"), "c": (WRAP_UP, "t"), "d": (AVAILABLE, None),
                      "e": (LOGGED_OUT, None)}
    fresh = make([q1, q2], specs, login=False)
    fresh.restore(rows, 20)
    got = {v.id: (v.state, v.reason) for v in fresh.agents()}
    assert got == {"a": (WRAP_UP, None), "b": (BREAK, "lunch"), "c": (WRAP_UP, None), "d": (AVAILABLE, None),
                   "e": (LOGGED_OUT, None)}
    fresh.tick(50)
    assert fresh.agent("a").state == AVAILABLE            # 30 s of wrap-up from the restart
    fresh.tick(5000)
    assert fresh.agent("c").state == WRAP_UP              # still waits for the record
    fresh.record_saved("c", 5001)
    assert fresh.agent("c").state == AVAILABLE
    fresh.enqueue("x", "g", None, 0, 5002)
    with pytest.raises(ACDError):
        fresh.restore(rows, 5003)


# --- site --------------------------------------------------------------------------------

def test_from_sendai_site():
    site = load_site(SENDAI)
    acd = ACD.from_site(site)
    assert acd.queues["disaster"].strategy == "most-skilled" and acd.queues["general"].overflow_skill == "supervisor"
    vi = [a.id for a in site.agents if "vi" in a.languages]
    assert len(vi) == 1
    for a in site.agents:
        acd.login(a.id, 0)
    acd.enqueue("v", "general", "vi", 0, 1)
    acd.enqueue("d", "disaster", "ja", 10, 1)
    got = dict((o.call_id, o.agent_id) for o in acd.offers(1))
    assert got["v"] == vi[0]
    assert got["d"] == "sv1001"               # most skilled on the disaster line
    assert all(isinstance(o, Offer) for o in acd.offers(2))


# --- storage --------------------------------------------------------------------------------

def test_queue_log_and_agent_state_stores(db_engine):
    q = QueueSpec("g", "general", wrapup=0)
    t0 = datetime(2026, 12, 1, 0, 0, tzinfo=timezone.utc).timestamp()
    acd = make([q], [agent("a", general=5), agent("b", general=5)], login=False)
    acd.login("a", t0)
    acd.enqueue("c1", "g", "ja", 0, t0 + 1)
    acd.offers(t0 + 1)
    acd.answered("c1", "a", t0 + 3.25)
    acd.ended("c1", t0 + 63.25)
    acd.pause("a", t0 + 70, "lunch")
    store = QueueLogStore(db_engine)
    assert store.append(acd.drain_events()) == 5
    rows = store.list()
    assert [r.event for r in rows] == ["AGENTLOGIN", "ENTERQUEUE", "CONNECT", "COMPLETECALLER", "PAUSE"]
    byname = {r.event: r for r in rows}
    assert byname["CONNECT"].data == ("2.25", "2.25", "1") and byname["CONNECT"].agent == "a"
    assert byname["COMPLETECALLER"].data == ("2.25", "60", "1")
    assert byname["PAUSE"].data == ("lunch",) and byname["PAUSE"].call_id is None
    assert byname["ENTERQUEUE"].time == datetime(2026, 12, 1, 0, 0, 1, tzinfo=timezone.utc)
    assert [r.event for r in store.list(call_id="c1")] == ["ENTERQUEUE", "CONNECT", "COMPLETECALLER"]
    assert len(store.list(agent="a", event="PAUSE")) == 1
    states = AgentStateStore(db_engine)
    states.save(acd.snapshot())
    states.save(acd.snapshot())               # replaces, no duplicates
    loaded = states.load()
    assert loaded == acd.snapshot()
    fresh = make([q], [agent("a", general=5), agent("b", general=5)], login=False)
    fresh.restore(loaded, t0 + 100)
    assert fresh.agent("a").state == BREAK and fresh.agent("a").reason == "lunch"


def test_bench_smoke():
    from lab.bench_acd import run_acd_bench
    res = run_acd_bench(agents=300, skills=10, waiting=100, decisions=50, naive_decisions=10)
    assert res["engine"]["decisions"] == 50 and res["naive"]["decisions"] == 10
    assert res["engine"]["placed"] > 0 and res["naive"]["placed"] > 0
    assert "engine" in res["table"] and "naive" in res["table"] and res["engine"]["p99_ms"] > 0
