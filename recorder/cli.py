"""``madoguchi recordings ...``: search, playback, export, purge, users, transcripts, capacity.

Every command acts as a user (``--user NAME`` or ``MADOGUCHI_USER``) whose role is checked and
whose attempt is audited. Exit codes: 0 ok, 1 error, 2 bad usage or config, 3 refused.
"""
from __future__ import annotations

import json
import sys
from datetime import date, datetime, time, timezone
from pathlib import Path

import click

CONFIG_HELP = "Runtime configuration file (madoguchi.toml). Default: built-in loopback defaults."
USER_ENV = "MADOGUCHI_USER"


def _common(f):
    f = click.option("--user", "user", envvar=USER_ENV, help=f"Acting user (or {USER_ENV}).")(f)
    f = click.option("--site", "site_dir", type=click.Path(file_okay=False),
                     help="Site folder (for recording.toml; overrides the config).")(f)
    f = click.option("--config", "config_path", type=click.Path(dir_okay=False), help=CONFIG_HELP)(f)
    return f


class _Ctx:
    def __init__(self, config_path, site_dir, keys_required=False):
        from provisioning.config import load_config
        from provisioning.problems import load_or_exit
        from .access import Access
        from .crypto import KeyConfigError
        from .retention import load_policy
        from .store import recorder_from_config
        config = load_or_exit(load_config, config_path)
        site = Path(site_dir) if site_dir else config.site.dir
        policy = load_or_exit(load_policy, site)
        try:
            self.recorder = recorder_from_config(config, site, policy=policy, keys_required=keys_required)
        except KeyConfigError as e:
            raise click.ClickException(str(e)) from None
        self.config = config
        self.access = Access(self.recorder)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.recorder.engine.dispose()


def _run(fn):
    """Map domain errors to messages and exit codes (no tracebacks for expected failures)."""
    from .access import AccessDenied
    from .crypto import ArchiveError, KeyConfigError
    from .store import NoRecording
    try:
        return fn()
    except AccessDenied as e:
        click.echo(f"refused: {e}", err=True)
        sys.exit(3)
    except (ArchiveError, KeyConfigError, LookupError, ValueError, NoRecording) as e:
        raise click.ClickException(str(e.args[0] if isinstance(e, KeyError) and e.args else e)) from None


def _parse_when(value: str | None, tz) -> datetime | None:
    """ISO date or date-time; a value without offset is site-local."""
    if value is None:
        return None
    try:
        if len(value) == 10:
            d = date.fromisoformat(value)
            return datetime.combine(d, time(0), tzinfo=tz)
        dt = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"not an ISO date or date-time: {value!r}") from None
    return dt if dt.tzinfo else dt.replace(tzinfo=tz)


def _date(value: str | None) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"not a date (YYYY-MM-DD): {value!r}") from None


def _row(rec, tz) -> dict:
    return {"reception_no": rec.reception_no, "call_id": rec.call_id,
            "start": rec.started_at.astimezone(tz).isoformat(timespec="seconds"),
            "duration": rec.duration, "operators": list(rec.operators), "queue": rec.queue,
            "direction": rec.direction, "language": rec.language, "status": rec.status,
            "legal_hold": rec.legal_hold, "retention": rec.retention_class}


@click.group("recordings", context_settings={"help_option_names": ["-h", "--help"]})
def recordings():
    """Call recordings: search, play, export (admins), purge with approval, users and roles."""


# ------------------------------------------------------------------ users
@recordings.group("users")
def users():
    """Users and roles (admin, supervisor, operator)."""


@users.command("add")
@click.argument("name")
@click.option("--role", required=True, type=click.Choice(["admin", "supervisor", "operator"]))
@_common
def users_add(name, role, config_path, site_dir, user):
    """Add a user (the very first user must be an admin and needs no --user)."""
    with _Ctx(config_path, site_dir) as c:
        u = _run(lambda: c.access.add_user(name, role, by=user))
    click.echo(f"user {u.name}: {u.role}")


@users.command("list")
@_common
def users_list(config_path, site_dir, user):
    """List users and roles."""
    with _Ctx(config_path, site_dir) as c:
        for u in _run(lambda: c.access.users(by=user)):
            click.echo(f"{u.name:<24} {u.role:<11} {'enabled' if u.enabled else 'disabled'}")


@users.command("disable")
@click.argument("name")
@_common
def users_disable(name, config_path, site_dir, user):
    """Disable a user (kept for the audit trail)."""
    with _Ctx(config_path, site_dir) as c:
        _run(lambda: c.access.set_enabled(name, False, by=user))
    click.echo(f"user {name}: disabled")


@users.command("enable")
@click.argument("name")
@_common
def users_enable(name, config_path, site_dir, user):
    """Enable a user again."""
    with _Ctx(config_path, site_dir) as c:
        _run(lambda: c.access.set_enabled(name, True, by=user))
    click.echo(f"user {name}: enabled")


# ------------------------------------------------------------------ search, play, export
@recordings.command("search")
@click.option("--from", "date_from", help="First day (YYYY-MM-DD, site-local).")
@click.option("--to", "date_to", help="Last day (YYYY-MM-DD, site-local, inclusive).")
@click.option("--operator", help="An operator (agent id) on the call.")
@click.option("--queue")
@click.option("--reception", "reception_no", help="Reception number (受付番号) YYYYMMDD-NNNNNN.")
@click.option("--text", help="Words in the transcript.")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 10000))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@_common
def search(date_from, date_to, operator, queue, reception_no, text, limit, as_json, config_path, site_dir, user):
    """Find recordings (every result shown is audited)."""
    with _Ctx(config_path, site_dir, keys_required=bool(text)) as c:
        tz = c.recorder.policy.tz
        rows = _run(lambda: c.access.search(user, date_from=_date(date_from), date_to=_date(date_to),
                                            operator=operator, queue=queue, reception_no=reception_no,
                                            text=text, limit=limit))
    for r in rows:
        d = _row(r, tz)
        if as_json:
            click.echo(json.dumps(d, ensure_ascii=False))
        else:
            click.echo(f"{d['reception_no']}  {d['start']}  {(r.duration or 0):>7.1f}s  "
                       f"{','.join(r.operators) or '-':<14} {r.queue or '-':<10} {r.language or '-':<3} "
                       f"{r.status}{'  HOLD' if r.legal_hold else ''}")
    if not as_json:
        click.echo(f"{len(rows)} recording(s)", err=True)


@recordings.command("play")
@click.argument("reception_no")
@click.option("--out", "out", default="-", show_default=True, type=click.Path(dir_okay=False, allow_dash=True),
              help="WAV file to write, or - for stdout (streamed).")
@_common
def play(reception_no, out, config_path, site_dir, user):
    """Decrypt a recording as a stream (WAV) to a file or stdout."""
    import os
    with _Ctx(config_path, site_dir, keys_required=True) as c:
        if out == "-":
            out_stream = sys.stdout.buffer
            _run(lambda: c.access.play(user, reception_no, out_stream))
            out_stream.flush()
            return
        tmp = Path(out + ".part")

        def go():
            try:
                with open(tmp, "wb") as f:
                    c.access.play(user, reception_no, f)
                os.replace(tmp, out)
            finally:
                tmp.unlink(missing_ok=True)
        _run(go)
    click.echo(f"wrote {out}", err=True)


@recordings.command("export")
@click.argument("reception_no")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Folder to write to.")
@_common
def export(reception_no, out_dir, config_path, site_dir, user):
    """Admins only: write a plain WAV and its metadata JSON (operator, start time, ...)."""
    with _Ctx(config_path, site_dir, keys_required=True) as c:
        wav, meta = _run(lambda: c.access.export(user, reception_no, out_dir))
    click.echo(str(wav))
    click.echo(str(meta))


@recordings.command("hold")
@click.argument("reception_no")
@click.option("--reason", required=True, help="Why (recorded).")
@_common
def hold(reception_no, reason, config_path, site_dir, user):
    """Put a recording on legal hold (no purge deletes it)."""
    with _Ctx(config_path, site_dir) as c:
        _run(lambda: c.access.hold(user, reception_no, reason, True))
    click.echo(f"{reception_no}: on legal hold")


@recordings.command("release")
@click.argument("reception_no")
@click.option("--reason", default="released", help="Why (recorded).")
@_common
def release(reception_no, reason, config_path, site_dir, user):
    """Lift a legal hold."""
    with _Ctx(config_path, site_dir) as c:
        _run(lambda: c.access.hold(user, reception_no, reason, False))
    click.echo(f"{reception_no}: hold released")


# ------------------------------------------------------------------ purge
@recordings.command("purge")
@click.option("--plan", "make", is_flag=True, help="Write a plan of the recordings that are due.")
@click.option("--approve", "approve", type=int, metavar="PLAN_ID", help="Approve (and, with enough approvals, run) a plan.")
@click.option("--show", "show", type=int, metavar="PLAN_ID", help="Show a plan.")
@click.option("--by", "by", help="Approving admin (default: --user).")
@click.option("--now", "now", help="Clock for due dates (ISO date or date-time; default: now).")
@_common
def purge(make, approve, show, by, now, config_path, site_dir, user):
    """Two-step deletion: --plan lists what retention makes due; --approve PLAN_ID --by ADMIN deletes it
    (a second, distinct admin must approve too when recording.toml says approvers = 2)."""
    if sum(x is not None and x is not False for x in (make, approve, show)) != 1:
        raise click.UsageError("give exactly one of --plan, --approve PLAN_ID, --show PLAN_ID")
    actor = by or user
    if by and user and by != user:
        raise click.UsageError("--by and --user name different people")
    with _Ctx(config_path, site_dir) as c:
        tz = c.recorder.policy.tz
        clock = _parse_when(now, tz) or datetime.now(timezone.utc)
        if make:
            plan = _run(lambda: c.access.purge_plan(actor, clock))
        elif approve is not None:
            plan = _run(lambda: c.access.purge_approve(actor, approve, clock))
        else:
            plan = _run(lambda: c.access.purge_show(actor, show))
    if plan.id is None:
        click.echo(f"nothing is due at {clock.astimezone(tz).isoformat(timespec='minutes')}")
        return
    click.echo(f"plan {plan.id}: {plan.status}, {len(plan.items)} recording(s) due at "
               f"{plan.as_of.astimezone(tz).isoformat(timespec='minutes')}; approvals "
               f"{len(plan.approved_by)}/{plan.approvers_needed}"
               + (f" ({', '.join(plan.approved_by)})" if plan.approved_by else ""))
    for it in plan.items:
        click.echo(f"  {it.reception_no}  call {it.call_id}  due {it.due_at.astimezone(tz):%Y-%m-%d %H:%M}"
                   + (f"  {it.outcome}" if it.outcome else ""))
    if plan.status == "open":
        left = plan.approvers_needed - len(plan.approved_by)
        click.echo(f"to delete: madoguchi recordings purge --approve {plan.id} --by ADMIN "
                   f"({left} more approval(s) needed)")


# ------------------------------------------------------------------ maintenance
@recordings.command("reconcile")
@click.option("--now", "now", help="Clock (ISO; default now).")
@click.option("--stale-seconds", default=120.0, show_default=True, type=click.FloatRange(0),
              help="Leave spool files younger than this (calls still recording).")
@click.option("--verify", is_flag=True, help="Also decrypt and check every archive.")
@_common
def reconcile(now, stale_seconds, verify, config_path, site_dir, user):
    """Complete or flag what a crash left behind (also run by the server at startup)."""
    with _Ctx(config_path, site_dir, keys_required=True) as c:
        _run(lambda: c.access.require(user, "reconcile"))
        rep = _run(lambda: c.recorder.reconcile(_parse_when(now, c.recorder.policy.tz), stale_seconds=stale_seconds,
                                                verify=verify))
        c.access._audit(user, "reconcile", True, None, "; ".join(rep.lines())[:255] or "nothing to do")
    for line in rep.lines() or ["nothing to do"]:
        click.echo(line)
    if rep.flagged:
        sys.exit(1)


@recordings.command("transcribe")
@click.option("--model", "model_dir", type=click.Path(file_okay=False, exists=True),
              help="vosk model folder (default: the config's speech.model_dir).")
@click.option("--language", help="Only recordings of calls in this language (the model's).")
@click.option("--limit", default=1000, show_default=True, type=click.IntRange(1, 100000))
@_common
def transcribe(model_dir, language, limit, config_path, site_dir, user):
    """Transcribe archived recordings that have no transcript yet (stored encrypted in the database)."""
    from .transcribe import transcribe_pending
    with _Ctx(config_path, site_dir, keys_required=True) as c:
        _run(lambda: c.access.require(user, "transcribe"))
        model = Path(model_dir) if model_dir else c.config.speech.model_dir
        if model is None:
            raise click.UsageError("no model: pass --model DIR or set [speech] model_dir")
        res = _run(lambda: transcribe_pending(c.recorder, model, language=language, limit=limit))
        c.access._audit(user, "transcribe", True, None, f"{len(res.done)} done, {len(res.failed)} failed")
    for no, text in res.done:
        click.echo(f"{no}: {text}")
    for no, why in res.failed:
        click.echo(f"{no}: FAILED {why}", err=True)
    click.echo(f"{len(res.done)} transcribed, {len(res.failed)} failed", err=True)


@recordings.command("stats")
@click.option("--json", "as_json", is_flag=True)
@_common
def stats(as_json, config_path, site_dir, user):
    """Storage used and a projection from the site's yearly call volume."""
    from dataclasses import asdict
    from .stats import compute_stats
    with _Ctx(config_path, site_dir) as c:
        _run(lambda: c.access.require(user, "stats"))
        st = compute_stats(c.recorder)
    if as_json:
        click.echo(json.dumps(asdict(st)))
    else:
        for line in st.lines():
            click.echo(line)


@recordings.command("audit")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10000))
@_common
def audit(limit, config_path, site_dir, user):
    """The access log, newest first (admins)."""
    with _Ctx(config_path, site_dir) as c:
        tz = c.recorder.policy.tz
        for a in _run(lambda: c.access.audit_log(user, limit)):
            click.echo(f"{a.at.astimezone(tz).isoformat(timespec='seconds')}  {a.user:<16} {a.action:<14} "
                       f"{'allowed' if a.allowed else 'REFUSED':<8} {a.reception_no or '-':<16} {a.detail or ''}")


@recordings.command("keygen")
@click.argument("kid")
def keygen(kid):
    """Print a new key line ``KID:HEX`` to append to the key file (last line = newest key)."""
    from .crypto import new_key_line
    click.echo(_run(lambda: new_key_line(kid)))
