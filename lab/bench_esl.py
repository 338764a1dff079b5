"""Outbound ESL benchmark: madoguchi's asyncio server (agi.esl_server) vs greenswitch 0.0.19's
gevent ``OutboundESLServer``, on loopback.

    .venv/bin/python -m lab.bench_esl [--sessions 200] [--apps 10]

Needs the ``freeswitch`` extra (greenswitch, gevent). Each server runs in its own process (gevent
and asyncio never share one); this process plays FreeSWITCH's ``socket`` app with events built
by lab.esl_emulator (real-sized, ~5 KiB each, with ``variable_current_application``, which is
what greenswitch matches completions on). Per session the app does myevents, linger, then
``apps`` x sendmsg execute (each answered ``+OK`` + CHANNEL_EXECUTE + CHANNEL_EXECUTE_COMPLETE),
one ``api uuid_getvar``, and exit.

Figures:
* setup ms (serial): TCP connect -> the app's first sendmsg (connect, myevents, linger in between),
  one call at a time, p50 / p99;
* setup ms (burst): the same with all ``sessions`` calls connecting at once, p50 / p99, and the
  burst's sessions/s (N / time until every session sent its first sendmsg);
* exec rtt ms: CHANNEL_EXECUTE_COMPLETE written -> next sendmsg received (serial calls), p50 / p99;
* api rtt ms: api/response written -> next command received (serial calls), p50 / p99.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from statistics import median, quantiles

ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------- servers (run in a child process)

def serve_madoguchi(port: int, apps: int) -> None:
    from agi.esl_server import ESLLimits, ESLServer

    async def route(s):
        for i in range(apps):
            await s.execute("playback", f"madoguchi/p{i}.wav", timeout=10)
        await s.api(f"uuid_getvar {s.uuid} x", timeout=10)

    async def main():
        server = await ESLServer(fallback=route, port=port, limits=ESLLimits(exit_timeout=2)).start()
        print("READY", flush=True)
        await server.serve_forever()
    asyncio.run(main())


def serve_greenswitch(port: int, apps: int) -> None:
    import greenswitch

    class App:
        def __init__(self, session):
            self.session = session

        def run(self):
            s = self.session
            s.myevents()
            s.send("linger")
            for i in range(apps):
                s.call_command("playback", f"madoguchi/p{i}.wav", block=True, response_timeout=10)
            s.send(f"api uuid_getvar {s.uuid} x")

    server = greenswitch.OutboundESLServer(bind_address="127.0.0.1", bind_port=port, application=App,
                                           max_connections=100_000)
    print("READY", flush=True)
    server.listen()


# ---------------------------------------------------------------- the FreeSWITCH side

class Stats:
    def __init__(self):
        self.setup: list[float] = []
        self.exec_rtt: list[float] = []
        self.api_rtt: list[float] = []
        self.errors = 0


async def one_call(port: int, apps: int, st: Stats, first_cmd_at: list | None = None) -> None:
    from agi import esl_protocol as P
    from lab.esl_emulator import Caller, LabFreeSWITCH, _Channel

    fs = LabFreeSWITCH()
    ch = _Channel(fs, Caller())
    parser = P.CommandParser()
    t0 = time.perf_counter()
    r, w = await asyncio.open_connection("127.0.0.1", port)
    pending: list = []

    async def cmd():
        while not pending:
            data = await asyncio.wait_for(r.read(65536), 15)
            if not data:
                raise ConnectionError("server closed")
            pending.extend(parser.feed(data))
        return pending.pop(0)

    try:
        line, _ = await cmd()
        assert line == "connect", line
        w.write(ch.connect_reply())
        ch.myevents = True
        while True:
            line, hdrs = await cmd()
            if line == "myevents":
                w.write(P.reply("+OK Events Enabled"))
            elif line == "linger":
                w.write(P.reply("+OK will linger"))
            else:
                break
        st.setup.append(time.perf_counter() - t0)
        if first_cmd_at is not None:
            first_cmd_at.append(time.perf_counter())
        for i in range(apps):
            assert line == "sendmsg", line
            h = {k.lower(): v for k, v in hdrs}
            au = h.get("event-uuid") or P.new_uuid()
            app, arg = h["execute-app-name"], h.get("execute-app-arg", "")
            ch.vars["current_application"], ch.vars["current_application_data"] = app, arg
            post = [("Application", app), ("Application-Data", arg), ("Application-UUID", au)]
            w.write(P.reply("+OK"))
            w.write(P.event_plain(ch.event("CHANNEL_EXECUTE", ("switch_core_session.c", "x", 1), post=post)))
            done = post[:2] + [("Application-Response", "FILE PLAYED"), ("Application-UUID", au)]
            w.write(P.event_plain(ch.event("CHANNEL_EXECUTE_COMPLETE", ("switch_core_session.c", "x", 2), post=done)))
            t = time.perf_counter()
            line, hdrs = await cmd()
            st.exec_rtt.append(time.perf_counter() - t)
        assert line.startswith("api "), line
        w.write(P.api_response("_undef_"))
        t = time.perf_counter()
        line, hdrs = await cmd()
        st.api_rtt.append(time.perf_counter() - t)
        assert line == "exit", line
        w.write(P.reply("+OK bye") + P.disconnect_notice(ch.uuid))
    except (AssertionError, ConnectionError, asyncio.TimeoutError, OSError) as e:
        st.errors += 1
        print(f"  error: {type(e).__name__}: {e}", file=sys.stderr)
    finally:
        w.close()


def pct(xs: list[float], p: int) -> float:
    if len(xs) < 2:
        return (xs[0] if xs else float("nan")) * 1000
    return quantiles(xs, n=100, method="inclusive")[p - 1] * 1000


async def measure(port: int, sessions: int, apps: int) -> dict:
    serial = Stats()
    for _ in range(min(sessions, 200)):
        await one_call(port, apps, serial)
    burst = Stats()
    firsts: list[float] = []
    t0 = time.perf_counter()
    await asyncio.gather(*[one_call(port, apps, burst, firsts) for _ in range(sessions)])
    rate = len(firsts) / (max(firsts) - t0) if firsts else 0.0
    return {"serial": serial, "burst": burst, "rate": rate}


def start_server(kind: str, port: int, apps: int) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-m", "lab.bench_esl", "--serve", kind, "--port", str(port),
                          "--apps", str(apps)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    if "READY" not in line:
        p.kill()
        raise RuntimeError(f"{kind} server did not start: {line!r}")
    time.sleep(0.2)
    return p


def free_port() -> int:
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sessions", type=int, default=200)
    ap.add_argument("--apps", type=int, default=10)
    ap.add_argument("--serve", choices=["madoguchi", "greenswitch"])
    ap.add_argument("--port", type=int, default=0)
    a = ap.parse_args(argv)
    if a.serve:
        (serve_madoguchi if a.serve == "madoguchi" else serve_greenswitch)(a.port, a.apps)
        return 0
    print(f"ESL outbound bench: {a.sessions} sessions x {a.apps} executes + 1 api; python "
          f"{sys.version.split()[0]}, {os.cpu_count()} cpu(s)")
    print(f"{'server':<12} {'setup p50':>9} {'setup p99':>9} {'burst p50':>9} {'burst p99':>9} "
          f"{'burst/s':>8} {'exec p50':>8} {'exec p99':>8} {'api p50':>8} {'api p99':>8} {'errors':>6}")
    for kind in ("madoguchi", "greenswitch"):
        port = free_port()
        proc = start_server(kind, port, a.apps)
        try:
            res = asyncio.run(measure(port, a.sessions, a.apps))
        finally:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
        s, b = res["serial"], res["burst"]
        print(f"{kind:<12} {pct(s.setup, 50):9.2f} {pct(s.setup, 99):9.2f} {pct(b.setup, 50):9.2f} "
              f"{pct(b.setup, 99):9.2f} {res['rate']:8.0f} {pct(s.exec_rtt, 50):8.3f} {pct(s.exec_rtt, 99):8.3f} "
              f"{pct(s.api_rtt, 50):8.3f} {pct(s.api_rtt, 99):8.3f} {s.errors + b.errors:6d}")
    print("(ms; setup = TCP connect -> first sendmsg; exec = EXECUTE_COMPLETE written -> next sendmsg)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
