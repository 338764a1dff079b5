"""FastAGI benchmark: N concurrent sessions of a 10-command IVR script against four servers.

    madoguchi lab bench agi --sessions 1000 --commands 10 --rounds 3

A benchmark that prints figures, not a timed test. For each server (lab.bench_targets):

1. start it in its own process (so psutil can read its RSS and CPU time) and wait for READY;
2. start the load generator (lab.loadgen) in another process; per round it opens N connections
   at once, sends each an Asterisk env block and *holds* every session's first command unanswered
   until all N have sent one (so N sessions are provably open in the server at once);
3. at ``ROUND`` this orchestrator samples the server's idle RSS, at ``HOLD`` its RSS with N
   sessions held; then the generator answers every command at once until each session's HANGUP;
4. stop the server and collect its own count of completed sessions.

Figures per server:
* sessions/s: the new-session rate, N / (first connect -> all N first commands received),
  median over rounds; "overall" is N*rounds / time spent in rounds (hold pauses excluded);
* round trip p50/p99: reply k written -> command k+1 received, seen by the generator. All N
  sessions run flat out in lock step, so this includes queueing behind the other N-1 sessions:
  p99 is close to N x (server + generator) cost of one command, not one command's own latency;
* KiB/session: (RSS with N sessions held - idle RSS before the first round) / N, round 1;
* errors: generator-side (refused, reset, timeout, wrong count/verb) plus sessions the server
  itself did not complete.

The p99 goal is stated at 500 concurrent sessions; when ``sessions`` != 500 an extra 1-round
500-session pass is run per server (``p99_sessions``). With ``think_ms`` > 0 that pass is also run
paced (each reply after a random 0..2*think_ms delay, like media taking time), which shows the
server's own turnaround with 500 calls open rather than its queue under a synchronized burst.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from statistics import median

from lab.bench_targets import SERVERS, raise_nofile

ROOT = Path(__file__).resolve().parent.parent

GOAL_SESSIONS = 1000
GOAL_RATE_VS_RAW = 0.8
GOAL_P99_MS = 5.0
GOAL_P99_SESSIONS = 500


class BenchError(RuntimeError):
    pass


def _rss(proc) -> int:
    return proc.memory_info().rss


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("PYTHONHASHSEED", "0")
    return env


def _readline(pipe, what: str) -> str:
    line = pipe.readline()
    if not line:
        raise BenchError(f"{what}: process ended unexpectedly")
    return line.rstrip("\n")


def run_server(name: str, sessions: int, commands: int, rounds: int, *,
               think_ms: float = 0.0, timeout: float = 120.0) -> dict:
    """One server process, one load generator process, ``rounds`` rounds of ``sessions``."""
    import psutil

    py = sys.executable
    env = _env()
    srv_err = tempfile.TemporaryFile("w+")
    gen_err = tempfile.TemporaryFile("w+")
    srv = subprocess.Popen([py, "-m", "lab.bench_targets", "--server", name, "--commands", str(commands),
                            "--sessions", str(sessions)],
                           cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                           stderr=srv_err, text=True, bufsize=1)
    gen = None
    watchdog = threading.Timer(timeout, lambda: [p.kill() for p in (srv, gen) if p is not None])
    watchdog.daemon = True
    watchdog.start()
    out: dict = {"server": name, "sessions": sessions, "commands": commands, "rounds": rounds,
                 "think_ms": think_ms}
    try:
        ready = _readline(srv.stdout, f"{name} server").split()
        if ready[0] != "READY":
            raise BenchError(f"{name} server said {ready!r}")
        port = int(ready[1])
        ps = psutil.Process(srv.pid)
        time.sleep(0.3)  # let the process settle after its imports
        rss_idle0 = _rss(ps)
        cpu0 = ps.cpu_times()
        gen = subprocess.Popen([py, "-m", "lab.loadgen", "--port", str(port), "--sessions", str(sessions),
                                "--commands", str(commands), "--rounds", str(rounds),
                                "--think-ms", str(think_ms)],
                               cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=gen_err, text=True, bufsize=1)
        idle, hold, threads, fds, ramp_cpu = [], [], [], [], []
        while True:
            line = _readline(gen.stdout, f"{name} load generator")
            kind, _, rest = line.partition(" ")
            if kind == "ROUND":
                idle.append(_rss(ps))
                c = ps.cpu_times()
                ramp_cpu.append(c.user + c.system)
            elif kind == "HOLD":
                hold.append(_rss(ps))
                c = ps.cpu_times()
                ramp_cpu[-1] = c.user + c.system - ramp_cpu[-1]
                threads.append(ps.num_threads())
                fds.append(ps.num_fds())
            elif kind == "RESULT":
                gen_result = json.loads(rest)
                break
            else:
                raise BenchError(f"{name} load generator said {line!r}")
            gen.stdin.write("GO\n")
            gen.stdin.flush()
        gen.wait(10)
        cpu1 = ps.cpu_times()
        srv.stdin.write("STOP\n")
        srv.stdin.flush()
        stats_line = _readline(srv.stdout, f"{name} server")
        if not stats_line.startswith("STATS "):
            raise BenchError(f"{name} server said {stats_line!r}")
        server_stats = json.loads(stats_line[6:])
        srv.wait(10)
    except BaseException as e:
        for p in (srv, gen):
            if p is not None and p.poll() is None:
                p.kill()
        tails = []
        for label, f in (("server", srv_err), ("loadgen", gen_err)):
            f.seek(0)
            tail = f.read()[-1500:]
            if tail:
                tails.append(f"--- {name} {label} stderr ---\n{tail}")
        if isinstance(e, BenchError) and tails:
            raise BenchError(f"{e}\n" + "\n".join(tails)) from None
        raise
    finally:
        watchdog.cancel()
        srv_err.close()
        gen_err.close()

    expected = sessions * rounds
    server_missing = max(0, expected - server_stats.get("completed", 0))
    gen_errors = gen_result["error_count"]
    # a session the server failed usually also shows on the generator's side: count it once
    errors = max(gen_errors, server_missing)
    rates = [r["new_session_rate"] for r in gen_result["rounds"]]
    out.update({
        "new_session_rate": median(rates) if rates else 0.0,
        "new_session_rates": rates,
        "overall_session_rate": gen_result["overall_session_rate"],
        "rtt_p50_ms": gen_result["rtt_p50_ms"],
        "rtt_p90_ms": gen_result["rtt_p90_ms"],
        "rtt_p99_ms": gen_result["rtt_p99_ms"],
        "rtt_max_ms": gen_result["rtt_max_ms"],
        "rtt_samples": gen_result["rtt_samples"],
        "rss_idle_bytes": rss_idle0,
        "rss_idle_per_round": idle,
        "rss_hold_per_round": hold,
        "kib_per_session": (hold[0] - rss_idle0) / sessions / 1024 if hold else float("nan"),
        "threads_at_hold": threads,
        "fds_at_hold": fds,
        "held_per_round": [r["held"] for r in gen_result["rounds"]],
        "ramp_s": [r["ramp_s"] for r in gen_result["rounds"]],
        "ramp_cpu_server_s": ramp_cpu,
        "ramp_cpu_loadgen_s": [r["ramp_cpu_s"] for r in gen_result["rounds"]],
        "server_cpu_s": (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system),
        "completed": gen_result["completed"],
        "expected_sessions": expected,
        "commands_seen": gen_result["commands_seen"],
        "expected_commands": gen_result["expected_commands"],
        "errors": errors,
        "error_kinds": gen_result["errors"],
        "error_samples": {k: v for r in gen_result["rounds"] for k, v in r["error_samples"].items()},
        "server_stats": server_stats,
    })
    out["server_cpu_us_per_command"] = out["server_cpu_s"] / max(1, gen_result["commands_seen"]) * 1e6
    return out


def _f(x: float | None, fmt: str) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def _mark(ok: bool | None) -> str:
    return "[n/a ]" if ok is None else "[PASS]" if ok else "[FAIL]"


def goals(res: dict) -> list[dict]:
    s = res["servers"]
    m, raw, pan = s.get("madoguchi"), s.get("raw"), s.get("panoramisk")
    n = res["params"]["sessions"]
    out = []

    if m is None:
        ok, text = None, "madoguchi not run"
    elif n < GOAL_SESSIONS:
        ok, text = None, f"ran {n} sessions (goal needs >= {GOAL_SESSIONS})"
    else:
        ok = m["errors"] == 0 and min(m["held_per_round"]) >= GOAL_SESSIONS
        text = f"madoguchi: {min(m['held_per_round'])} held, {m['errors']} error(s)"
    out.append({"goal": f"{GOAL_SESSIONS:,} concurrent sessions with no error", "ok": ok, "detail": text})

    if m is None or raw is None:
        ok, text = None, "needs madoguchi and raw"
    else:
        ratio = m["new_session_rate"] / raw["new_session_rate"] if raw["new_session_rate"] else 0.0
        ok, text = ratio >= GOAL_RATE_VS_RAW, f"{ratio:.2f}x raw"
    out.append({"goal": f"madoguchi new-session rate >= {GOAL_RATE_VS_RAW}x raw", "ok": ok, "detail": text})

    if m is None or pan is None:
        ok, text = None, "needs madoguchi and panoramisk"
    else:
        ratio = m["new_session_rate"] / pan["new_session_rate"] if pan["new_session_rate"] else 0.0
        ok, text = ratio > 1.0, f"{ratio:.2f}x panoramisk"
    out.append({"goal": "madoguchi new-session rate above panoramisk", "ok": ok, "detail": text})

    p99 = None
    if m is not None:
        p99 = m["rtt_p99_ms"] if n == GOAL_P99_SESSIONS else (m.get("at_p99_sessions") or {}).get("rtt_p99_ms")
    ok = None if p99 is None else p99 < GOAL_P99_MS
    text = "not measured" if p99 is None else f"{p99:.1f} ms (all {GOAL_P99_SESSIONS} flat out)"
    paced = (m or {}).get("paced") or {}
    if paced:
        text += f"; paced {paced['think_ms']:g} ms think: {paced['rtt_p99_ms']:.2f} ms"
    out.append({"goal": f"madoguchi p99 round trip < {GOAL_P99_MS:g} ms at {GOAL_P99_SESSIONS} sessions",
                "ok": ok, "detail": text})
    return out


def table(res: dict) -> str:
    p = res["params"]
    s = res["servers"]
    raw = s.get("raw")
    extra = any("at_p99_sessions" in r for r in s.values())
    paced = any("paced" in r for r in s.values())
    head = ["server", "sess/s", "x raw", "overall/s", "p50 ms", "p99 ms", "KiB/sess", "cpu us/cmd", "errors"]
    if extra:
        head.append(f"p99@{GOAL_P99_SESSIONS}")
    if paced:
        head.append(f"p99@{GOAL_P99_SESSIONS} paced")
    rows = []
    for name, r in s.items():
        ratio = r["new_session_rate"] / raw["new_session_rate"] if raw and raw["new_session_rate"] else None
        row = [name, _f(r["new_session_rate"], ",.0f"), _f(ratio, ".2f"), _f(r["overall_session_rate"], ",.0f"),
               _f(r["rtt_p50_ms"], ".2f"), _f(r["rtt_p99_ms"], ".2f"), _f(r["kib_per_session"], ".1f"),
               _f(r["server_cpu_us_per_command"], ".0f"),
               str(r["errors"]) + ("" if not r["error_kinds"] else " " + ",".join(
                   f"{k}={v}" for k, v in r["error_kinds"].items()))]
        if extra:
            row.append(_f((r.get("at_p99_sessions") or {}).get("rtt_p99_ms"), ".2f"))
        if paced:
            row.append(_f((r.get("paced") or {}).get("rtt_p99_ms"), ".2f"))
        rows.append(row)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    fmt = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    lines = [f"FastAGI bench: {p['sessions']} concurrent sessions x {p['commands']} commands x "
             f"{p['rounds']} round(s); python {sys.version.split()[0]}, {os.cpu_count()} cpu(s), "
             f"load avg {res['loadavg_before'][0]:.2f} before; {res['elapsed_s']:.1f} s",
             fmt(head), fmt(["-" * w for w in widths])]
    lines += [fmt(r) for r in rows]
    lines.append("")
    m, pan = s.get("madoguchi"), s.get("panoramisk")
    if m and pan:
        def ratio(key):  # a tiny run can measure 0 CPU or 0 s: say so instead of dividing by it
            return f"{m[key] / pan[key]:.2f}x" if pan[key] else "n/a"
        lines.append(f"madoguchi vs panoramisk: sessions/s {ratio('new_session_rate')}, "
                     f"overall {ratio('overall_session_rate')}, p99 {ratio('rtt_p99_ms')}, "
                     f"cpu/cmd {ratio('server_cpu_us_per_command')}")
    lines.append("cpu us/cmd: server CPU time / commands (session setup and teardown included).")
    lines.append("sess/s: new sessions per second (connect -> first command, all N, median of rounds); "
                 "overall: N*rounds / time in rounds.")
    lines.append("p50/p99: reply written -> next command received, every session flat out at once "
                 "(includes queueing behind the other sessions).")
    if paced:
        lines.append(f"paced: {GOAL_P99_SESSIONS} sessions, each reply after a random 0..2x"
                     f"{p['think_ms']:g} ms delay.")
    lines.append("")
    lines.append("goals:")
    for g in res["goals"]:
        lines.append(f"  {_mark(g['ok'])} {g['goal']}: {g['detail']}")
    return "\n".join(lines)


def run_agi_bench(sessions: int = 1000, commands: int = 10, rounds: int = 3,
                  servers: list[str] | tuple[str, ...] = SERVERS, *,
                  p99_sessions: int | None = GOAL_P99_SESSIONS, think_ms: float = 200.0,
                  timeout: float = 120.0) -> dict:
    """Run the benchmark; returns the figures and ``table`` (the printable summary).

    ``p99_sessions``: when it differs from ``sessions``, one extra 1-round pass per server at that
    many sessions for the p99 goal (None: skip). ``think_ms``: mean reply delay of the paced
    ``p99_sessions`` pass (0: skip it).
    """
    unknown = [s for s in servers if s not in SERVERS]
    if unknown:
        raise ValueError(f"unknown server(s) {unknown}; choose from {', '.join(SERVERS)}")
    raise_nofile()
    t0 = time.perf_counter()
    res: dict = {"loadavg_before": os.getloadavg(), "params": {"sessions": sessions, "commands": commands, "rounds": rounds,
                            "servers": list(servers), "p99_sessions": p99_sessions, "think_ms": think_ms},
                 "servers": {}}
    for name in servers:
        r = run_server(name, sessions, commands, rounds, timeout=timeout)
        if p99_sessions and p99_sessions != sessions:
            x = run_server(name, p99_sessions, commands, 1, timeout=timeout)
            r["at_p99_sessions"] = {k: x[k] for k in ("sessions", "rtt_p50_ms", "rtt_p99_ms", "errors",
                                                       "new_session_rate", "server_cpu_us_per_command")}
        if p99_sessions and think_ms:
            x = run_server(name, p99_sessions, commands, 1, think_ms=think_ms, timeout=timeout)
            r["paced"] = {k: x[k] for k in ("sessions", "think_ms", "rtt_p50_ms", "rtt_p99_ms", "errors")}
        res["servers"][name] = r
    res["elapsed_s"] = time.perf_counter() - t0
    res["goals"] = goals(res)
    res["table"] = table(res)
    return res


if __name__ == "__main__":
    import argparse
    ap = argparse.ArgumentParser(description="FastAGI benchmark (same as: madoguchi lab bench agi)")
    ap.add_argument("--sessions", type=int, default=1000)
    ap.add_argument("--commands", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--servers", default=",".join(SERVERS))
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    result = run_agi_bench(a.sessions, a.commands, a.rounds, [s for s in a.servers.split(",") if s])
    print(json.dumps(result, indent=2) if a.json else result["table"])
