"""madoguchi: the command line (console script ``madoguchi``)."""
from __future__ import annotations

import asyncio
import json
import logging
import sys
from pathlib import Path

import click

CONFIG_HELP = "Runtime configuration file (madoguchi.toml). Default: built-in loopback defaults."


def _load(config_path, site_dir=None):
    """Config and site, or a clean exit listing every problem (file:line: field: message)."""
    from provisioning.config import load_config
    from provisioning.problems import load_or_exit
    from provisioning.site import load_site
    config = load_or_exit(load_config, config_path)
    site_path = Path(site_dir) if site_dir else config.site.dir
    if site_path is None:
        raise click.UsageError("no site folder: pass --site or set [site] dir in the config")
    return config, load_or_exit(load_site, site_path)


def _logging(verbose: int) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def main(verbose):
    """madoguchi: an open call-center application for Japanese city halls (Asterisk/FreeSWITCH)."""
    _logging(verbose)


@main.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help=CONFIG_HELP)
@click.option("--site", "site_dir", type=click.Path(file_okay=False), help="Site folder (overrides the config).")
def serve(config_path, site_dir):
    """Run the FastAGI server for Asterisk (and keep the call log)."""
    from agi.app import serve_forever
    config, site = _load(config_path, site_dir)
    asyncio.run(serve_forever(config, site))


@main.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help=CONFIG_HELP)
@click.option("--site", "site_dir", type=click.Path(file_okay=False), help="Site folder (overrides the config).")
def check(config_path, site_dir):
    """Validate the runtime config and the site folder; report every problem with file, line and field."""
    from provisioning.checks import check_all
    problems = check_all(config_path, site_dir)
    for p in problems:
        click.echo(str(p))
    if problems:
        click.echo(f"{len(problems)} problem(s)", err=True)
        raise SystemExit(1)
    click.echo("ok")


@main.group()
def dialplan():
    """Render PBX configuration from the site."""


@dialplan.command("render")
@click.option("--target", type=click.Choice(["asterisk"]), default="asterisk", show_default=True)
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help=CONFIG_HELP)
@click.option("--site", "site_dir", type=click.Path(file_okay=False), help="Site folder (overrides the config).")
def dialplan_render(target, out_dir, config_path, site_dir):
    """Write extensions.conf and pjsip.conf that hand calls to the FastAGI server."""
    from dialplan.render import render_asterisk
    config, site = _load(config_path, site_dir)
    for path in render_asterisk(config, site, Path(out_dir)):
        click.echo(str(path))


@main.group()
def calls():
    """The call log."""


@calls.command("list")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help=CONFIG_HELP)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 10000))
def calls_list(config_path, as_json, limit):
    """One line per call: call id, number dialed, start, IVR path, queue, agent, outcome."""
    rows = _storage(config_path).calls.list(limit=limit)
    for line in format_calls(rows, as_json=as_json):
        click.echo(line)


CALL_COLUMNS = ("call_id", "dialed", "started_at", "ivr_path", "queue", "agent", "outcome")


def format_calls(rows, as_json=False):
    """Lines for ``calls list``: aligned columns for people, JSON lines for scripts."""
    records = []
    for r in rows:
        rec = {c: getattr(r, c) for c in CALL_COLUMNS}
        rec["started_at"] = rec["started_at"].isoformat(timespec="seconds") if rec["started_at"] else None
        records.append(rec)
    if as_json:
        return [json.dumps(rec, ensure_ascii=False) for rec in records]
    table = [["CALL ID", "DIALED", "START", "IVR PATH", "QUEUE", "AGENT", "OUTCOME"]]
    table += [[str(rec[c] if rec[c] is not None else "-") for c in CALL_COLUMNS] for rec in records]
    widths = [max(len(row[i]) for row in table) for i in range(len(CALL_COLUMNS))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table]


@main.group()
def mode():
    """Service mode: normal, emergency (service suspended), disaster; and the congestion message."""


def _storage(config_path):
    from agi.app import open_storage
    from provisioning.config import load_config
    from provisioning.problems import load_or_exit
    return open_storage(load_or_exit(load_config, config_path))


def _modes(config_path):
    return _storage(config_path).modes


@mode.command("show")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help=CONFIG_HELP)
@click.option("--history", default=10, show_default=True, type=click.IntRange(0, 1000),
              help="How many past changes to list.")
def mode_show(config_path, history):
    """The current mode and the latest changes (who, when, why)."""
    log = _modes(config_path)
    state = log.refresh(force=True)
    since = f" since {state.disaster_since.isoformat(timespec='seconds')}" if state.disaster_since else ""
    click.echo(f"mode: {state.mode}{since}; congestion: {'on' if state.congestion else 'off'}")
    for r in log.history(history) if history else []:
        click.echo(f"  {r.set_at.isoformat(timespec='seconds')}  {r.kind:<10} {r.value:<9} by {r.set_by}"
                   + (f"  ({r.reason})" if r.reason else ""))


@mode.command("set")
@click.argument("new_mode", type=click.Choice(["normal", "emergency", "disaster"]))
@click.option("--by", "by", required=True, help="Who orders the change (recorded).")
@click.option("--reason", help="Why (recorded).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help=CONFIG_HELP)
def mode_set(new_mode, by, reason, config_path):
    """Switch the service mode; running servers apply it from the next call on."""
    _modes(config_path).set_mode(new_mode, by=by, reason=reason)
    click.echo(f"mode: {new_mode}")


@mode.command("congestion")
@click.argument("switch", type=click.Choice(["on", "off"]))
@click.option("--by", "by", required=True, help="Who orders the change (recorded).")
@click.option("--reason", help="Why (recorded).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help=CONFIG_HELP)
def mode_congestion(switch, by, reason, config_path):
    """Play the congestion message to callers before they queue (also switched automatically)."""
    _modes(config_path).set_congestion(switch == "on", by=by, reason=reason)
    click.echo(f"congestion: {switch}")


@main.group()
def wfm():
    """Workforce management: how many operators a forecast needs."""


@wfm.command("staffing")
@click.option("--calls", "calls", required=True, type=click.FloatRange(min=0, min_open=True),
              help="Calls offered per interval.")
@click.option("--interval", default=60, show_default=True, type=click.IntRange(1, 1440), help="Minutes.")
@click.option("--aht", required=True, type=click.FloatRange(min=1), help="Average handling time, seconds.")
@click.option("--within", default=20, show_default=True, type=click.FloatRange(min=0),
              help="Service-level threshold, seconds.")
@click.option("--target", default=0.8, show_default=True, type=click.FloatRange(0, 1, max_open=True),
              help="Share answered within the threshold.")
@click.option("--patience", type=click.FloatRange(min=1),
              help="Mean caller patience in seconds (Erlang A); without it Erlang C.")
def wfm_staffing(calls, interval, aht, within, target, patience):
    """Operators needed for one interval (Erlang C, or Erlang A with --patience)."""
    from acd.staffing import agents_needed
    s = agents_needed(calls * 60 / interval, aht, within, target, patience)
    model = f"Erlang A (patience {patience:g} s)" if patience else "Erlang C"
    click.echo(f"{model}: {s.agents} operators for {calls:g} calls per {interval} min at {aht:g} s")
    click.echo(f"  service level {s.service_level:.1%} within {within:g} s (target {target:.0%}), "
               f"ASA {s.asa:.1f} s, P(wait) {s.p_wait:.1%}, occupancy {s.occupancy:.1%}"
               + (f", abandon {s.p_abandon:.1%}" if patience else ""))


@main.group()
def db():
    """Database schema."""


@db.command("upgrade")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help=CONFIG_HELP)
def db_upgrade(config_path):
    """Apply the schema migrations (SQLite or PostgreSQL, from the config's database URL)."""
    _storage(config_path)
    click.echo("database at head")


@main.group()
def lab():
    """The lab PBX emulator: demo runs and benchmarks without a real Asterisk."""


@lab.command("run")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help=CONFIG_HELP)
@click.option("--site", "site_dir", type=click.Path(file_okay=False),
              help="Site folder. Default: the config's, else the bundled Sendai site.")
@click.option("--calls", "n_calls", default=12, show_default=True, type=click.IntRange(1, 10000))
@click.option("--seed", default=2026, show_default=True, help="Random seed for the callers.")
@click.option("--time-scale", default=0.02, show_default=True, type=click.FloatRange(0.001, 1.0),
              help="Simulated seconds run this much faster (1.0 = real time).")
def lab_run(config_path, site_dir, n_calls, seed, time_scale):
    """Start the app and the lab PBX, carry a stream of calls through them, print what happened."""
    from lab.demo import bundled_site, run_demo
    from provisioning.config import load_config
    from provisioning.problems import load_or_exit
    config = load_or_exit(load_config, config_path)
    site_path = Path(site_dir) if site_dir else (config.site.dir or bundled_site())
    _, site = _load(config_path, site_path)
    sys.exit(asyncio.run(run_demo(config, site, n_calls=n_calls, seed=seed, time_scale=time_scale)))


@lab.group("bench")
def lab_bench():
    """Benchmarks (they print figures; they are not tests)."""


@lab_bench.command("agi")
@click.option("--sessions", default=1000, show_default=True, type=click.IntRange(1, 20000),
              help="Concurrent FastAGI sessions.")
@click.option("--commands", default=10, show_default=True, type=click.IntRange(1, 1000))
@click.option("--rounds", default=3, show_default=True, type=click.IntRange(1, 50))
@click.option("--servers", default="raw,madoguchi,panoramisk,threaded", show_default=True,
              help="Comma-separated subset of: raw, madoguchi, panoramisk, threaded.")
@click.option("--json", "as_json", is_flag=True)
def lab_bench_agi(sessions, commands, rounds, servers, as_json):
    """N concurrent FastAGI sessions of an IVR-like script against four servers, side by side."""
    from lab.bench import run_agi_bench
    result = run_agi_bench(sessions=sessions, commands=commands, rounds=rounds,
                           servers=[s.strip() for s in servers.split(",") if s.strip()])
    click.echo(json.dumps(result, indent=2) if as_json else result["table"])


from ivr_prompts.cli import prompts  # noqa: E402  (groups of their own modules; light to import)
from recorder.cli import recordings  # noqa: E402

main.add_command(prompts)
main.add_command(recordings)

@lab_bench.command("acd")
@click.option("--agents", default=5000, show_default=True, type=click.IntRange(1, 100000))
@click.option("--skills", default=50, show_default=True, type=click.IntRange(1, 1000))
@click.option("--waiting", default=2000, show_default=True, type=click.IntRange(1, 100000))
def lab_bench_acd(agents, skills, waiting):
    """Routing decision latency of the ACD engine against a naive full scan, side by side."""
    from lab.bench_acd import run_acd_bench
    click.echo(run_acd_bench(agents=agents, skills=skills, waiting=waiting)["table"])


@lab_bench.command("recording")
@click.option("--calls", default=20, show_default=True, type=click.IntRange(1, 1000))
@click.option("--seconds", default=300.0, show_default=True, type=click.FloatRange(1, 36000),
              help="Length of each recorded call.")
def lab_bench_recording(calls, seconds):
    """Finalize throughput (hash + encrypt + atomic write) against a plain file copy."""
    from recorder.bench import run_finalize_bench
    click.echo(run_finalize_bench(calls=calls, seconds=seconds)["table"])


if __name__ == "__main__":
    main()
