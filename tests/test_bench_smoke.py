"""Smoke test of the FastAGI benchmark (lab.bench): it runs end to end and counts right.

No timing assertions: the figures depend on the machine. This only checks that every server
process carried every session through the whole script, and that the result has its shape.
"""
from __future__ import annotations

import pytest

from lab.bench import run_agi_bench
from lab.bench_targets import SERVERS, expected_verbs, script

SESSIONS = 20
COMMANDS = 10


def test_script_is_the_ivr_and_ends_in_hangup():
    assert expected_verbs(10) == ["ANSWER", "STREAM FILE", "GET DATA", "SET VARIABLE", "GET VARIABLE",
                                  "STREAM FILE", "GET DATA", "SAY DIGITS", "EXEC", "HANGUP"]
    assert expected_verbs(1) == ["HANGUP"]
    assert len(script(25)) == 25 and script(25)[-1][2] == "HANGUP"


@pytest.fixture(scope="module")
def result():
    return run_agi_bench(sessions=SESSIONS, commands=COMMANDS, rounds=1, servers=list(SERVERS),
                         p99_sessions=None, think_ms=0, timeout=60)


def test_result_shape(result):
    assert set(result) >= {"params", "servers", "goals", "table", "elapsed_s"}
    assert list(result["servers"]) == list(SERVERS)
    assert result["params"]["sessions"] == SESSIONS
    for name in SERVERS:
        assert name in result["table"]
    assert "goals:" in result["table"]
    assert len(result["goals"]) == 4
    for r in result["servers"].values():
        for key in ("new_session_rate", "overall_session_rate", "rtt_p50_ms", "rtt_p99_ms",
                    "kib_per_session", "errors", "rss_hold_per_round", "server_cpu_us_per_command"):
            assert key in r, key
        assert r["new_session_rate"] > 0
        assert r["rtt_samples"] == SESSIONS * (COMMANDS - 1)


@pytest.mark.parametrize("name", SERVERS)
def test_every_session_completed(result, name):
    r = result["servers"][name]
    assert r["errors"] == 0, (r["error_kinds"], r["error_samples"], r["server_stats"])
    assert r["error_kinds"] == {}
    assert r["held_per_round"] == [SESSIONS]         # all held open at once before any reply
    assert r["completed"] == r["expected_sessions"] == SESSIONS
    assert r["commands_seen"] == r["expected_commands"] == SESSIONS * COMMANDS
    stats = r["server_stats"]
    assert stats["accepted"] == stats["completed"] == SESSIONS, stats
    assert stats["failed"] == 0, stats
    if name == "madoguchi":
        assert stats["server_stats"]["completed"] == SESSIONS
        assert stats["server_stats"]["errors"] == stats["server_stats"]["rejected"] == 0
