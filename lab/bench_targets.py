"""The four FastAGI servers of the AGI benchmark (lab.bench), each run in its own process.

    python -m lab.bench_targets --server raw|madoguchi|panoramisk|threaded --commands 10 --sessions 1000

prints ``READY <port> <pid>`` on stdout once listening, serves until a line arrives on stdin (or
stdin closes), then prints ``STATS <json>`` (sessions accepted / completed / failed) and exits.

Every server runs the same IVR-like script (``script(commands)``): the first ``commands - 1`` steps
of STEPS (cycled if more are asked for) and then HANGUP. The load generator (lab.loadgen) checks
the verbs against ``expected_verbs(commands)``.

Top-level imports stay light: lab.loadgen imports this module for the script, and must not pay
for (or be measured with) agi, panoramisk or pyst2.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys

# (step, wire line as the raw floor sends it, verb the load generator expects)
STEPS: list[tuple[str, str, str]] = [
    ("answer", "ANSWER", "ANSWER"),
    ("welcome", 'STREAM FILE welcome ""', "STREAM FILE"),
    ("menu", "GET DATA main-menu 5000 1", "GET DATA"),
    ("setvar", "SET VARIABLE MENU_CHOICE 1", "SET VARIABLE"),
    ("getvar", "GET VARIABLE MENU_CHOICE", "GET VARIABLE"),
    ("entered", 'STREAM FILE you-entered ""', "STREAM FILE"),
    ("account", "GET DATA enter-account 5000 8", "GET DATA"),
    ("saydigits", 'SAY DIGITS 12345678 ""', "SAY DIGITS"),
    ("goodbye", "EXEC Playback goodbye", "EXEC"),
]
HANGUP_STEP = ("hangup", "HANGUP", "HANGUP")
ROUTE = "bench-ivr"
SERVERS = ("raw", "madoguchi", "panoramisk", "threaded")


def script(commands: int) -> list[tuple[str, str, str]]:
    body = [STEPS[i % len(STEPS)] for i in range(max(commands - 1, 0))]
    return body + [HANGUP_STEP]


def expected_verbs(commands: int) -> list[str]:
    return [verb for _, _, verb in script(commands)]


def raise_nofile() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit (N sessions need N sockets, twice on loopback)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
    if soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError):
            pass
    return soft


class Counters:
    def __init__(self):
        self.accepted = 0
        self.completed = 0
        self.failed = 0
        self.first_error: str | None = None

    def fail(self, e: BaseException) -> None:
        self.failed += 1
        if self.first_error is None:
            self.first_error = f"{type(e).__name__}: {e}"

    def as_dict(self) -> dict:
        return dict(vars(self))


# ---------------------------------------------------------------- raw asyncio floor

async def _serve_raw(host: str, port: int, commands: int, backlog: int, c: Counters):
    """The floor: read the env up to the blank line, then one command line out, one reply line in."""
    import asyncio
    lines = [(wire + "\n").encode() for _, wire, _ in script(commands)]

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        c.accepted += 1
        try:
            await reader.readuntil(b"\n\n")
            for line in lines:
                writer.write(line)
                if not await reader.readline():
                    raise ConnectionError("EOF before reply")
            c.completed += 1
        except Exception as e:  # noqa: BLE001 - counted, the benchmark reports it
            c.fail(e)
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, port, backlog=backlog)


# ---------------------------------------------------------------- madoguchi (agi.server)

async def _serve_madoguchi(host: str, port: int, commands: int, backlog: int, c: Counters, sessions: int):
    from agi.server import FastAGIServer, ServerLimits
    from agi.session import AGISession

    steps = [name for name, _, _ in script(commands)]

    async def ivr(s: AGISession) -> None:
        c.accepted += 1
        try:
            for step in steps:
                if step == "answer":
                    await s.answer()
                elif step == "welcome":
                    await s.stream_file("welcome")
                elif step == "menu":
                    await s.get_data("main-menu", 5000, 1)
                elif step == "setvar":
                    await s.set_variable("MENU_CHOICE", "1")
                elif step == "getvar":
                    await s.get_variable("MENU_CHOICE")
                elif step == "entered":
                    await s.stream_file("you-entered")
                elif step == "account":
                    await s.get_data("enter-account", 5000, 8)
                elif step == "saydigits":
                    await s.command("SAY DIGITS", "12345678", "")
                elif step == "goodbye":
                    await s.exec("Playback", "goodbye")
                elif step == "hangup":
                    await s.hangup()
            c.completed += 1
        except Exception as e:  # noqa: BLE001
            c.fail(e)
            raise

    # max_sessions above N so the cap never rejects a benchmark session
    server = FastAGIServer({ROUTE: ivr}, host, port,
                           limits=ServerLimits(max_sessions=sessions + 16, backlog=max(backlog, 4096)))
    await server.start()
    c.server_stats = server.stats  # type: ignore[attr-defined]
    return server


# ---------------------------------------------------------------- panoramisk 1.4, as is

async def _serve_panoramisk(host: str, port: int, commands: int, backlog: int, c: Counters):
    import asyncio
    from panoramisk.fast_agi import Application

    lines = [wire for _, wire, _ in script(commands)]

    # async def: Application.add_route() wraps plain functions with asyncio.coroutine, gone in 3.11.
    async def ivr(request) -> None:
        c.accepted += 1
        try:
            for line in lines:
                result = await request.send_command(line)
                if "error" in result:
                    raise RuntimeError(f"{line}: {result}")
            c.completed += 1
        except Exception as e:  # noqa: BLE001 - panoramisk would only log it
            c.fail(e)
            raise

    app = Application(loop=asyncio.get_running_loop())
    app.add_route(ROUTE, ivr)
    return await asyncio.start_server(app.handler, host, port, backlog=backlog)


# ---------------------------------------------------------------- thread per session, pyst2

class _Null:
    def write(self, s):
        return len(s)

    def flush(self):
        pass


def _threaded_server(host: str, port: int, commands: int, backlog: int, c: Counters):
    """socketserver.ThreadingTCPServer, one blocking thread per session, pyst2's asterisk.agi.AGI.

    pyst2 0.5.1's ``AGI.__init__`` calls ``signal.signal(SIGHUP, ...)``, which raises ValueError in
    any thread but the main one (and a FastAGI session has no SIGHUP: hangup arrives as a line).
    So SocketAGI below repeats the rest of that constructor without the signal call and points
    pyst2's stdin/stdout at the socket. Everything else (env parsing, command formatting, result
    parsing, including the debug text it formats for stderr) is pyst2's own code; the debug text
    goes to a null sink instead of Asterisk's console.
    """
    import socketserver
    import threading
    from asterisk.agi import AGI

    class SocketAGI(AGI):
        def __init__(self, rfile, wfile):  # noqa: D401 - see the docstring above
            self.stdin, self.stdout, self.stderr = rfile, wfile, _Null()
            self._got_sighup = False
            self.env = {}
            self._get_agi_env()

    steps = [name for name, _, _ in script(commands)]
    lock = threading.Lock()

    class Handler(socketserver.BaseRequestHandler):
        def handle(self):
            with lock:
                c.accepted += 1
            rfile = self.request.makefile("r", encoding="utf-8", newline="\n")
            wfile = self.request.makefile("w", encoding="utf-8", newline="\n")
            try:
                agi = SocketAGI(rfile, wfile)
                for step in steps:
                    if step == "answer":
                        agi.answer()
                    elif step == "welcome":
                        agi.stream_file("welcome")
                    elif step == "menu":
                        agi.get_data("main-menu", 5000, 1)
                    elif step == "setvar":
                        agi.set_variable("MENU_CHOICE", "1")
                    elif step == "getvar":
                        agi.get_variable("MENU_CHOICE")
                    elif step == "entered":
                        agi.stream_file("you-entered")
                    elif step == "account":
                        agi.get_data("enter-account", 5000, 8)
                    elif step == "saydigits":
                        agi.say_digits("12345678")
                    elif step == "goodbye":
                        agi.appexec("Playback", "goodbye")
                    elif step == "hangup":
                        agi.hangup()
                with lock:
                    c.completed += 1
            except Exception as e:  # noqa: BLE001
                with lock:
                    c.fail(e)
            finally:
                for f in (rfile, wfile):
                    try:
                        f.close()
                    except OSError:
                        pass

    class Server(socketserver.ThreadingTCPServer):
        daemon_threads = True
        block_on_close = False
        allow_reuse_address = True
        request_queue_size = backlog  # listen() backlog; socketserver's default is 5

    return Server((host, port), Handler)


# ---------------------------------------------------------------- process entry

def _report(c: Counters) -> None:
    d = c.as_dict()
    stats = getattr(c, "server_stats", None)
    if stats is not None:
        d["server_stats"] = dict(stats)
    sys.stdout.write("STATS " + json.dumps(d) + "\n")
    sys.stdout.flush()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--server", required=True, choices=SERVERS)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--commands", type=int, default=10)
    p.add_argument("--sessions", type=int, default=1000)
    a = p.parse_args(argv)
    raise_nofile()
    backlog = max(a.sessions, 128)
    c = Counters()

    if a.server == "threaded":
        import threading
        srv = _threaded_server(a.host, a.port, a.commands, backlog, c)
        t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
        t.start()
        print(f"READY {srv.server_address[1]} {os.getpid()}", flush=True)
        sys.stdin.readline()
        srv.shutdown()
        srv.server_close()
        _report(c)
        return

    import asyncio

    async def run():
        if a.server == "raw":
            srv = await _serve_raw(a.host, a.port, a.commands, backlog, c)
            port = srv.sockets[0].getsockname()[1]
        elif a.server == "madoguchi":
            srv = await _serve_madoguchi(a.host, a.port, a.commands, backlog, c, a.sessions)
            port = srv.port
        else:
            srv = await _serve_panoramisk(a.host, a.port, a.commands, backlog, c)
            port = srv.sockets[0].getsockname()[1]
        print(f"READY {port} {os.getpid()}", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        if a.server == "madoguchi":
            await srv.stop(grace=1.0)
        else:
            srv.close()
        _report(c)

    asyncio.run(run())


if __name__ == "__main__":
    main()
