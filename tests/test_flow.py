"""The flow engine driven with plain values: no sockets, no PBX."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from acd.pool import AgentPool
from dialplan import flow
from provisioning.site import load_site
from provisioning.values import Target

SENDAI = Path(__file__).resolve().parents[1] / "lab" / "sites" / "sendai"


@pytest.fixture(scope="module")
def site():
    return load_site(SENDAI)


def drive(site, dnid, answers):
    """Run the flow; ``answers`` maps action types to callables giving the outcome."""
    trail = flow.Trail()
    gen = flow.run(site, dnid, trail)
    actions, outcome = [], None
    try:
        while True:
            action = gen.send(outcome)
            actions.append(action)
            outcome = answers(action)
    except StopIteration as stop:
        assert stop.value is trail
    return actions, trail


def keys(*digits):
    it = iter(digits)

    def answer(action):
        if isinstance(action, flow.Collect):
            d = next(it, "")
            return flow.Digits(d, timed_out=not d)
        if isinstance(action, flow.Connect):
            return flow.Connected(True, "op1001", "answered")
        return None
    return answer


def test_main_menu_to_general_queue(site):
    actions, trail = drive(site, "0223984894", keys("1"))
    assert isinstance(actions[0], flow.Answer)
    assert actions[1] == flow.Collect("main-menu", "ja", 5, 1)
    assert actions[2] == flow.Connect("general", "ja")
    assert isinstance(actions[-1], flow.Hangup)
    assert (trail.path, trail.queue, trail.agent, trail.outcome) == ("main>1>general", "general", "op1001", "answered")


def test_language_choice_returns_to_entry_menu_in_that_language(site):
    actions, trail = drive(site, "022-398-4894", keys("9", "2", "1"))
    collects = [a for a in actions if isinstance(a, flow.Collect)]
    assert [(c.prompt, c.language) for c in collects] == [("main-menu", "ja"), ("language-menu", "ja"),
                                                          ("main-menu", "en")]
    assert flow.Connect("general", "en") in actions
    assert trail.language == "en" and trail.path == "main>9>language>2>lang:en>main>1>general"


def test_timeouts_use_the_menus_fallback_after_retries(site):
    menu = site.menus["main"]
    actions, trail = drive(site, "0223984894", keys())  # presses nothing at all
    collects = [a for a in actions if isinstance(a, flow.Collect)]
    assert len(collects) == menu.retries + 1
    assert flow.Connect(menu.on_timeout.value, "ja") in actions
    assert "timeout" in trail.path


def test_invalid_input_repeats_then_gives_up(site):
    actions, trail = drive(site, "0223984894", keys("7", "7", "7", "7"))
    assert not any(isinstance(a, flow.Connect) for a in actions)
    assert trail.outcome == "no_input" and isinstance(actions[-1], flow.Hangup)


def test_unanswered_queue_plays_overflow_message(site):
    def answers(action):
        if isinstance(action, flow.Collect):
            return flow.Digits("1")
        if isinstance(action, flow.Connect):
            return flow.Connected(False, None, "timeout")
    actions, trail = drive(site, "0223984894", answers)
    overflow = site.queues["general"].overflow
    assert flow.Play(overflow.value, "ja") in actions and trail.outcome == "unanswered"


def test_queue_overflow_to_another_queue(site):
    """A queue whose overflow is another queue offers the caller there before giving up."""
    general = dataclasses.replace(site.queues["general"], overflow=Target("queue", "interpreter"))
    site2 = dataclasses.replace(site, queues={**site.queues, "general": general})
    tried = []

    def answers(action):
        if isinstance(action, flow.Collect):
            return flow.Digits("1")
        if isinstance(action, flow.Connect):
            tried.append(action.queue)
            return flow.Connected(action.queue == "interpreter", "op1007" if action.queue == "interpreter" else None,
                                  "answered" if action.queue == "interpreter" else "timeout")
    _, trail = drive(site2, "0223984894", answers)
    assert tried == ["general", "interpreter"]
    assert (trail.queue, trail.agent, trail.outcome) == ("interpreter", "op1007", "answered")
    assert trail.path.endswith("general>overflow:interpreter")


def test_every_outcome_the_flow_reaches_is_one_the_call_log_accepts(site):
    from cti.calls import OUTCOMES
    scenarios = [keys("1"), keys("2"), keys(), keys("7", "7", "7", "7"), keys("*", "1")]

    def unanswered(action):
        if isinstance(action, flow.Collect):
            return flow.Digits("1")
        if isinstance(action, flow.Connect):
            return flow.Connected(False, None, "timeout")
    seen = {drive(site, "0223984894", s)[1].outcome for s in [*scenarios, unanswered]}
    seen.add(drive(site, "0312345678", keys())[1].outcome)
    assert seen <= set(OUTCOMES) and {"answered", "message", "no_input", "unanswered", "misrouted"} <= seen


def test_repeat_key_asks_the_same_menu_again(site):
    actions, trail = drive(site, "0223984894", keys("*", "1"))
    assert [a.prompt for a in actions if isinstance(a, flow.Collect)] == ["main-menu", "main-menu"]
    assert trail.path == "main>1>general"


def test_unknown_number_is_not_answered(site):
    actions, trail = drive(site, "0312345678", keys())
    assert actions == [flow.Hangup("unknown number")] and trail.outcome == "misrouted"


def test_pool_picks_longest_idle_with_skill_and_language(site):
    pool = AgentPool.from_site(site)
    first = pool.candidates("general", "ja")
    assert first and all("general" in a.skills for a in first)
    a = first[0]
    pool.claim(a.id)
    with pytest.raises(ValueError):
        pool.claim(a.id)
    assert a.id not in [x.id for x in pool.candidates("general", "ja")]
    pool.release(a.id, now=10.0)
    assert pool.candidates("general", "ja")[-1].id == a.id  # just finished: idle the shortest
    assert pool.candidates("no-such-skill") == []
