"""The rendered extensions.conf, read back by asterisklint (a dialplan parser and checker).

asterisklint 0.4.3 is calibrated on the golden extensions.conf that a real Asterisk 22.10.1 ran:
it reports nothing there, and it reports nothing on ours either; no message class is accepted
or silenced. (Its generic config parser is not used on pjsip.conf/queues.conf: it does not know
``[name](template)`` sections and reports E_CONF_BAD_LINE on the golden pjsip.conf too.)

Beyond "no messages", the parsed dialplan is walked: each published number, dialled in national
and in E.164 form, reaches its own context, which answers, runs the FastAGI script and falls back
(static operator group, then the busy message) unless the AGI ended normally.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from asterisklint import FileDialplanParser
from asterisklint.defines import MessageDefManager

import golden
from dialplan.render import FALLBACK_RING_SECONDS, render_asterisk
from provisioning.config import load_config
from provisioning.site import load_site

SENDAI = Path(__file__).resolve().parents[1] / "lab" / "sites" / "sendai"
GOLDEN_EXTENSIONS = golden.ASTERISK / "config" / "extensions.conf"


def lint(path: Path):
    """Parse *path* as asterisklint's dialplan-check does; (dialplan, ["file:line CLASS: text", ...])."""
    MessageDefManager.reset()
    was_muted, MessageDefManager.muted = MessageDefManager.muted, True   # report through the return value
    try:
        parser = FileDialplanParser()
        parser.include(str(path))
        dialplan = next(iter(parser))
        dialplan.walk_jump_destinations()   # Goto/GotoIf/Gosub targets must exist
    finally:
        MessageDefManager.muted = was_muted
    messages = [f"{m.where} {name}: {m.message.format(**m.fmtkwargs)}"
                for name, raised in MessageDefManager.raised.items() for m in raised]
    return dialplan, messages


@pytest.fixture(scope="module")
def site():
    return load_site(SENDAI)


@pytest.fixture
def extensions(site, tmp_path):
    render_asterisk(load_config(None), site, tmp_path)
    return tmp_path / "extensions.conf"


def test_golden_extensions_conf_is_clean():
    """Calibration: what a real Asterisk 22 accepted, asterisklint accepts without a word."""
    _, messages = lint(GOLDEN_EXTENSIONS)
    assert messages == []


def test_linter_does_report_problems(tmp_path):
    """A clean result means something: the same checks flag a broken dialplan."""
    bad = tmp_path / "extensions.conf"
    bad.write_text("[general]\n\n[globals]\n\n[c]\nexten => s,1,Goto(nowhere,s,1)\n same => n,Payback(x)\n"
                   " same => n,Set(X=${FOO)\n")
    _, messages = lint(bad)
    found = {m.split()[1].rstrip(":") for m in messages}
    assert {"E_DP_GOTO_NOCONTEXT", "E_APP_MISSING", "E_APP_PARSE_ERROR"} <= found


def test_rendered_extensions_conf_is_clean(extensions):
    _, messages = lint(extensions)
    assert messages == [], "\n".join(messages)


def _steps(dialplan, context: str, exten: str = "s"):
    ctx = dialplan.get_context(context)
    steps = sorted((e for e in ctx if e.pattern.raw == exten), key=lambda e: e.prio)
    assert [e.prio for e in steps] == list(range(1, len(steps) + 1)), f"{context},{exten} has gaps"
    return steps


def _follow_goto(dialplan, context: str, dialled: str) -> str:
    """The context a call to *dialled* in *context* is sent to (priority 1 must be a Goto to ...,s,1)."""
    first = dialplan.get_context(context).match_pattern(dialled, 1)
    assert first is not None and first.pattern.raw == dialled, f"{dialled} not in [{context}]"
    assert first.app.app == "Goto"
    (target, exten, prio), = first.app.jump_destinations
    assert (exten, str(prio)) == ("s", "1")
    return target


_COMPARE = re.compile(r'^"([^"]*)" (=|!=) "([^"]*)"$')


def _goto_if(raw: str, variables: dict[str, str]) -> str:
    """Evaluate GotoIf($[<a> & <b> ...]?yes:no) for the subset the renderer writes: quoted ==/!= joined by & or |."""
    m = re.fullmatch(r"GotoIf\(\$\[(.*)\]\?(\w+):(\w+)\)", raw)
    assert m, raw
    expr, yes, no = m.groups()
    expr = re.sub(r"\$\{(\w+)\}", lambda v: variables.get(v.group(1), ""), expr)
    ops = re.split(r" (&|\|) ", expr)
    results = []
    for term in ops[::2]:
        c = _COMPARE.match(term)
        assert c, term
        results.append((c.group(1) == c.group(3)) == (c.group(2) == "="))
    value = results[0]
    for op, r in zip(ops[1::2], results[1:]):
        value = (value and r) if op == "&" else (value or r)
    return yes if value else no


def test_every_number_is_reachable_in_both_forms(extensions, site):
    dialplan, _ = lint(extensions)
    for n in site.numbers:
        targets = {_follow_goto(dialplan, "madoguchi-incoming", form) for form in (n.number, n.e164)}
        assert targets == {f"madoguchi-number-{n.number}"}
        apps = [e.app.raw for e in _steps(dialplan, targets.pop())]
        agi = f"AGI(agi://127.0.0.1:4573/madoguchi?number={n.number})"
        assert apps[:5] == ["Answer()", "Set(CHANNEL(language)=ja)", "Set(AGISIGHUP=yes)",
                            "Set(MADOGUCHI_STATUS=)", agi]
    assert len({n.number for n in site.numbers}) == len(site.numbers) >= 2


@pytest.mark.parametrize("agistatus,status,branch", [
    ("SUCCESS", "DONE", "handled"),        # normal end: the flow handled the call
    ("HANGUP", "", "handled"),             # the caller hung up: nobody to fall back for
    ("SUCCESS", "", "fallback"),           # the server closed without finishing (golden: SUCCESS)
    ("FAILURE", "", "fallback"),           # server unreachable
    ("NOTFOUND", "", "fallback"),
    ("SUCCESS", "OVERLOAD", "fallback"),   # session cap
    ("SUCCESS", "NOROUTE", "fallback"),    # unknown script
    ("FAILURE", "OVERLOAD", "fallback"),
])
def test_fallback_branch_per_number(extensions, site, agistatus, status, branch):
    dialplan, _ = lint(extensions)
    operators = [a for a in site.agents if "general" in a.skills]
    assert operators
    for n in site.numbers:
        context = f"madoguchi-number-{n.number}"
        steps = _steps(dialplan, context)
        after_agi = [i for i, e in enumerate(steps) if e.app.app == "AGI"][0] + 1
        check = steps[after_agi]
        assert check.app.app == "GotoIf" and "${AGISTATUS}" in check.app.raw and "${MADOGUCHI_STATUS}" in check.app.raw
        label = _goto_if(check.app.raw, {"AGISTATUS": agistatus, "MADOGUCHI_STATUS": status})
        assert label == branch
        start = dialplan.get_context(context).match_pattern("s", label)
        rest = [e.app.raw for e in steps[start.prio - 1:]]
        if branch == "handled":
            assert rest[0] == "Hangup()"
            continue
        dial = "Dial(" + "&".join(f"PJSIP/{a.endpoint_name}" for a in operators) + f",{FALLBACK_RING_SECONDS},r)"
        assert rest[0].startswith("Log(WARNING,")
        assert rest[1:] == [dial, "Playback(madoguchi/all-busy)", "Hangup()"]
        assert _steps(dialplan, context, "h")   # the hangup extension is where the call ends


def test_fallback_without_operator_group_plays_the_message(site, tmp_path):
    render_asterisk(load_config(None), site, tmp_path, fallback_skill=None)
    dialplan, messages = lint(tmp_path / "extensions.conf")
    assert messages == []
    for n in site.numbers:
        steps = _steps(dialplan, f"madoguchi-number-{n.number}")
        start = dialplan.get_context(f"madoguchi-number-{n.number}").match_pattern("s", "fallback")
        assert [e.app.app for e in steps[start.prio - 1:]] == ["Log", "Playback", "Hangup"]


def test_fallback_skill_picks_the_group(site, tmp_path):
    render_asterisk(load_config(None), site, tmp_path, fallback_skill="disaster")
    text = (tmp_path / "extensions.conf").read_text()
    group = "&".join(f"PJSIP/{a.endpoint_name}" for a in site.agents if "disaster" in a.skills)
    assert f"Dial({group},{FALLBACK_RING_SECONDS},r)" in text
    assert lint(tmp_path / "extensions.conf")[1] == []
