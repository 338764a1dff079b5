"""Erlang C against published values; Erlang A against its own identities and a simulation."""
from __future__ import annotations

import heapq
import random

import pytest

from acd.staffing import _erlang_a, agents_needed, erlang_a, erlang_c


def test_erlang_c_textbook_values():
    # 100 calls/h of 6 min = 10 erlangs; 11 agents: P(wait) 0.6821 (standard Erlang C table)
    s = erlang_c(100, 360, 11, 20)
    assert s.p_wait == pytest.approx(0.6821, abs=5e-4)
    assert s.asa == pytest.approx(s.p_wait * 360 / (11 - 10), rel=1e-9)   # ASA = C·AHT/(N-A)
    assert s.occupancy == pytest.approx(10 / 11)
    s = erlang_c(100, 360, 12, 20)
    assert s.p_wait == pytest.approx(0.4494, abs=5e-4)
    assert erlang_c(100, 360, 10, 20).service_level == 0.0        # unstable: never enough


def test_agents_needed_meets_the_target_with_the_fewest_agents():
    # Kawasaki's target: 85 % within 10 s. 120 calls/h at 3 min handling.
    s = agents_needed(120, 180, 10, 0.85)
    assert s.service_level >= 0.85
    assert erlang_c(120, 180, s.agents - 1, 10).service_level < 0.85


def test_erlang_a_identities_and_limit():
    s, lq = _erlang_a(100, 360, 10, 20, patience=120)
    assert s.p_abandon == pytest.approx((1 / 120) * lq / (100 / 3600), rel=1e-6)   # abandons = theta·Lq
    assert 0 < s.p_abandon < s.p_wait < 1 and 0 < s.service_level < 1
    # very patient callers: Erlang A tends to Erlang C
    a = erlang_a(100, 360, 12, 20, patience=1e7)
    c = erlang_c(100, 360, 12, 20)
    assert a.p_wait == pytest.approx(c.p_wait, abs=2e-3)
    assert a.service_level == pytest.approx(c.service_level, abs=2e-3)
    assert a.asa == pytest.approx(c.asa, rel=1e-2)


def simulate(calls_per_hour, aht, agents, threshold, patience, n=60000, seed=7):
    """M/M/N+M, first come first served; the answer Erlang A must reproduce."""
    rng = random.Random(seed)
    t, free_at = 0.0, [0.0] * agents
    heapq.heapify(free_at)
    lam = calls_per_hour / 3600
    abandoned = fast = 0
    waits = []
    # FCFS with abandonment: a caller is served at the first moment a server frees up that no
    # earlier (still waiting) caller takes; track the queue of pending start times
    for _ in range(n):
        t += rng.expovariate(lam)
        give_up = t + rng.expovariate(1 / patience)
        start = max(t, free_at[0])
        if start > give_up:
            abandoned += 1
            continue
        heapq.heapreplace(free_at, start + rng.expovariate(1 / aht))
        waits.append(start - t)
        fast += start - t <= threshold
    return abandoned / n, fast / n, sum(waits) / len(waits)


def test_erlang_a_matches_a_simulation():
    ab, sl, asa = simulate(100, 360, 10, 20, 120)
    s = erlang_a(100, 360, 10, 20, 120)
    assert s.p_abandon == pytest.approx(ab, abs=0.015)
    assert s.service_level == pytest.approx(sl, abs=0.015)
    assert s.asa == pytest.approx(asa, rel=0.1)


def test_wfm_staffing_command():
    from click.testing import CliRunner

    import cli
    out = CliRunner().invoke(cli.main, ["wfm", "staffing", "--calls", "50", "--interval", "30", "--aht", "360",
                                        "--within", "20", "--target", "0.8"])
    assert out.exit_code == 0, out.output
    n = agents_needed(100, 360, 20, 0.8).agents
    assert out.output.startswith(f"Erlang C: {n} operators for 50 calls per 30 min")
