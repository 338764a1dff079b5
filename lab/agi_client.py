"""The Asterisk side of one FastAGI session: connect to the app, send the env block, run commands.

Hangup handling follows the golden transcripts (README "How a hangup arrives"):
the running command ends with its own result, ``HANGUP\\n`` follows ~40 ms later as a
separate write, dead-channel commands get 511, and when the app closes one more
``HANGUP\\n`` is sent before Asterisk closes. AGISIGHUP=no suppresses HANGUP lines;
AGIEXITONHANGUP=yes sends ``result\\nHANGUP\\nHANGUP\\n`` in one write and closes.
"""
from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
from typing import TYPE_CHECKING

from . import agi_wire as w
from .channels import Channel, ChannelHungUp
from .media import play, wait_any

if TYPE_CHECKING:
    from .pbx import LabPBX

SIGHUP_DELAY = 0.040  # the golden HANGUP came ~40 ms after the interrupted command's result


class AGISession:
    def __init__(self, pbx: "LabPBX", chan: Channel, host: str, port: int, script: str, args=(),
                 sighup: bool = True, exit_on_hangup: bool = False, priority: int = 1,
                 hangup_during: tuple[str, float] | None = None):
        self.pbx, self.chan = pbx, chan
        self.host, self.port, self.script, self.args = host, port, script, list(args)
        self.sighup, self.exit_on_hangup, self.priority = sighup, exit_on_hangup, priority
        self.hangup_during = hangup_during
        self.trace: list[tuple[float, str, str]] = []
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.busy = False
        self.notified = False        # the hangup HANGUP line was sent (or is due)
        self.closed = False
        self._t0 = 0.0
        self._pending: asyncio.TimerHandle | None = None

    @property
    def url(self) -> str:
        return f"agi://{self.host}:{self.port}/{self.script}"

    # --- I/O helpers ----------------------------------------------------
    def _t(self) -> float:
        return (time.monotonic() - self._t0) / self.pbx.clock.scale

    def _write(self, text: str):
        if self.closed or self.writer is None:
            return
        for line in text.splitlines():
            self.trace.append((self._t(), "asterisk->app", line))
        with contextlib.suppress(Exception):
            self.writer.write(text.encode("latin-1", "replace"))

    def _close(self):
        if not self.closed and self.writer is not None:
            self.closed = True
            with contextlib.suppress(Exception):
                self.writer.close()

    def _notify_hangup(self):
        """The HANGUP line Asterisk sends when it notices the channel went away."""
        self._pending = None
        if self.notified or self.closed:
            return
        self.notified = True
        if self.exit_on_hangup:
            self._write(w.HANGUP_LINE + w.HANGUP_LINE)
            self._close()
        elif self.sighup:
            self._write(w.HANGUP_LINE)

    async def _watch_hangup(self):
        await self.chan.hungup.wait()
        if not self.busy and self._pending is None:  # idle: Asterisk's read loop sees it at once
            self._notify_hangup()

    # --- main -------------------------------------------------------------
    async def run(self) -> str:
        """Returns AGISTATUS: SUCCESS, HANGUP or FAILURE (connect failed)."""
        self._t0 = time.monotonic()
        try:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        except OSError:
            return "FAILURE"
        env = self.pbx.agi_env(self.chan, self.url, self.script, self.priority)
        block = w.format_env(env, self.args).decode("latin-1")
        self._write(block)
        watcher = asyncio.ensure_future(self._watch_hangup())
        try:
            while not self.closed:
                try:
                    raw = await self.reader.readline()
                except (ConnectionError, OSError):
                    raw = b""
                if not raw:
                    break
                line = raw.decode("latin-1").rstrip("\r\n")
                self.trace.append((self._t(), "app->asterisk", line))
                if not line.strip():
                    continue
                await self._command(line)
        finally:
            watcher.cancel()
            self._finish()
        return "HANGUP" if not self.chan.alive else "SUCCESS"

    def _finish(self):
        """App closed (or half-closed): pending HANGUP, then the final one, then close."""
        if self.closed:
            return
        if self._pending is not None:
            self._pending.cancel()
        if not self.chan.alive and not self.notified:
            self._notify_hangup()
        if self.sighup and not self.closed:
            self._write(w.HANGUP_LINE)
        self._close()

    async def _command(self, line: str):
        argv = w.parse_args(line)
        found = w.find_command(argv)
        cid = str(random.randint(1, 2**31 - 1))
        self.chan.event("AGIExecStart", "agi", ("CommandId", cid), ("Command", line))
        self.busy = True
        was_alive = self.chan.alive
        hook = None
        if self.hangup_during and line.upper().startswith(self.hangup_during[0].upper()):
            delay = self.hangup_during[1]
            self.hangup_during = None
            hook = asyncio.get_running_loop().call_later(self.pbx.clock.real(delay), self.chan.request_hangup)
        failed = False
        try:
            if found is None:
                writes = [w.E_INVALID]
            elif not found[1] and not self.chan.alive:
                writes = [w.E_DEAD]
            else:
                words = found[0]
                handler = getattr(self, "cmd_" + "_".join(x.lower() for x in words))
                try:
                    res = await handler(argv[len(words):])
                except _Usage:
                    res = w.usage(" ".join(words))
                except _Failed as e:
                    failed = True
                    res = e.reply
                writes = res if isinstance(res, list) else [res]
        finally:
            self.busy = False
            if hook:
                hook.cancel()
        first = writes[0]
        code, text = w.exec_end_fields(first, failed)
        if found and found[0] == ("EXEC",) and code == "200" and first.startswith("200 result=-"):
            text = "Unknown Result"  # handle_exec returned the app's -1/-2
        if self.exit_on_hangup and not self.chan.alive and not self.notified:
            # one segment, then Asterisk closes (caller_hangs_up_midcommand_agiexitonhangup_yes)
            self.notified = True
            self._write("".join(writes) + w.HANGUP_LINE + w.HANGUP_LINE)
            self._close()
        else:
            for i, part in enumerate(writes):
                if i and first.startswith("520-"):
                    await asyncio.sleep(0)  # separate writes, like Asterisk's usage block
                self._write(part)
        self.chan.event("AGIExecEnd", "agi", ("CommandId", cid), ("Command", line),
                        ("ResultCode", code), ("Result", text))
        if not self.chan.alive and not self.notified and self._pending is None and not self.closed:
            delay = SIGHUP_DELAY * self.pbx.clock.scale if was_alive or line.upper().startswith("HANGUP") else 0
            self._pending = asyncio.get_running_loop().call_later(delay, self._notify_hangup)

    # --- commands ---------------------------------------------------------
    # Each returns a reply string or a list of separate writes.
    async def cmd_answer(self, a):
        if self.chan.state != 6:
            await self.pbx.clock.sleep(self.pbx.answer_delay)
            if not self.chan.alive:
                raise _Failed(w.ok(-1))
            self.chan.set_state(6)
        return w.ok(0)

    async def cmd_asyncagi_break(self, a):
        return w.ok(0)

    async def cmd_channel_status(self, a):
        if a:
            other = self.pbx.reg.get(a[0])
            return w.ok(other.state) if other else w.ok(-1)
        return w.ok(self.chan.state)

    async def _stream(self, name, escape, offset=0):
        with self.chan.listen() as q:
            try:
                r = await play(self.chan, self.pbx.sounds, self.pbx.clock, name, escape, q, offset)
            except ChannelHungUp as e:
                self.chan.set_var("PLAYBACKSTATUS", "FAILED")
                raise _Failed(w.ok(-1, endpos=e.endpos))
        if r is None:
            self.chan.set_var("PLAYBACKSTATUS", "FAILED")
            return None
        self.chan.set_var("PLAYBACKSTATUS", "SUCCESS")
        return r

    async def cmd_stream_file(self, a):
        return await self._stream_reply(a, offset=_int(a[2]) if len(a) > 2 else 0)

    async def cmd_control_stream_file(self, a):
        # its 3rd argument is the skip in ms, not a sample offset: the lab plays from the start
        return await self._stream_reply(a, offset=0)

    async def _stream_reply(self, a, offset: int):
        if len(a) < 2:
            raise _Usage()
        r = await self._stream(a[0], a[1], offset)
        if r is None:
            return w.ok(-1, endpos=0)
        d, endpos = r
        return w.ok(ord(d) if d else 0, endpos=endpos)

    async def cmd_get_option(self, a):
        if len(a) < 2:
            raise _Usage()
        timeout = _int(a[2]) if len(a) > 2 else 5000
        r = await self._stream(a[0], a[1])
        if r is None:
            return w.ok(-1, endpos=0)
        d, endpos = r
        if d is None:
            with self.chan.listen() as q:
                try:
                    d = await wait_any(self.chan, q, timeout / 1000 if timeout >= 0 else None, self.pbx.clock)
                except ChannelHungUp:
                    raise _Failed(w.ok(-1, endpos=endpos))
            if d is not None and d not in a[1]:
                d = None
        return w.ok(ord(d) if d else 0, endpos=endpos)

    async def cmd_get_data(self, a):
        if len(a) < 1:
            raise _Usage()
        timeout = _int(a[1]) if len(a) > 1 else 0
        maxd = _int(a[2]) if len(a) > 2 else 1024
        # ast_readstring: first-digit timeout rtimeout (10 s), inter-digit dtimeout (5 s)
        first_to, next_to = (10.0, 5.0) if timeout == 0 else (
            (None, None) if timeout < 0 else (timeout / 1000, timeout / 1000))
        digits = ""
        with self.chan.listen() as q:
            try:
                r = await play(self.chan, self.pbx.sounds, self.pbx.clock, a[0], "0123456789*#ABCD", q)
                if r and r[0]:
                    digits = r[0]
                while len(digits) < maxd and not digits.endswith("#"):
                    d = await wait_any(self.chan, q, first_to if not digits else next_to, self.pbx.clock)
                    if d is None:
                        return w.ok(digits, extra="timeout") if digits else "200 result= (timeout)\n"
                    digits += d
            except ChannelHungUp:
                raise _Failed(w.ok(-1))
        return w.ok(digits.rstrip("#") if digits.endswith("#") else digits)

    async def cmd_wait_for_digit(self, a):
        if len(a) < 1:
            raise _Usage()
        to = _int(a[0])
        with self.chan.listen() as q:
            try:
                d = await wait_any(self.chan, q, to / 1000 if to >= 0 else None, self.pbx.clock)
            except ChannelHungUp:
                raise _Failed(w.ok(-1))
        return w.ok(ord(d) if d else 0)

    async def _say(self, files, escape):
        with self.chan.listen() as q:
            for f in files:
                dur = self.pbx.sounds.lookup(f, self.chan.language)
                secs = dur[0] if dur else self.pbx.say_seconds
                try:
                    d = await wait_any(self.chan, q, secs, self.pbx.clock, accept=escape)
                except ChannelHungUp:
                    raise _Failed(w.ok(-1))
                if d:
                    return w.ok(ord(d))
        return w.ok(0)

    async def cmd_say_digits(self, a):
        if len(a) < 2:
            raise _Usage()
        return await self._say([f"digits/{c}" for c in a[0] if c.isalnum()], a[1])

    async def cmd_say_number(self, a):
        if len(a) < 2:
            raise _Usage()
        try:
            n = int(a[0])
        except ValueError:
            raise _Usage()
        return await self._say(_number_files(n), a[1])

    async def cmd_say_alpha(self, a):
        if len(a) < 2:
            raise _Usage()
        return await self._say([f"letters/{c}" for c in a[0]], a[1])

    cmd_say_phonetic = cmd_say_alpha

    async def cmd_say_date(self, a):
        if len(a) < 2:
            raise _Usage()
        return await self._say(["day", "month", "date"], a[1])

    cmd_say_time = cmd_say_datetime = cmd_say_date

    async def cmd_record_file(self, a):
        # RECORD FILE <file> <format> <escape> <timeout> [offset] [BEEP] [s=silence]
        if len(a) < 4:
            raise _Usage()
        to = _int(a[3])
        if any(x.upper() == "BEEP" for x in a[4:]):
            with contextlib.suppress(_Failed):
                await self._stream("beep", "")
        with self.chan.listen() as q:
            try:
                d = await wait_any(self.chan, q, to / 1000 if to >= 0 else None, self.pbx.clock, accept=a[2])
            except ChannelHungUp:
                raise _Failed(w.ok(-1, extra="hangup", endpos=0))
        # endpos stays 0: the simulated caller sends no voice, like the SIPp callers
        self.chan.set_var("RECORDED_FILE", f"{a[0]}.{a[1]}", emit=False)
        self.pbx.recordings.append((self.chan.name, f"{a[0]}.{a[1]}"))
        if d:
            return w.ok(ord(d), extra="dtmf", endpos=0)
        return w.ok(0, extra="timeout", endpos=0)

    async def cmd_set_variable(self, a):
        if len(a) < 2:
            raise _Usage()
        self.chan.set_var(a[0], a[1])
        return w.ok(1)

    async def cmd_get_variable(self, a):
        if len(a) < 1:
            raise _Usage()
        v = self.chan.get_var(a[0])
        return w.ok(1, v) if v is not None else w.ok(0)

    async def cmd_get_full_variable(self, a):
        if len(a) < 1:
            raise _Usage()
        ch = self.pbx.reg.get(a[1]) if len(a) > 1 else self.chan
        if ch is None:
            return w.ok(0)
        return w.ok(1, ch.expand(a[0]))

    async def cmd_database_put(self, a):
        if len(a) < 3:
            raise _Usage()
        self.pbx.reg.astdb[(a[0], a[1])] = a[2]
        return w.ok(1)

    async def cmd_database_get(self, a):
        if len(a) < 2:
            raise _Usage()
        v = self.pbx.reg.astdb.get((a[0], a[1]))
        return w.ok(1, v) if v is not None else w.ok(0)

    async def cmd_database_del(self, a):
        if len(a) < 2:
            raise _Usage()
        return w.ok(1 if self.pbx.reg.astdb.pop((a[0], a[1]), None) is not None else 0)

    async def cmd_database_deltree(self, a):
        if len(a) < 1:
            raise _Usage()
        keys = [k for k in self.pbx.reg.astdb if k[0] == a[0] and (len(a) < 2 or k[1].startswith(a[1]))]
        for k in keys:
            del self.pbx.reg.astdb[k]
        return w.ok(1 if keys else 0)

    async def cmd_verbose(self, a):
        if len(a) < 1:
            raise _Usage()
        return w.ok(1)

    async def cmd_noop(self, a):
        return w.ok(0)

    async def cmd_set_music(self, a):
        if len(a) < 1 or a[0].lower() not in ("on", "off"):
            raise _Usage()
        return w.ok(0)

    async def cmd_set_context(self, a):
        if len(a) < 1:
            raise _Usage()
        self.chan.context = a[0]
        return w.ok(0)

    async def cmd_set_extension(self, a):
        if len(a) < 1:
            raise _Usage()
        self.chan.exten = a[0]
        return w.ok(0)

    async def cmd_set_priority(self, a):
        if len(a) < 1:
            raise _Usage()
        self.chan.priority = _int(a[0]) or 1
        return w.ok(0)

    async def cmd_set_callerid(self, a):
        if len(a) < 1:
            raise _Usage()
        import re
        m = re.match(r'\s*"?([^"<]*?)"?\s*<([^>]*)>', a[0])
        self.chan.cid_name, self.chan.cid_num = (m.group(1), m.group(2)) if m else (a[0], a[0])
        return w.ok(1)

    async def cmd_set_autohangup(self, a):
        if len(a) < 1:
            raise _Usage()
        secs = float(a[0] or 0)
        if secs > 0:
            asyncio.get_running_loop().call_later(self.pbx.clock.real(secs), self.chan.request_hangup, None, )
        return w.ok(0)

    async def cmd_tdd_mode(self, a):
        return w.ok(0)

    async def cmd_send_text(self, a):
        return w.ok(0)

    async def cmd_send_image(self, a):
        return w.ok(0)

    async def cmd_receive_char(self, a):
        return w.ok(0)

    async def cmd_receive_text(self, a):
        return w.ok(-1)

    async def cmd_gosub(self, a):
        if len(a) < 2:
            raise _Usage()
        return w.ok(0)

    async def cmd_hangup(self, a):
        if a:
            other = self.pbx.reg.get(a[0])
            if other is None:
                return w.ok(-1)
            other.request_hangup(16, soft=True)
            return w.ok(1)
        self.chan.request_hangup(32, soft=True)  # AST_SOFTHANGUP_EXPLICIT, as in ami_call_lifecycle
        return w.ok(1)

    async def cmd_exec(self, a):
        if len(a) < 1:
            raise _Usage()
        app = self.pbx.find_app(a[0])
        if app is None:
            return w.ok(-2)
        data = a[1] if len(a) > 1 else ""
        res = await app(self, data)
        return w.ok(res)


class _Usage(Exception):
    pass


class _Failed(Exception):
    """The handler returned RESULT_FAILURE after writing ``reply`` (usually a hangup)."""

    def __init__(self, reply: str):
        super().__init__(reply)
        self.reply = reply


def _int(s: str) -> int:
    try:
        return int(s)
    except (TypeError, ValueError):
        return 0


def _number_files(n: int) -> list[str]:
    """English say-number file list, only its length matters for timing."""
    if n < 0:
        return ["digits/minus"] + _number_files(-n)
    out = []
    for unit, word in ((1_000_000, "million"), (1000, "thousand"), (100, "hundred")):
        if n >= unit:
            out += _number_files(n // unit) + [f"digits/{word}"]
            n %= unit
    if n >= 20:
        out.append(f"digits/{n // 10 * 10}")
        n %= 10
        if n:
            out.append(f"digits/{n}")
    elif n or not out:
        out.append(f"digits/{n}")
    return out


def thread_id() -> int:
    return threading.get_ident()
