"""The Asterisk side of the AGI benchmark: N concurrent FastAGI sessions against one server.

    python -m lab.loadgen --port P --sessions N --commands 10 --rounds R

Talks to the orchestrator (lab.bench) over stdin/stdout, one line each way:

    ROUND r          about to open round r's N connections; waits for a line on stdin
    HOLD r k         k sessions have sent their first command and none has been answered yet
                     (all N are held open at once); waits for a line on stdin, then answers
    RESULT {json}    the figures, then exit

Each session sends an Asterisk 22 style env block (lab.agi_wire.format_env) and answers every
command at once with a plausible reply for its verb (``--think-ms`` instead delays each reply by a
random 0..2x think time, so the sessions stay open together but their commands are spread out). No unsolicited ``HANGUP`` line is sent:
Asterisk sends one after the reply to HANGUP, but panoramisk 1.4 would read it as a reply, and the
benchmark compares speed, not hangup handling (tests/test_agi_core.py covers that).

Measured here:
* new-session rate: sessions whose first command arrived / (that arrival of the last one - the
  first connect), per round;
* round trip per command: reply k written -> command k+1 received (the server's turnaround,
  including its queueing behind the other sessions, since every session runs flat out);
* errors by kind: refused, reset, connect (other OSError), wrong_verb, wrong_count, extra,
  timeout.

asyncio Protocols (not streams) and a disabled GC keep the generator's own cost per event low;
it is the measuring instrument and shares the 2 cores with the server under test.
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import json
import random
import sys
import time
from collections import Counter

from lab.agi_wire import format_env
from lab.bench_targets import ROUTE, expected_verbs, raise_nofile

perf = time.perf_counter

# longest prefix first where one verb starts another ("GET VARIABLE" vs "GET DATA" are distinct)
REPLIES: tuple[tuple[bytes, bytes], ...] = (
    (b"GET VARIABLE", b"200 result=1 (1)\n"),
    (b"GET FULL VARIABLE", b"200 result=1 (1)\n"),
    (b"GET DATA", b"200 result=1\n"),
    (b"STREAM FILE", b"200 result=0 endpos=11234\n"),
    (b"SET VARIABLE", b"200 result=1\n"),
    (b"SAY DIGITS", b"200 result=0\n"),
    (b"EXEC", b"200 result=0\n"),
    (b"ANSWER", b"200 result=0\n"),
    (b"VERBOSE", b"200 result=1\n"),
    (b"HANGUP", b"200 result=1\n"),
)
INVALID = b"510 Invalid or unknown command\n"


def reply_for(line: bytes) -> bytes:
    for prefix, reply in REPLIES:
        if line.startswith(prefix):
            return reply
    return INVALID


def env_block(port: int, i: int) -> bytes:
    uid = f"1795311860.{i}"
    return format_env({
        "network": "yes", "network_script": ROUTE,
        "request": f"agi://127.0.0.1:{port}/{ROUTE}",
        "channel": f"PJSIP/caller-{i:08x}", "language": "ja", "type": "PJSIP", "uniqueid": uid,
        "version": "22.10.1", "callerid": "0223984894", "calleridname": "0223984894",
        "callingpres": "0", "callingani2": "0", "callington": "0", "callingtns": "0",
        "dnid": "0362701234", "rdnis": "unknown", "context": "madoguchi-in",
        "extension": "0362701234", "priority": "2", "enhanced": "0.0", "accountcode": "",
        "threadid": str(139711702247104 + i),
    })


class Session(asyncio.Protocol):
    __slots__ = ("rnd", "env", "transport", "buf", "n", "t_reply", "t_first", "first_line",
                 "done", "eof", "bad_verb")

    def __init__(self, rnd: "Round", env: bytes):
        self.rnd = rnd
        self.env = env
        self.transport = None
        self.buf = b""
        self.n = 0
        self.t_reply = 0.0
        self.t_first = 0.0
        self.first_line = b""
        self.done = False
        self.eof = False
        self.bad_verb = False

    def connection_made(self, transport):
        self.transport = transport
        transport.write(self.env)

    def data_received(self, data: bytes) -> None:
        now = perf()
        buf = self.buf + data if self.buf else data
        while True:
            nl = buf.find(b"\n")
            if nl < 0:
                break
            line, buf = buf[:nl], buf[nl + 1:]
            self._command(line, now)
        self.buf = buf

    def _command(self, line: bytes, now: float) -> None:
        rnd = self.rnd
        k = self.n
        self.n = k + 1
        if self.done:
            return
        if k >= len(rnd.verbs):
            rnd.error("extra", self)
            self.transport.abort()
            return
        if not line.startswith(rnd.verbs[k]) and not self.bad_verb:
            self.bad_verb = True
            rnd.error("wrong_verb", self, line)
        if k == 0:
            self.t_first = now
            self.first_line = line
            rnd.arrive(self)
            if not rnd.released:
                return  # held: answered when every session has sent its first command
        else:
            rnd.rtts.append(now - self.t_reply)
        self.reply(line)

    def reply(self, line: bytes) -> None:
        think = self.rnd.think
        if think:
            self.rnd.loop.call_later(random.random() * 2 * think, self._write_reply, line)
        else:
            self._write_reply(line)

    def _write_reply(self, line: bytes) -> None:
        if self.done:
            return
        self.transport.write(reply_for(line))
        self.t_reply = perf()

    def eof_received(self):
        self.eof = True
        self._finish(None)
        return False  # close our side too

    def connection_lost(self, exc) -> None:
        self._finish(exc)

    def _finish(self, exc) -> None:
        if self.done:
            return
        self.done = True
        rnd = self.rnd
        if exc is not None and not self.eof:
            rnd.error("reset", self, repr(exc))
        elif self.n != len(rnd.verbs):
            rnd.error("wrong_count", self, f"{self.n} commands")
        else:
            rnd.completed += 1
        if self.n == 0:
            rnd.arrive(None)  # never reached the barrier: do not make the others wait for it
        rnd.session_done()


class Round:
    def __init__(self, n: int, verbs: list[bytes], think: float = 0.0):
        self.loop = asyncio.get_running_loop()
        self.think = think  # mean seconds before each reply (0: answer at once)
        self.n = n
        self.verbs = verbs
        self.arrived = 0
        self.held: list[Session] = []
        self.released = False
        self.finished = 0
        self.completed = 0
        self.rtts: list[float] = []
        self.errors: Counter = Counter()
        self.samples: dict[str, str] = {}
        self.all_arrived = asyncio.Event()
        self.all_done = asyncio.Event()

    def error(self, kind: str, sess=None, detail: str = "") -> None:
        self.errors[kind] += 1
        if kind not in self.samples:
            self.samples[kind] = (detail if isinstance(detail, str) else repr(detail))[:200]

    def arrive(self, sess: Session | None) -> None:
        self.arrived += 1
        if sess is not None:
            self.held.append(sess)
        if self.arrived >= self.n:
            self.all_arrived.set()

    def session_done(self) -> None:
        self.finished += 1
        if self.finished >= self.n:
            self.all_done.set()


async def _stdin_line() -> str:
    return await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def run_round(r: int, host: str, port: int, n: int, commands: int,
                    hold_timeout: float, session_timeout: float, interactive: bool,
                    think: float = 0.0) -> dict:
    loop = asyncio.get_running_loop()
    verbs = [v.encode() for v in expected_verbs(commands)]
    rnd = Round(n, verbs, think)
    envs = [env_block(port, r * n + i) for i in range(n)]
    sessions: list[Session] = []

    async def connect(env: bytes) -> None:
        s = Session(rnd, env)
        sessions.append(s)
        try:
            await loop.create_connection(lambda: s, host, port)
        except ConnectionRefusedError as e:
            s.done = True
            rnd.error("refused", s, repr(e))
            rnd.arrive(None)
            rnd.session_done()
        except OSError as e:
            s.done = True
            rnd.error("connect", s, repr(e))
            rnd.arrive(None)
            rnd.session_done()

    if interactive:
        _say(f"ROUND {r}")
        await _stdin_line()
    gc.collect()
    c0 = time.process_time()
    t0 = perf()
    connecting = asyncio.gather(*(connect(e) for e in envs))
    try:
        await asyncio.wait_for(rnd.all_arrived.wait(), hold_timeout)
    except asyncio.TimeoutError:
        rnd.error("timeout", None, f"only {rnd.arrived}/{n} sessions reached the first command "
                                   f"within {hold_timeout}s")
    c_ramp = time.process_time() - c0
    held = len(rnd.held)
    t_first_all = max((s.t_first for s in rnd.held), default=t0)
    pause = 0.0
    if interactive:
        t_p = perf()
        _say(f"HOLD {r} {held}")
        await _stdin_line()
        pause = perf() - t_p
    rnd.released = True
    for s in rnd.held:
        if not s.done:
            s.reply(s.first_line)
    try:
        await asyncio.wait_for(rnd.all_done.wait(), session_timeout)
    except asyncio.TimeoutError:
        for s in sessions:
            if not s.done:
                s.done = True
                rnd.error("timeout", s, f"{s.n} commands, then nothing for {session_timeout}s")
                if s.transport is not None:
                    s.transport.abort()
    t_end = perf()
    await connecting
    await asyncio.sleep(0)  # let aborted transports close
    rtts = rnd.rtts
    return {
        "round": r,
        "held": held,
        "completed": rnd.completed,
        "errors": dict(rnd.errors),
        "error_samples": rnd.samples,
        "ramp_s": t_first_all - t0,
        "ramp_cpu_s": c_ramp,  # the generator's own CPU while ramping up (is it the bottleneck?)
        "new_session_rate": held / (t_first_all - t0) if held and t_first_all > t0 else 0.0,
        "active_s": (t_end - t0) - pause,
        "commands_seen": sum(s.n for s in sessions),
        "rtts": rtts,
    }


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    i = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[i]


async def main_async(a) -> dict:
    rounds = []
    for r in range(1, a.rounds + 1):
        rounds.append(await run_round(r, a.host, a.port, a.sessions, a.commands, a.hold_timeout,
                                      a.session_timeout, not a.standalone, a.think_ms / 1000))
    rtts = sorted(x for rd in rounds for x in rd.pop("rtts"))
    errors: Counter = Counter()
    for rd in rounds:
        errors.update(rd["errors"])
    total = a.sessions * a.rounds
    active = sum(rd["active_s"] for rd in rounds)
    return {
        "sessions": a.sessions, "commands": a.commands, "think_ms": a.think_ms, "rounds": rounds,
        "completed": sum(rd["completed"] for rd in rounds),
        "expected_sessions": total,
        "commands_seen": sum(rd["commands_seen"] for rd in rounds),
        "expected_commands": total * a.commands,
        "errors": dict(errors), "error_count": sum(errors.values()),
        "overall_session_rate": total / active if active > 0 else 0.0,
        "rtt_samples": len(rtts),
        "rtt_p50_ms": percentile(rtts, 0.50) * 1000,
        "rtt_p90_ms": percentile(rtts, 0.90) * 1000,
        "rtt_p99_ms": percentile(rtts, 0.99) * 1000,
        "rtt_max_ms": (rtts[-1] * 1000) if rtts else float("nan"),
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--sessions", type=int, default=1000)
    p.add_argument("--commands", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--hold-timeout", type=float, default=30.0)
    p.add_argument("--session-timeout", type=float, default=30.0)
    p.add_argument("--think-ms", type=float, default=0.0,
                   help="Mean delay before each reply (uniform 0..2x): paced sessions instead of "
                        "every session flat out. Default 0: answer at once.")
    p.add_argument("--standalone", action="store_true",
                   help="Do not wait for the orchestrator at ROUND/HOLD; print the result as JSON.")
    a = p.parse_args(argv)
    raise_nofile()
    gc.disable()  # the instrument should not pause mid-round; rounds collect in between
    result = asyncio.run(main_async(a))
    _say(("" if a.standalone else "RESULT ") + json.dumps(result))


if __name__ == "__main__":
    main()
