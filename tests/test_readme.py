"""The README's two commands are the contract with a fresh machine; keep .ci/run in step."""
from __future__ import annotations

import re
from pathlib import Path

from click.testing import CliRunner

import cli

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    return re.findall(r"```sh\n(.+?)\n```", (ROOT / "README.md").read_text())


def test_ci_runs_exactly_the_readme_test_command():
    setup_and_demo, setup_and_test = readme_commands()[:2]
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert setup_and_test in ci_lines
    assert setup_and_test.endswith("python -m pytest -q") and setup_and_demo.endswith("madoguchi lab run")


def test_example_config_is_valid(monkeypatch):
    monkeypatch.setenv("MADOGUCHI_AMI_SECRET", "x")
    monkeypatch.chdir(ROOT)
    result = CliRunner().invoke(cli.main, ["check", "--config", "madoguchi.example.toml"])
    assert result.exit_code == 0 and result.output.strip() == "ok", result.output
