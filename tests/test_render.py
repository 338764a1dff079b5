import dataclasses
import re
from pathlib import Path

import pytest

from dialplan.render import RenderError, _safe, render_asterisk
from provisioning.config import load_config
from provisioning.site import Agent, load_site

SENDAI = Path(__file__).resolve().parents[1] / "lab" / "sites" / "sendai"


@pytest.fixture(scope="module")
def site():
    return load_site(SENDAI)


@pytest.fixture
def rendered(site, tmp_path):
    paths = render_asterisk(load_config(None), site, tmp_path)
    return {p.name: p.read_text() for p in paths}


def test_writes_three_files(rendered):
    assert set(rendered) == {"extensions.conf", "pjsip.conf", "queues.conf"}
    for text in rendered.values():
        assert text.isascii()  # Japanese names and labels never reach the PBX config


def test_extensions(rendered):
    ext = rendered["extensions.conf"]
    for national, e164 in (("0223984894", "+81223984894"), ("0223985905", "+81223985905")):
        assert f"exten => {national},1,Goto(madoguchi-number-{national},s,1)" in ext
        assert f"exten => {e164},1,Goto(madoguchi-number-{national},s,1)" in ext
        body = ext.split(f"\n[madoguchi-number-{national}]\n")[1].split("\n\n")[0]
        assert body.startswith("exten => s,1,Answer()\n same => n,Set(CHANNEL(language)=ja)\n"
                               " same => n,Set(AGISIGHUP=yes)\n")
        assert f" same => n,AGI(agi://127.0.0.1:4573/madoguchi?number={national})\n" in body
        assert " same => n(fallback),Log(WARNING," in body and " same => n,Playback(madoguchi/all-busy)\n" in body
        assert "\nexten => h,1,NoOp(" in body
    assert "\nexten => h,1," in ext
    assert "exten => _X.,1,Goto(madoguchi-number-0223984894,s,1)" in ext   # city staff: the main number
    assert "[madoguchi-agents]" in ext and "exten => op1001,1,Dial(PJSIP/op1001,30)" in ext
    assert "exten => 7251001,1,Gosub(madoguchi-od-dial,s,1(7251001))" in ext
    assert "GROUP_COUNT(od-gateway@madoguchi)} > 24" in ext
    assert "Dial(PJSIP/${ARG1}@od-gateway,60)" in ext


def test_syntax_shape(rendered):
    """Every line is a comment, section, exten/same/include or key=value, parentheses balance."""
    line_re = re.compile(r"^(;.*|\[[a-z0-9_+-]+\](\((!|\+|[a-z0-9_-]+)\))?|exten => [^,]+,[0-9n]+(\([a-z]+\))?,\w+\(.*\)"
                         r"| same => n(\([a-z]+\))?,\w+\(.*\)|include => [a-z0-9-]+|[a-z_-]+ ?=>? ?.+|#include \S+|)$")
    for name, text in rendered.items():
        for no, line in enumerate(text.splitlines(), 1):
            assert line_re.match(line), f"{name}:{no}: {line!r}"
            if line.startswith(("exten", " same")):
                assert line.count("(") == line.count(")"), f"{name}:{no}"


def test_pjsip_has_no_passwords(rendered):
    pj = rendered["pjsip.conf"]
    assert not re.search(r"^\s*password\s*=", pj, re.M)
    assert pj.rstrip().endswith("#include pjsip_secrets.conf")
    assert "[auth-op1001]\ntype=auth\nauth_type=userpass\nusername=op1001" in pj
    assert "[op1001](madoguchi-agent)\naors=op1001\nauth=auth-op1001" in pj
    assert "[od-gateway]\ntype=identify\nendpoint=od-gateway\nmatch=192.0.2.10" in pj
    assert "bind=127.0.0.1:5060" in pj


def test_queues(rendered, site):
    q = rendered["queues.conf"]
    assert "\n[madoguchi-general]\n" in q and "\n[general]\n" in q
    interp = q.split("[madoguchi-interpreter]")[1]
    members = re.findall(r"member => PJSIP/(\w+),0,(\w+)", interp)
    assert {m[0] for m in members} == {a.endpoint_name for a in site.agents if "interpreter" in a.skills}


@pytest.mark.parametrize("bad", ["a,b", "a;b", "x(1)", "[ctx]", "a|b", "${EVIL}", "a\nexten => 1,1,System(rm)",
                                 "a b", "仙台", "", "a\\b", "a=b", None, True])
def test_safe_rejects(bad):
    with pytest.raises(RenderError):
        _safe(bad)


def test_safe_accepts_tokens():
    assert _safe("op1001") == "op1001" and _safe("+81223984894") == "+81223984894" and _safe(4573) == 4573


@pytest.mark.parametrize("change", [
    lambda s: dataclasses.replace(s, agents=[Agent("op1", "A", "PJSIP/op1,30)\nsame => n,System(id", ("general",), ("ja",))]),
    lambda s: dataclasses.replace(s, agents=[Agent("op1;x", "A", "PJSIP/op1", ("general",), ("ja",))]),
    lambda s: dataclasses.replace(s, agents=list(s.agents) + [s.agents[0]]),   # endpoint twice
    lambda s: dataclasses.replace(s, numbers=(dataclasses.replace(s.numbers[0], number="0223984894,1,System(x)"),)),
    lambda s: dataclasses.replace(s, numbers=(dataclasses.replace(s.numbers[0], e164="+81${X}"),)),
    lambda s: dataclasses.replace(s, trunk=dataclasses.replace(s.trunk, host="1.2.3.4\n[evil]")),
    lambda s: dataclasses.replace(s, trunk=dataclasses.replace(s.trunk, id="op1001")),
    lambda s: dataclasses.replace(s, trunk=None),
    lambda s: dataclasses.replace(s, directory={"x": dataclasses.replace(next(iter(s.directory.values())),
                                                                       trunk_number="1$[1+1]")}),
    lambda s: dataclasses.replace(s, id="Sendai City"),
    lambda s: dataclasses.replace(s, languages=("ja)\n same => n,System(id",)),
    lambda s: dataclasses.replace(s, languages=()),
    lambda s: dataclasses.replace(s, numbers=(dataclasses.replace(s.numbers[0], e164="+81223985905"),)),
    lambda s: dataclasses.replace(s, numbers=(dataclasses.replace(s.numbers[0], mode="normal,1,System(x)"),)),
    lambda s: dataclasses.replace(s, numbers=(s.numbers[0], s.numbers[0])),
    # the static operator group is rendered into Dial(PJSIP/a&PJSIP/b,...): its endpoints too
    lambda s: dataclasses.replace(s, agents=[Agent("op1", "A", "PJSIP/op1&Local/x@evil", ("general",), ("ja",))]),
    lambda s: dataclasses.replace(s, agents=[Agent("op1", "A", "PJSIP/op1,1,D(1)", ("general",), ("ja",))]),
])
def test_injection_attempts_are_refused(site, tmp_path, change):
    with pytest.raises(RenderError):
        render_asterisk(load_config(None), change(site), tmp_path)
    assert list(tmp_path.iterdir()) == []  # nothing half-written


@pytest.mark.parametrize("skill", ["general)", "a&b", "", "General", "x" * 40])
def test_bad_fallback_skill_is_refused(site, tmp_path, skill):
    with pytest.raises(RenderError, match="fallback skill"):
        render_asterisk(load_config(None), site, tmp_path, fallback_skill=skill)
    assert list(tmp_path.iterdir()) == []


def test_bad_agi_host_from_config_is_refused(site, tmp_path):
    cfg = tmp_path / "m.toml"
    cfg.write_text('[agi]\nlisten_port = 4600\n[asterisk]\nagi_host = "10.0.0.5"\n')
    config = load_config(cfg)
    config = dataclasses.replace(config, asterisk=dataclasses.replace(config.asterisk, agi_host="10.0.0.5/x?y"))
    with pytest.raises(RenderError, match="AGI host"):
        render_asterisk(config, site, tmp_path / "out")


def test_wildcard_listen_host_needs_agi_host(site, tmp_path):
    cfg = tmp_path / "m.toml"
    cfg.write_text('[agi]\nlisten_host = "0.0.0.0"\nlisten_port = 4600\n')
    with pytest.raises(RenderError, match="agi_host"):
        render_asterisk(load_config(cfg), site, tmp_path / "out")
    cfg.write_text('[agi]\nlisten_host = "0.0.0.0"\nlisten_port = 4600\n[asterisk]\nagi_host = "10.0.0.5"\n')
    (ext, *_) = render_asterisk(load_config(cfg), site, tmp_path / "out")
    assert "AGI(agi://10.0.0.5:4600/madoguchi?number=0223984894)" in ext.read_text()
