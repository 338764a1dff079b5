"""The flow engine driven with plain values: no sockets, no PBX, any date, any mode."""
from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from dialplan import flow
from dialplan.modes import CongestionMonitor, ServiceState
from provisioning.site import load_site

SENDAI = Path(__file__).resolve().parents[1] / "lab" / "sites" / "sendai"
JST = ZoneInfo("Asia/Tokyo")
OPEN = datetime(2026, 11, 24, 10, 0, tzinfo=JST)      # a Tuesday


@pytest.fixture(scope="module")
def site():
    return load_site(SENDAI)


def drive(site, dnid, answers, now=OPEN, state=ServiceState()):
    """Run the flow; ``answers(action)`` gives each outcome."""
    trail = flow.Trail()
    ctx = flow.Context(now=lambda: now, state=lambda: state)
    gen = flow.run(site, dnid, trail, ctx)
    actions, outcome = [], None
    try:
        while True:
            action = gen.send(outcome)
            actions.append(action)
            outcome = answers(action)
    except StopIteration as stop:
        assert stop.value is trail
    return actions, trail


def keys(*digits, agent="op1001"):
    it = iter(digits)

    def answer(action):
        if isinstance(action, flow.Collect):
            d = next(it, "")
            return flow.Digits(d, timed_out=not d)
        if isinstance(action, flow.Connect):
            return flow.Connected(agent is not None, agent, "answered" if agent else "timeout")
        return None
    return answer


def prompts(actions):
    return [a.prompt for a in actions if isinstance(a, (flow.Play, flow.Collect))]


def test_open_hours_main_menu_to_general_queue(site):
    actions, trail = drive(site, "0223984894", keys("1"))
    assert actions[:3] == [flow.Answer(), flow.SetLanguage("ja"), flow.Play("recording-notice")]
    assert prompts(actions)[:3] == ["recording-notice", "welcome", "main-menu"]
    assert flow.Connect("general", "ja") in actions
    assert (trail.path, trail.queue, trail.agent, trail.outcome) == \
        ("main:hours>welcome>menu>1>general", "general", "op1001", "answered")


def test_key_pressed_during_the_welcome_is_taken_by_the_menu(site):
    def answers(action):
        if isinstance(action, flow.Play) and action.prompt == "welcome":
            assert action.interruptible
            return flow.Digits("1")
        return keys()(action) if not isinstance(action, flow.Connect) else flow.Connected(True, "op1002", "answered")
    actions, trail = drive(site, "0223984894", answers)
    assert not any(isinstance(a, flow.Collect) for a in actions) and trail.outcome == "answered"


@pytest.mark.parametrize("when, is_open", [
    (datetime(2026, 11, 24, 19, 59, tzinfo=JST), True),      # weekday, 1 minute before 20:00
    (datetime(2026, 11, 24, 20, 1, tzinfo=JST), False),      # weekday, just after closing
    (datetime(2026, 11, 24, 7, 59, tzinfo=JST), False),      # before opening
    (datetime(2026, 11, 28, 16, 59, tzinfo=JST), True),      # Saturday, before 17:00
    (datetime(2026, 11, 28, 17, 1, tzinfo=JST), False),      # Saturday after 17:00
    (datetime(2026, 5, 6, 18, 0, tzinfo=JST), False),        # substitute holiday (振替休日): 17:00 close
    (datetime(2026, 5, 7, 18, 0, tzinfo=JST), True),         # the Thursday after: weekday hours
    (datetime(2026, 11, 23, 18, 0, tzinfo=JST), False),      # 勤労感謝の日 on a Monday
    (datetime(2026, 12, 30, 16, 0, tzinfo=JST), True),       # year-end: open with weekend hours
    (datetime(2026, 12, 30, 18, 0, tzinfo=JST), False),
    (datetime(2027, 1, 4, 18, 0, tzinfo=JST), True),         # 1/4: back to weekday hours
    (datetime(2026, 11, 24, 11, 1, tzinfo=ZoneInfo("UTC")), False),  # 20:01 JST, told in UTC
])
def test_calendar_decides_open_or_after_hours(site, when, is_open):
    actions, trail = drive(site, "0223984894", keys("1"), now=when)
    if is_open:
        assert trail.outcome == "answered"
    else:
        assert trail.outcome == "closed" and prompts(actions)[-1] == "after-hours"
        assert not any(isinstance(a, flow.Connect) for a in actions)


def test_menu_timeout_prompts_then_fallback(site):
    menu = site.flows["main"].nodes["menu"]
    actions, trail = drive(site, "0223984894", keys())
    assert sum(isinstance(a, flow.Collect) for a in actions) == menu.retries + 1
    assert prompts(actions).count("no-input") == menu.retries
    assert flow.Connect("general", "ja") in actions and "fallback" in trail.path


def test_invalid_input_is_told_and_retried(site):
    actions, trail = drive(site, "0223984894", keys("7", "1"))
    assert prompts(actions)[2:5] == ["main-menu", "invalid", "main-menu"]
    assert trail.outcome == "answered"


@pytest.mark.parametrize("key, lang", [("1", "ja"), ("2", "en"), ("3", "zh"), ("4", "ko"), ("5", "vi"), ("6", "ne")])
def test_each_language(site, key, lang):
    actions, trail = drive(site, "0223984894", keys("9", key, "1"))
    assert flow.SetLanguage(lang) in actions and trail.language == lang
    assert flow.Connect("general", lang) in actions
    assert f"lang:{lang}" in trail.path


def test_emergency_stop_plays_the_suspension_message_to_everyone(site):
    actions, trail = drive(site, "0223984894", keys("1"), state=ServiceState("emergency"))
    assert prompts(actions) == ["service-suspended"] and trail.outcome == "suspended"


def test_congestion_message_before_queueing(site):
    actions, _ = drive(site, "0223984894", keys("1"), state=ServiceState(congestion=True))
    i = actions.index(flow.Play("congestion"))
    assert isinstance(actions[i + 1], flow.Connect)
    actions, _ = drive(site, "0223984894", keys("1"))
    assert flow.Play("congestion") not in actions


def test_disaster_mode_72_hours_round_the_clock_then_normal_hours(site):
    night = datetime(2026, 11, 25, 3, 0, tzinfo=JST)
    since = night - timedelta(hours=10)
    on = ServiceState("disaster", disaster_since=since)
    # the disaster line at 03:00, 10 h into disaster mode: open, straight to the disaster menu, with priority
    actions, trail = drive(site, "0223985905", keys("1"), now=night, state=on)
    assert prompts(actions)[1] == "disaster-greeting"
    connect = next(a for a in actions if isinstance(a, flow.Connect))
    assert connect.queue == "disaster" and connect.priority == flow.DISASTER_PRIORITY
    # the main line is open at night too during the first 72 hours, without priority
    actions, trail = drive(site, "0223984894", keys("1"), now=night, state=on)
    assert trail.outcome == "answered"
    assert next(a for a in actions if isinstance(a, flow.Connect)).priority == 0
    # after 72 hours: normal hours again
    late = ServiceState("disaster", disaster_since=night - timedelta(hours=73))
    _, trail = drive(site, "0223984894", keys("1"), now=night, state=late)
    assert trail.outcome == "closed"
    # mode off: the disaster line answers like the center, by the calendar
    actions, trail = drive(site, "0223985905", keys("1"), now=OPEN)
    assert trail.path.startswith("disaster:mode>hours>greeting") and \
        next(a for a in actions if isinstance(a, flow.Connect)).priority == 0


def test_unanswered_queue_ends_with_the_busy_message(site):
    actions, trail = drive(site, "0223984894", keys("1", agent=None))
    assert prompts(actions)[-1] == "all-busy" and trail.outcome == "unanswered"


def test_unknown_number_is_not_answered(site):
    actions, trail = drive(site, "0312345678", keys())
    assert actions == [flow.Hangup("unknown number")] and trail.outcome == "misrouted"


def test_every_outcome_the_flow_reaches_is_one_the_call_log_accepts(site):
    from cti.calls import OUTCOMES
    seen = {drive(site, "0223984894", keys(*k, agent=a), now=n, state=st)[1].outcome
            for k, a, n, st in [(("1",), "op1001", OPEN, ServiceState()), (("2",), None, OPEN, ServiceState()),
                                (("1",), None, OPEN, ServiceState()), ((), None, OPEN, ServiceState("emergency")),
                                (("1",), "op1", datetime(2026, 11, 24, 22, 0, tzinfo=JST), ServiceState())]}
    seen.add(drive(site, "0312345678", keys())[1].outcome)
    assert seen <= set(OUTCOMES)
    assert {"answered", "message", "unanswered", "suspended", "closed", "misrouted"} <= seen


def test_congestion_enters_at_threshold_and_leaves_below_half():
    m = CongestionMonitor(max_waiting=4, max_oldest_wait=60)
    assert m.observe(3, 10) is None
    assert m.observe(4, 10) is True
    assert m.observe(3, 10) is None           # still congested: no flapping
    assert m.observe(2, 29) is False
    assert m.observe(0, 0) is None
    assert m.observe(1, 61) is True           # the oldest wait alone is enough


def test_speech_node_routes_by_phrase_falls_back_and_uses_keys_without_a_model(site):
    import dataclasses
    from provisioning.flows import Flow, Node
    nodes = {
        "ask": Node("ask", "speech", {"prompt": "department-menu", "phrases": {"市民税": "tax", "ごみ": "garbage"},
                                      "timeout": 5, "fallback": "human", "dtmf": "keys"}),
        "keys": Node("keys", "menu", {"prompt": "main-menu", "options": {"1": "tax"}, "timeout": 5, "retries": 0,
                                      "invalid_prompt": None, "timeout_prompt": None, "fallback": "human"}),
        "tax": Node("tax", "transfer", {"entry": "shiminzei", "next": "human"}),
        "garbage": Node("garbage", "tag", {"tag": "garbage", "next": "human"}),
        "human": Node("human", "queue", {"queue": "general", "skills": [], "next": "bye"}),
        "bye": Node("bye", "hangup", {"prompt": None}),
    }
    number = dataclasses.replace(site.numbers[0], flow="speech", recorded=False)
    s2 = dataclasses.replace(site, flows={**site.flows, "speech": Flow("speech", "ask", nodes)}, numbers=(number,))

    def heard(h):
        def answers(action):
            if isinstance(action, flow.Listen):
                assert action.phrases == ("市民税", "ごみ") and action.language == "ja"
                return h
            if isinstance(action, flow.Collect):
                return flow.Digits("1")
            if isinstance(action, (flow.Connect, flow.Transfer)):
                return flow.Connected(True, "op1001", "answered")
        return answers
    _, t = drive(s2, number.number, heard(flow.Heard(True, "市民税")))
    assert t.outcome == "transferred" and "said:tax" in t.path
    actions, t = drive(s2, number.number, heard(flow.Heard(True, "ごみ")))
    assert t.tags == ["garbage"] and next(a for a in actions if isinstance(a, flow.Connect)).tags == ("garbage",)
    _, t = drive(s2, number.number, heard(flow.Heard(True, None)))
    assert t.path == "speech:ask>fallback>human" and t.outcome == "answered"
    _, t = drive(s2, number.number, heard(flow.Heard(False)))
    assert t.path.startswith("speech:ask>dtmf>keys>1>tax") and t.outcome == "transferred"
