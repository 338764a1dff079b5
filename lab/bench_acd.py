"""ACD routing benchmark: the indexed engine (acd/engine.py) against a naive full-scan router.

    madoguchi lab bench acd            (run_acd_bench(); python -m lab.bench_acd --help)

Set-up (same seed for both routers): ``skills`` skills s00.., one queue per skill (every fifth
queue most-skilled, the rest longest-idle; min level 1-3); ``agents`` agents with 3 random skills
at levels 1-10, all speaking Japanese, one in five a second language; calls ask for one queue,
90 % in Japanese, the rest in another site language (lang:<code> required), one in twenty with
priority. Every agent is logged in and on a call (agents no call fits are logged out), and
``waiting`` callers wait -- the busy-hour state where routing matters.

**One routing decision** = an agent's call ends (wrap-up 0, so the agent is free at once) and
the router assigns that agent the first waiting call it qualifies for, in (priority, arrival)
order, or leaves it idle. For the engine the time measured is the one ``offers(now)`` call that
does it (``ended`` runs just before, untimed); after it, untimed: the offer is answered and a new
caller joins (``enqueue`` + ``offers``), so ``waiting`` stays constant. p50/p99 are over
``decisions`` such decisions, wall clock (``perf_counter``, what a caller waits, so a busy
machine shows in the tail) and CPU time of this thread (``thread_time``, the router's own cost).
The goals (p99 < 1 ms, >= 20x) are judged on wall clock.

The naive router holds the same agents and calls in plain lists: on each decision it walks the
waiting calls in (priority, arrival) order and for each one scans all agents for a free
qualified one (longest idle first), until the freed agent is placed or the calls run out; it runs
``naive_decisions`` decisions (it is slow).
"""
from __future__ import annotations

import argparse
import json
import random
import time

from acd.engine import ACD, AgentSpec, QueueSpec, lang_skill

LANGS = ("ja", "en", "zh", "ko", "vi", "ne")


def _site(agents: int, skills: int, rng: random.Random):
    names = [f"s{i:02d}" for i in range(skills)]
    queues = {f"q{i:02d}": QueueSpec(f"q{i:02d}", s, LANGS, strategy="most-skilled" if i % 5 == 0 else "longest-idle",
                                     min_level=rng.randint(1, 3), wrapup=0, max_length=10 ** 9, pause_after_misses=0)
              for i, s in enumerate(names)}
    specs = {}
    for i in range(agents):
        levels = {s: rng.randint(1, 10) for s in rng.sample(names, min(3, skills))}
        levels[lang_skill("ja")] = 5
        if rng.random() < 0.2:
            levels[lang_skill(rng.choice(LANGS[1:]))] = 5
        aid = f"a{i:05d}"
        specs[aid] = AgentSpec(aid, f"PJSIP/{aid}", levels)
    return queues, specs


def _new_call(rng: random.Random, queues) -> tuple[str, str, int]:
    qid = rng.choice(sorted(queues))
    lang = "ja" if rng.random() < 0.9 else rng.choice(LANGS[1:])
    return qid, lang, 10 if rng.random() < 0.05 else 0


def _pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))] if xs else float("nan")


# --- the indexed engine -------------------------------------------------------------------

def _fill(acd: ACD, queues, rng: random.Random, n_agents: int, waiting: int, now: float) -> tuple[int, set]:
    """Log everyone in, give every agent a call, then leave ``waiting`` callers waiting."""
    for v in acd.agents():
        acd.login(v.id, now)
    n = 0
    connected = set()
    while True:
        batch = max(1000, n_agents // 2)
        for _ in range(batch):
            n += 1
            qid, lang, prio = _new_call(rng, queues)
            acd.enqueue(f"c{n}", qid, lang, prio, now)
        for o in acd.offers(now):
            acd.answered(o.call_id, o.agent_id, now)
            connected.add(o.call_id)
        free = [v.id for v in acd.agents() if v.state == "available"]
        waiting_now = sum(1 for c in acd._calls.values() if c.state == "waiting")
        if not free or waiting_now >= 4 * waiting:
            break
    for aid in free:                         # no call fits them: off the floor for the run
        acd.logout(aid, now)
    # trim the queue to `waiting` callers (the newest leave)
    waiting_calls = sorted((c for c in acd._calls.values() if c.state == "waiting"), key=lambda c: c.seq)
    for c in waiting_calls[waiting:]:
        acd.abandon(c.id, now)
    acd.drain_events()
    return n, connected


def _run_engine(agents, skills, waiting, decisions, seed) -> dict:
    rng = random.Random(seed)
    queues, specs = _site(agents, skills, rng)
    acd = ACD(queues, specs)
    now = 1_000_000.0
    n, connected = _fill(acd, queues, rng, agents, waiting, now)
    calls_rng = random.Random(seed + 1)
    connected = sorted(connected)
    times, cpu, placed = [], [], 0
    for _ in range(decisions):
        now += 0.01
        i = calls_rng.randrange(len(connected))
        cid = connected[i]
        connected[i] = connected[-1]
        connected.pop()
        agent_id = acd._calls[cid].agent
        acd.ended(cid, now)
        c0, t0 = time.thread_time(), time.perf_counter()
        offers = acd.offers(now)
        times.append(time.perf_counter() - t0)
        cpu.append(time.thread_time() - c0)
        for o in offers:
            acd.answered(o.call_id, o.agent_id, now)
            connected.append(o.call_id)
            placed += 1
        if acd.agent(agent_id).state == "available":
            acd.logout(agent_id, now)
        n += 1
        qid, lang, prio = _new_call(rng, queues)
        acd.enqueue(f"c{n}", qid, lang, prio, now)
        for o in acd.offers(now):
            acd.answered(o.call_id, o.agent_id, now)
            connected.append(o.call_id)
        acd.drain_events()
    return {"times": times, "cpu": cpu, "placed": placed,
            "waiting": sum(1 for c in acd._calls.values() if c.state == "waiting")}


# --- the naive router -----------------------------------------------------------------------

class NaiveRouter:
    """Plain lists; every decision scans waiting calls x all agents."""

    def __init__(self, specs):
        self.agents = [[aid, dict(s.skills), "available", 0.0] for aid, s in sorted(specs.items())]
        self.by_id = {a[0]: a for a in self.agents}
        self.waiting: list = []      # [key, call id, requirements], kept in key order

    def route(self, now: float) -> list[tuple[str, str]]:
        out = []
        free = sum(1 for a in self.agents if a[2] == "available")
        i = 0
        while i < len(self.waiting) and free:
            key, cid, req = self.waiting[i]
            best = None
            for a in self.agents:             # the full scan
                if a[2] == "available" and all(a[1].get(s, 0) >= lvl for s, lvl in req):
                    if best is None or a[3] < best[3]:
                        best = a
            if best is not None:
                best[2] = "busy"
                free -= 1
                out.append((cid, best[0]))
                del self.waiting[i]
            else:
                i += 1
        return out

    def add(self, key, cid, req) -> None:
        import bisect
        bisect.insort(self.waiting, [key, cid, req])


def _run_naive(agents, skills, waiting, decisions, seed) -> dict:
    # the same population and the same busy-hour state, built by the engine, then copied
    rng = random.Random(seed)
    queues, specs = _site(agents, skills, rng)
    acd = ACD(queues, specs)
    now = 1_000_000.0
    n, connected = _fill(acd, queues, rng, agents, waiting, now)
    naive = NaiveRouter(specs)
    holder = {}
    for v in acd.agents():
        a = naive.by_id[v.id]
        a[2] = "available" if v.state == "available" else ("off" if v.state == "logged_out" else "busy")
        a[3] = v.idle_since
        if v.call_id:
            holder[v.call_id] = v.id
    for c in acd._calls.values():
        if c.state == "waiting":
            naive.add(c.key, c.id, c.base_sig)
    calls_rng = random.Random(seed + 1)
    connected = sorted(connected)
    seq = 10 ** 9
    times, cpu, placed = [], [], 0
    for _ in range(decisions):
        now += 0.01
        i = calls_rng.randrange(len(connected))
        cid = connected[i]
        connected[i] = connected[-1]
        connected.pop()
        a = naive.by_id[holder.pop(cid)]
        a[2], a[3] = "available", now
        c0, t0 = time.thread_time(), time.perf_counter()
        routed = naive.route(now)
        times.append(time.perf_counter() - t0)
        cpu.append(time.thread_time() - c0)
        for call_id, agent_id in routed:
            holder[call_id] = agent_id
            connected.append(call_id)
            placed += 1
        if a[2] == "available":
            a[2] = "off"
        n += 1
        seq += 1
        qid, lang, prio = _new_call(rng, queues)
        q = queues[qid]
        naive.add((-prio, seq), f"c{n}", ((q.skill, q.min_level), (lang_skill(lang), 1)))
        for call_id, agent_id in naive.route(now):
            holder[call_id] = agent_id
            connected.append(call_id)
    return {"times": times, "cpu": cpu, "placed": placed, "waiting": len(naive.waiting)}


# --- report ---------------------------------------------------------------------------------

def table(res: dict) -> str:
    e, nv = res["engine"], res["naive"]
    lines = [
        f"ACD routing: {res['agents']} agents, {res['skills']} skills, {res['waiting']} callers waiting",
        "one decision = a freed agent is given the next waiting call it qualifies for",
        f"{'router':<10} {'decisions':>9} {'placed':>7} {'p50 ms':>9} {'p99 ms':>9} {'max ms':>9} "
        f"{'cpu p50':>9} {'cpu p99':>9}",
        *(f"{name:<10} {r['decisions']:>9} {r['placed']:>7} {r['p50_ms']:>9.3f} {r['p99_ms']:>9.3f} "
          f"{r['max_ms']:>9.3f} {r['cpu_p50_ms']:>9.3f} {r['cpu_p99_ms']:>9.3f}" for name, r in (("engine", e), ("naive", nv))),
        f"engine is {res['speedup_p50']:.0f}x faster at p50, {res['speedup_p99']:.0f}x at p99 "
        f"(goal: p99 < 1 ms: {'met' if res['p99_goal_met'] else 'NOT met'}; >= 20x: "
        f"{'met' if res['speedup_goal_met'] else 'NOT met'})",
    ]
    return "\n".join(lines)


def run_acd_bench(agents: int = 5000, skills: int = 50, waiting: int = 2000, decisions: int = 2000,
                  naive_decisions: int = 200, seed: int = 1) -> dict:
    """Run both routers; returns the figures and ``table`` (the printable summary)."""
    def figures(run, n):
        ms = [t * 1000 for t in run["times"]]
        cpu = [t * 1000 for t in run["cpu"]]
        return {"decisions": n, "placed": run["placed"], "waiting_after": run["waiting"],
                "p50_ms": _pct(ms, 50), "p99_ms": _pct(ms, 99), "max_ms": max(ms) if ms else float("nan"),
                "cpu_p50_ms": _pct(cpu, 50), "cpu_p99_ms": _pct(cpu, 99)}
    eng = figures(_run_engine(agents, skills, waiting, decisions, seed), decisions)
    naive_n = min(decisions, naive_decisions)
    nv = figures(_run_naive(agents, skills, waiting, naive_n, seed), naive_n)
    res = {"agents": agents, "skills": skills, "waiting": waiting, "engine": eng, "naive": nv,
           "speedup_p50": nv["p50_ms"] / eng["p50_ms"] if eng["p50_ms"] else float("inf"),
           "speedup_p99": nv["p99_ms"] / eng["p99_ms"] if eng["p99_ms"] else float("inf")}
    res["p99_goal_met"] = eng["p99_ms"] < 1.0
    res["speedup_goal_met"] = res["speedup_p50"] >= 20 and res["speedup_p99"] >= 20
    res["table"] = table(res)
    return res


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="ACD routing benchmark: indexed engine vs naive full scan")
    ap.add_argument("--agents", type=int, default=5000)
    ap.add_argument("--skills", type=int, default=50)
    ap.add_argument("--waiting", type=int, default=2000)
    ap.add_argument("--decisions", type=int, default=2000)
    ap.add_argument("--naive-decisions", type=int, default=200)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    res = run_acd_bench(a.agents, a.skills, a.waiting, a.decisions, a.naive_decisions, a.seed)
    print(json.dumps(res, indent=2) if a.json else res["table"])


if __name__ == "__main__":
    main()
