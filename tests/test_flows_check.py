"""`madoguchi check` proves no flow strands a caller: each mistake is named with file, line, field."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from provisioning.site import SiteError, load_site

SENDAI = Path(__file__).resolve().parents[1] / "lab" / "sites" / "sendai"
LANGS = ("ja", "en", "zh", "ko", "vi", "ne")
PROMPTS = ("welcome", "main-menu", "invalid", "no-input", "language-menu", "faq-guide", "all-busy", "after-hours",
           "recording-notice", "service-suspended", "congestion", "please-wait", "disaster-greeting",
           "disaster-menu", "disaster-congestion", "goodbye", "x")


def site_with(tmp_path, flows: str, drop_prompt_lang: tuple[str, str] | None = None) -> Path:
    d = tmp_path / "site"
    shutil.copytree(SENDAI, d)
    lines = []
    for pid in PROMPTS:
        lines.append(f"[prompts.{pid}]")
        lines += [f'{lang} = "{pid} {lang}"' for lang in LANGS if (pid, lang) != drop_prompt_lang]
    (d / "prompts.toml").write_text("\n".join(lines) + "\n")
    text = (d / "flows.toml").read_text() + "\n" + flows if flows else (d / "flows.toml").read_text()
    (d / "flows.toml").write_text(text)
    return d


def problems(d: Path) -> list[str]:
    with pytest.raises(SiteError) as e:
        load_site(d)
    return [str(p) for p in e.value.problems]


def line_of(d: Path, needle: str) -> int:
    return (d / "flows.toml").read_text().splitlines().index(needle) + 1


def test_the_bundled_flows_pass(tmp_path):
    site = load_site(site_with(tmp_path, ""))
    assert set(site.flows) == {"main", "disaster"}


def test_unreachable_node(tmp_path):
    d = site_with(tmp_path, '[flows.main.nodes.orphan]\nkind = "hangup"\n')
    assert f"{d / 'flows.toml'}:{line_of(d, '[flows.main.nodes.orphan]')}: flows.main.nodes.orphan: " \
           "node 'orphan' cannot be reached from start 'hours'" in problems(d)


def test_loop_without_input_and_without_exit(tmp_path):
    d = site_with(tmp_path, """
[flows.loop]
start = "a"
[flows.loop.nodes.a]
kind = "play"
prompt = "x"
next = "b"
[flows.loop.nodes.b]
kind = "tag"
tag = "t"
next = "a"
""")
    found = problems(d)
    assert any("flows.loop.nodes.a: loop without exit" in p for p in found)
    assert any("loop without input" in p for p in found)


def test_a_menu_loop_with_an_exit_is_fine_but_a_time_loop_is_not(tmp_path):
    d = site_with(tmp_path, """
[flows.t]
start = "when"
[flows.t.nodes.when]
kind = "time"
open = "when2"
closed = "bye"
[flows.t.nodes.when2]
kind = "time"
calendar = "city-offices"
open = "when"
closed = "bye"
[flows.t.nodes.bye]
kind = "hangup"
[flows.m]
start = "menu"
[flows.m.nodes.menu]
kind = "menu"
prompt = "x"
options = { "1" = "menu", "2" = "bye" }
fallback = "bye"
[flows.m.nodes.bye]
kind = "hangup"
""")
    found = problems(d)
    assert any("flows.t.nodes.when: loop without input" in p for p in found)
    assert not any("flows.m." in p for p in found)


def test_missing_prompt_and_missing_language(tmp_path):
    d = site_with(tmp_path, """
[flows.p]
start = "a"
[flows.p.nodes.a]
kind = "hangup"
prompt = "nowhere"
""", drop_prompt_lang=("welcome", "ne"))
    found = problems(d)
    assert any("flows.p.nodes.a.prompt: prompt 'nowhere' is not defined in prompts.toml" in p for p in found)
    assert any("flows.main.nodes.welcome.prompt: prompt 'welcome' has no text in ne" in p for p in found)


def test_dangling_references_are_all_reported(tmp_path):
    d = site_with(tmp_path, """
[flows.r]
start = "q"
[flows.r.nodes.q]
kind = "queue"
queue = "nosuch"
next = "gone"
[flows.r.nodes.t]
kind = "transfer"
entry = "nodept"
next = "q"
[flows.r.nodes.c]
kind = "call"
flow = "noflow"
next = "q"
""")
    found = "\n".join(problems(d))
    for text in ("queue 'nosuch' is not defined", "directory entry 'nodept' is not defined",
                 "flow 'noflow' is not defined"):
        assert text in found


def test_sub_flow_recursion_and_stray_return(tmp_path):
    d = site_with(tmp_path, """
[flows.s]
start = "c"
[flows.s.nodes.c]
kind = "call"
flow = "s"
next = "r"
[flows.s.nodes.r]
kind = "return"
[flows.lone]
start = "r"
[flows.lone.nodes.r]
kind = "return"
""")
    found = "\n".join(problems(d))
    assert "flows.s: calls itself" in found
    assert "flows.lone.nodes.r: 'return' outside a called sub-flow" in found


def test_bad_kind_and_bad_option_key(tmp_path):
    d = site_with(tmp_path, """
[flows.k]
start = "a"
[flows.k.nodes.a]
kind = "teleport"
[flows.k.nodes.b]
kind = "menu"
prompt = "x"
options = { "12" = "b" }
fallback = "b"
""")
    found = "\n".join(problems(d))
    assert "flows.k.nodes.a.kind: kind must be one of" in found
    assert "option keys are single DTMF keys" in found
