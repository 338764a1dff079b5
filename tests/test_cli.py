"""The command line as an operator uses it."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

import cli

SENDAI = Path(__file__).resolve().parents[1] / "lab" / "sites" / "sendai"


def all_commands(group: click.Group, prefix=()):
    for name, cmd in group.commands.items():
        yield prefix + (name,)
        if isinstance(cmd, click.Group):
            yield from all_commands(cmd, prefix + (name,))


@pytest.mark.parametrize("path", [()] + list(all_commands(cli.main)), ids=lambda p: " ".join(p) or "main")
def test_every_command_has_help(path):
    result = CliRunner().invoke(cli.main, [*path, "--help"])
    assert result.exit_code == 0 and "Usage:" in result.output
    assert len(result.output.splitlines()) > 2


@pytest.fixture
def config(tmp_path, monkeypatch):
    monkeypatch.setenv("MADOGUCHI_AMI_SECRET", "lab-secret-value")
    path = tmp_path / "madoguchi.toml"
    path.write_text(f'[storage]\ndata_dir = "data"\n[site]\ndir = "{SENDAI}"\n')
    return path


def test_check_passes_on_the_bundled_site_and_never_prints_the_secret(config):
    result = CliRunner().invoke(cli.main, ["check", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "ok" and "lab-secret-value" not in result.output


def test_check_reports_every_problem_with_file_line_and_field(config, tmp_path):
    site = tmp_path / "site"
    shutil.copytree(SENDAI, site)
    flows = site / "flows.toml"
    text = flows.read_text().replace('queue = "general"', 'queue = "nosuch"', 1)
    flows.write_text(text)
    agents = site / "agents.csv"
    agents.write_text(agents.read_text() + "op9999,Ghost,PJSIP/op9999,telepathy,ja\n")
    result = CliRunner().invoke(cli.main, ["check", "--config", str(config), "--site", str(site)])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    line_no = text[: text.index("queue = \"nosuch\"")].count("\n") + 1
    assert f"{flows}:{line_no}: flows.main.nodes.general.queue: queue 'nosuch'" in result.output
    assert any(line.startswith(f"{agents}:") and "telepathy" in line for line in lines)


def test_dialplan_render_hands_calls_to_the_fastagi_server(config, tmp_path):
    out = tmp_path / "ast"
    result = CliRunner().invoke(cli.main, ["dialplan", "render", "--target", "asterisk", "--out", str(out),
                                           "--config", str(config)])
    assert result.exit_code == 0, result.output
    ext = (out / "extensions.conf").read_text()
    assert "AGI(agi://127.0.0.1:4573/madoguchi?number=0223984894)" in ext
    assert (out / "pjsip.conf").exists()


def test_lab_run_then_calls_list(config):
    runner = CliRunner()
    result = runner.invoke(cli.main, ["lab", "run", "--config", str(config), "--calls", "5",
                                      "--time-scale", "0.005", "--seed", "7"])
    assert result.exit_code == 0, result.output
    assert "5 calls recorded" in result.output and "0 channel(s) still live" in result.output
    listed = runner.invoke(cli.main, ["calls", "list", "--json", "--config", str(config)])
    rows = [json.loads(line) for line in listed.output.splitlines()]
    assert len(rows) == 5
    assert set(rows[0]) == {"call_id", "dialed", "started_at", "ivr_path", "queue", "agent", "outcome"}
    assert {r["dialed"] for r in rows} <= {"0223984894", "0223985905"}
    assert all(r["outcome"] for r in rows) and any(r["ivr_path"].startswith("main:hours") for r in rows)
    table = runner.invoke(cli.main, ["calls", "list", "--config", str(config)]).output.splitlines()
    assert table[0].split()[:3] == ["CALL", "ID", "DIALED"] and len(table) == 6


def test_bad_config_is_a_clean_error(tmp_path):
    path = tmp_path / "madoguchi.toml"
    path.write_text('[agi]\nlisten_port = "four"\n')
    result = CliRunner().invoke(cli.main, ["calls", "list", "--config", str(path)])
    assert result.exit_code == 2
    assert f"{path}:2: agi.listen_port" in result.output


def test_mode_commands_record_who_and_when(config):
    runner = CliRunner()
    assert runner.invoke(cli.main, ["mode", "show", "--config", str(config)]).output.startswith(
        "mode: normal; congestion: off")
    r = runner.invoke(cli.main, ["mode", "set", "disaster", "--by", "city-hq", "--reason", "earthquake",
                                 "--config", str(config)])
    assert r.exit_code == 0, r.output
    runner.invoke(cli.main, ["mode", "congestion", "on", "--by", "sv-sato", "--config", str(config)])
    out = runner.invoke(cli.main, ["mode", "show", "--config", str(config)]).output.splitlines()
    assert out[0].startswith("mode: disaster since ") and out[0].endswith("congestion: on")
    assert "congestion on        by sv-sato" in out[1] and "by city-hq  (earthquake)" in out[2]
    bad = runner.invoke(cli.main, ["mode", "set", "holiday", "--by", "x", "--config", str(config)])
    assert bad.exit_code == 2
    missing_who = runner.invoke(cli.main, ["mode", "set", "normal", "--config", str(config)])
    assert missing_who.exit_code == 2 and "--by" in missing_who.output
