import logging
from pathlib import Path

import pytest

from provisioning.checks import check_all
from provisioning.config import ConfigError, Secret, load_config
from provisioning.problems import TomlLines

SECRET = "s3cr3t-ami-Passw0rd"


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_are_loopback(monkeypatch):
    monkeypatch.delenv("MADOGUCHI_AMI_SECRET", raising=False)
    c = load_config(None)
    assert c.agi.listen_host == "127.0.0.1" and c.agi.listen_port == 4573
    assert c.agi.max_sessions == 1000 and c.agi.idle_timeout == 30
    assert c.ami.host == "127.0.0.1" and c.ami.secret is None
    assert c.asterisk.sip_bind == "127.0.0.1"
    assert c.database.url.startswith("sqlite:///") and c.database.url.endswith("var/madoguchi.sqlite3")
    assert c.site.dir is None


def test_full_file_relative_paths_and_secret_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv("AMI_PW", SECRET)
    cfg = write(tmp_path / "madoguchi.toml", """
[agi]
listen_host = "127.0.0.1"
listen_port = 4600
command_timeout = 5
[ami]
host = "pbx.example.jp"
username = "madoguchi"
secret_env = "AMI_PW"
[storage]
data_dir = "data"
[database]
url = "sqlite:///db/calls.sqlite3"
[site]
dir = "../sites/sendai"
""")
    c = load_config(cfg)
    assert c.agi.listen_port == 4600 and c.agi.command_timeout == 5.0
    assert c.ami.secret.reveal() == SECRET
    assert c.storage.data_dir == tmp_path / "data"
    assert c.storage.recordings_dir == tmp_path / "data" / "recordings"
    assert c.database.url == f"sqlite:///{tmp_path / 'db' / 'calls.sqlite3'}"
    assert c.site.dir == (tmp_path / "../sites/sendai").resolve()


def test_secret_file(tmp_path, monkeypatch):
    sf = write(tmp_path / "ami.secret", SECRET + "\n")
    sf.chmod(0o600)
    cfg = write(tmp_path / "m.toml", '[ami]\nsecret_file = "ami.secret"\n')
    assert load_config(cfg).ami.secret.reveal() == SECRET
    sf.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by group/others"):
        load_config(cfg)


def test_secret_never_leaks(tmp_path, monkeypatch, caplog, capsys):
    monkeypatch.setenv("MADOGUCHI_AMI_SECRET", SECRET)
    c = load_config(None)
    s = c.ami.secret
    for text in (repr(c), str(c), repr(s), str(s), f"{s}", f"{s!r}", f"{c.ami}", "%s" % (s,)):
        assert SECRET not in text
    logging.getLogger("t").warning("config %s secret %s", c, s)
    print(c)
    assert SECRET not in caplog.text and SECRET not in capsys.readouterr().out
    assert s == Secret(SECRET) and s != Secret("other")
    with pytest.raises(TypeError):
        import pickle
        pickle.dumps(s)


def test_secret_in_toml_is_refused_without_echo(tmp_path):
    cfg = write(tmp_path / "m.toml", f'[ami]\nhost = "127.0.0.1"\nsecret = "{SECRET}"\n'
                                     f'[database]\nurl = "postgresql+psycopg://u:{SECRET}@db/x"\n')
    with pytest.raises(ConfigError) as e:
        load_config(cfg)
    msgs = [str(p) for p in e.value.problems]
    assert any(":3: ami.secret: secrets must not be written" in m for m in msgs)
    assert any(":5: database.url: must not contain a password" in m for m in msgs)
    assert SECRET not in str(e.value) and SECRET not in repr(e.value.problems)
    # and check_all output neither
    assert all(SECRET not in str(p) for p in check_all(cfg))


def test_malformed_toml_reports_line(tmp_path):
    cfg = write(tmp_path / "m.toml", '[agi]\nlisten_port = 4573\nlisten_host = \n')
    with pytest.raises(ConfigError) as e:
        load_config(cfg)
    (p,) = e.value.problems
    assert p.line == 3 and p.file == str(cfg) and "invalid TOML" in p.message
    assert str(p).startswith(f"{cfg}:3: ")


def test_every_problem_is_reported_with_lines(tmp_path, monkeypatch):
    monkeypatch.setenv("MADOGUCHI_AMI_SECRET", SECRET)
    cfg = write(tmp_path / "m.toml", """[agi]
listen_port = "4573"
max_sessions = 0
listen_host = "bad host!"
colour = "blue"

[ami]
port = 70000
secret_env = "X"
secret_file = "y"

[database]
url = "mysql://db/x"

[nonsense]
""")
    with pytest.raises(ConfigError) as e:
        load_config(cfg)
    got = {(p.line, p.field) for p in e.value.problems}
    assert {(2, "agi.listen_port"), (3, "agi.max_sessions"), (4, "agi.listen_host"), (5, "agi.colour"),
            (8, "ami.port"), (9, "ami.secret_env"), (13, "database.url"), (15, "nonsense")} <= got


def test_ami_login_injection_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("MADOGUCHI_AMI_SECRET", "pw\r\nAction: Originate")
    cfg = write(tmp_path / "m.toml", '[ami]\nusername = "x\\r\\nAction: Originate"\n')
    with pytest.raises(ConfigError) as e:
        load_config(cfg)
    assert {p.field for p in e.value.problems} == {"ami.username", "ami.secret_env"}
    assert "Originate" not in str(e.value)  # neither value is echoed


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.toml")


def test_toml_lines_locates_keys():
    text = '''# c
[site]
id = "x"
"quoted key" = 1
a.b = 2
doc = """
fake = 1
"""
[[numbers]]
number = "1"
[[numbers]]
number = "2"
[numbers.extra]
k = 1
[menus."main".options]
"1" = "queue:general"
'''
    t = TomlLines(text)
    assert t.line(("site",)) == 2
    assert t.line(("site", "id")) == 3
    assert t.line(("site", "quoted key")) == 4
    assert t.line(("site", "a", "b")) == 5
    assert t.line(("fake",)) is None
    assert t.line(("numbers", 0, "number")) == 10
    assert t.line(("numbers", 1, "number")) == 12
    assert t.line(("numbers", 1, "extra", "k")) == 14
    assert t.line(("menus", "main", "options", "1")) == 16
    assert t.line(("menus", "main", "options", "9")) == 15  # falls back to the table


def test_check_all_reports_config_and_site(tmp_path, monkeypatch):
    monkeypatch.delenv("MADOGUCHI_AMI_SECRET", raising=False)
    cfg = write(tmp_path / "m.toml", f'[site]\ndir = "{Path(__file__).parents[1] / "lab/sites/sendai"}"\n')
    problems = check_all(cfg)
    assert [p.field for p in problems] == ["ami"]
    assert "MADOGUCHI_AMI_SECRET" in problems[0].message
    monkeypatch.setenv("MADOGUCHI_AMI_SECRET", SECRET)
    assert check_all(cfg) == []
    assert [p.field for p in check_all(cfg, tmp_path)] == [""] * 7  # seven missing files
