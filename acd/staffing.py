"""Staffing arithmetic: Erlang C (callers wait forever) and Erlang A (callers give up).

Pure functions of arrival rate, handling time and staff. Erlang C is the classic sizing rule;
Erlang A (Palm's M/M/N+M) adds the callers' patience, which matters for a city center where an
abandon rate is itself a target (Toshima: under 10 % a month). Erlang A is computed exactly on
its birth-death chain, truncated where the remaining probability is negligible.
"""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Staffing:
    agents: int
    occupancy: float          # share of agents' time on calls
    p_wait: float             # probability a caller waits at all
    service_level: float      # answered within the threshold (of all callers)
    asa: float                # average speed of answer, seconds (of answered callers)
    p_abandon: float = 0.0    # Erlang A only


def erlang_b(traffic: float, agents: int) -> float:
    """Blocking probability, by the stable recursion B(n) = A·B(n-1) / (n + A·B(n-1))."""
    b = 1.0
    for n in range(1, agents + 1):
        b = traffic * b / (n + traffic * b)
    return b


def erlang_c(calls_per_hour: float, aht: float, agents: int, threshold: float) -> Staffing:
    """``aht`` and ``threshold`` in seconds."""
    traffic = calls_per_hour * aht / 3600.0
    if agents <= traffic:
        return Staffing(agents, 1.0, 1.0, 0.0, math.inf)
    b = erlang_b(traffic, agents)
    c = agents * b / (agents - traffic * (1 - b))
    sl = 1 - c * math.exp(-(agents - traffic) * threshold / aht)
    asa = c * aht / (agents - traffic)
    return Staffing(agents, traffic / agents, c, sl, asa)


def erlang_a(calls_per_hour: float, aht: float, agents: int, threshold: float, patience: float) -> Staffing:
    """M/M/N+M: exponential patience with mean ``patience`` seconds."""
    return _erlang_a(calls_per_hour, aht, agents, threshold, patience)[0]


def _erlang_a(calls_per_hour, aht, agents, threshold, patience):
    """(Staffing, mean queue length); the latter lets tests check Little's law."""
    lam, mu, theta = calls_per_hour / 3600.0, 1.0 / aht, 1.0 / patience
    # stationary distribution of the number in system, unnormalised, truncated far in the tail
    p = [1.0]
    n = 0
    while True:
        n += 1
        rate_out = min(n, agents) * mu + max(n - agents, 0) * theta
        p.append(p[-1] * lam / rate_out)
        if n > agents and p[-1] < 1e-15 * max(p):
            break
    total = sum(p)
    p = [x / total for x in p]
    p_wait = sum(p[agents:])
    lq = sum((k - agents) * p[k] for k in range(agents, len(p)))
    busy = sum(min(k, agents) * p[k] for k in range(len(p)))
    # An arrival finding k >= N in the system waits behind j = k-N callers: phase i (i callers
    # ahead) lasts Exp(N·mu + (i+1)·theta) and ends in an advance with probability
    # (N·mu + i·theta) / (N·mu + (i+1)·theta), else the caller gives up. By the competing-
    # exponentials property the phase lengths do not depend on how each phase ends.
    served = sum(p[:agents])
    served_fast = served
    wait_served = 0.0
    prob, mean = 1.0, 0.0                   # running over phases i = 0, 1, ...
    for k in range(agents, len(p)):
        i = k - agents
        rate = agents * mu + (i + 1) * theta
        prob *= (agents * mu + i * theta) / rate
        mean += 1 / rate
        served += p[k] * prob
        wait_served += p[k] * prob * mean
        if p[k] > 1e-12:
            served_fast += p[k] * _reach_server_within(i + 1, agents * mu, theta, threshold)
    p_abandon = 1 - served
    asa = wait_served / served if served > 0 else math.inf
    return Staffing(agents, busy / agents, p_wait, served_fast, asa, p_abandon), lq


def _reach_server_within(position: int, service_rate: float, theta: float, t: float) -> float:
    """P(a caller at ``position`` in line reaches an agent within ``t`` without giving up).

    With j callers ahead the line moves at rate N·mu + j·theta; the caller's own patience runs
    at theta. Phase j lasts Exp(N·mu + (j+1)·theta) and ends in an advance with probability
    (N·mu + j·theta) / (N·mu + (j+1)·theta). The time bound is handled by uniformisation.
    """
    rates = [service_rate + (j + 1) * theta for j in range(position - 1, -1, -1)]
    advance = [(r - theta) / r for r in rates]
    q = max(rates)
    # probability mass in each phase after m uniformised jumps; absorbed = reached a server
    state = [1.0] + [0.0] * position              # index i: i phases done (position = at a server)
    reached = 0.0
    poisson = math.exp(-q * t)                    # P(M = 0)
    cumulative = poisson
    m = 0
    while cumulative < 1 - 1e-12 and m < 10000:
        new = [0.0] * (position + 1)
        for i in range(position):
            stay = 1 - rates[i] / q
            new[i] += state[i] * stay
            new[i + 1] += state[i] * (rates[i] / q) * advance[i]   # the rest gave up: gone
        new[position] += state[position]
        state = new
        m += 1
        poisson *= q * t / m
        cumulative += poisson
        reached += poisson * state[position]
    return reached


def agents_needed(calls_per_hour: float, aht: float, threshold: float, target: float,
                  patience: float | None = None, max_occupancy: float = 0.9) -> Staffing:
    """The fewest agents meeting the service-level target (and an occupancy ceiling)."""
    traffic = calls_per_hour * aht / 3600.0
    n = max(1, math.ceil(traffic))
    while n < 100000:
        s = (erlang_a(calls_per_hour, aht, n, threshold, patience) if patience
             else erlang_c(calls_per_hour, aht, n, threshold))
        if s.service_level >= target and s.occupancy <= max_occupancy:
            return s
        n += 1
    raise ValueError("no staffing meets the target")
