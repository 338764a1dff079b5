"""Runtime configuration: ``madoguchi.toml``.

Secrets (AMI secret, database password) are never read from the TOML itself, only from an
environment variable or a file, and are wrapped in `Secret` so they cannot leak through repr,
logging or ``madoguchi check`` output. Relative paths resolve against the config file's folder
so a deployment does not depend on the working directory of the service.
"""
from __future__ import annotations

import hmac
import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from .problems import Problem, ProblemsError, Reporter, read_toml, take

__all__ = ["Secret", "Config", "AgiConfig", "AmiConfig", "DatabaseConfig", "StorageConfig",
           "SiteConfig", "AsteriskConfig", "SpeechConfig", "ConfigError", "load_config"]


class ConfigError(ProblemsError):
    pass


class Secret:
    """A secret value whose str/repr/format is always ``***``; use `reveal()` at the point of use."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        object.__setattr__(self, "_value", value)

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    def __str__(self) -> str:
        return "***"

    def __format__(self, spec: str) -> str:
        return "***"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and hmac.compare_digest(self._value.encode(), other._value.encode())

    __hash__ = None  # type: ignore[assignment]

    def __setattr__(self, name, value):
        raise AttributeError("Secret is immutable")

    def __reduce__(self):
        raise TypeError("Secret must not be pickled")


@dataclass(frozen=True)
class AgiConfig:
    listen_host: str = "127.0.0.1"
    listen_port: int = 4573
    max_sessions: int = 1000
    idle_timeout: float = 30.0       # seconds without a command from the script
    command_timeout: float = 10.0    # seconds to wait for Asterisk's "200 result=" line


@dataclass(frozen=True)
class AmiConfig:
    host: str = "127.0.0.1"
    port: int = 5038
    username: str = "madoguchi"
    secret: Secret | None = None
    secret_source: str = "env:MADOGUCHI_AMI_SECRET"   # where the secret came (or should come) from


@dataclass(frozen=True)
class DatabaseConfig:
    url: str = ""                   # never contains a password
    password: Secret | None = None

    def sqlalchemy_url(self) -> URL:
        """The URL with the password filled in (a URL object masks it in repr)."""
        url = make_url(self.url)
        return url.set(password=self.password.reveal()) if self.password else url


@dataclass(frozen=True)
class StorageConfig:
    data_dir: Path = Path("var")
    recordings_dir: Path = Path("var/recordings")
    prompts_dir: Path = Path("var/prompts")


@dataclass(frozen=True)
class SpeechConfig:
    model_dir: Path | None = None     # a vosk model folder; None: speech nodes use keys instead


@dataclass(frozen=True)
class SiteConfig:
    dir: Path | None = None


@dataclass(frozen=True)
class AsteriskConfig:
    """What the dialplan renderer needs to know about this host."""
    sip_bind: str = "127.0.0.1"
    sip_port: int = 5060
    agi_host: str | None = None     # address Asterisk dials for FastAGI; default agi.listen_host


@dataclass(frozen=True)
class Config:
    path: Path | None = None
    agi: AgiConfig = field(default_factory=AgiConfig)
    ami: AmiConfig = field(default_factory=AmiConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    site: SiteConfig = field(default_factory=SiteConfig)
    asterisk: AsteriskConfig = field(default_factory=AsteriskConfig)
    speech: SpeechConfig = field(default_factory=SpeechConfig)


_HOST = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?$")
_ENV = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_USER = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")   # goes into an AMI "Username:" header line


def _valid_host(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
        return True
    except ValueError:
        return bool(_HOST.match(value))


def _read_secret(rep: Reporter, path: tuple, env: str | None, file: Path | None) -> tuple[Secret | None, str]:
    if env is not None and file is not None:
        rep.add(path, "give only one of secret_env / secret_file")
        return None, ""
    if file is not None:
        try:
            mode = file.stat().st_mode
            value = file.read_text(encoding="utf-8").strip()
        except OSError as e:
            rep.add(path, f"cannot read secret file {file}: {e.strerror}")
            return None, f"file:{file}"
        if mode & 0o077:
            rep.add(path, f"secret file {file} is readable by group/others (chmod 600)")
        if not value or "\n" in value or "\r" in value:
            rep.add(path, f"secret file {file} must hold exactly one non-empty line")
            return None, f"file:{file}"
        return Secret(value), f"file:{file}"
    if env is not None:
        if not _ENV.match(env):
            rep.add(path, "must be an environment variable name")
            return None, ""
        value = os.environ.get(env)
        if value and ("\n" in value or "\r" in value):   # would break the AMI login frame
            rep.add(path, f"environment variable {env} must be a single line")
            return None, f"env:{env}"
        return (Secret(value) if value else None), f"env:{env}"
    return None, ""


def load_config(path: str | Path | None) -> Config:
    """Load and validate ``madoguchi.toml``; None gives the defaults (loopback everywhere)."""
    problems: list[Problem] = []
    if path is None:
        base, data, rep = Path.cwd(), {}, Reporter("<defaults>", problems)
    else:
        path = Path(path).resolve()
        base = path.parent
        data, rep = read_toml(path, problems)
        if data is None:
            raise ConfigError(problems)

    def rel(p: str | None) -> Path | None:
        return None if p is None else (base / p).resolve() if not Path(p).is_absolute() else Path(p)

    top = take(rep, data, (), {k: (dict, {}) for k in
                               ("agi", "ami", "database", "storage", "site", "asterisk", "speech")})

    a = take(rep, top["agi"] or {}, ("agi",), {
        "listen_host": (str, "127.0.0.1"), "listen_port": (int, 4573), "max_sessions": (int, 1000),
        "idle_timeout": (float, 30.0), "command_timeout": (float, 10.0)})
    _check_host(rep, ("agi", "listen_host"), a["listen_host"])
    _check_port(rep, ("agi", "listen_port"), a["listen_port"])
    for k in ("max_sessions", "idle_timeout", "command_timeout"):
        if a[k] is not None and a[k] <= 0:
            rep.add(("agi", k), "must be greater than 0")

    m = take(rep, top["ami"] or {}, ("ami",), {
        "host": (str, "127.0.0.1"), "port": (int, 5038), "username": (str, "madoguchi"),
        "secret_env": (str, None), "secret_file": (str, None), "secret": (str, None)})
    if "secret" in (top["ami"] or {}):
        rep.add(("ami", "secret"), "secrets must not be written in the config file; use secret_env or secret_file")
    _check_host(rep, ("ami", "host"), m["host"])
    _check_port(rep, ("ami", "port"), m["port"])
    if m["username"] is not None and not _USER.match(m["username"]):
        rep.add(("ami", "username"), "must be 1-64 of A-Z a-z 0-9 _ . @ -")
    env = m["secret_env"] if m["secret_env"] is not None or m["secret_file"] is not None else "MADOGUCHI_AMI_SECRET"
    secret, source = _read_secret(rep, ("ami", "secret_env"), env, rel(m["secret_file"]))

    s = take(rep, top["storage"] or {}, ("storage",), {
        "data_dir": (str, "var"), "recordings_dir": (str, None), "prompts_dir": (str, None)})
    data_dir = rel(s["data_dir"] or "var")
    storage = StorageConfig(data_dir, rel(s["recordings_dir"]) or data_dir / "recordings",
                            rel(s["prompts_dir"]) or data_dir / "prompts")

    d = take(rep, top["database"] or {}, ("database",), {
        "url": (str, None), "password_env": (str, None), "password_file": (str, None)})
    database = _database(rep, d, data_dir, rel)

    si = take(rep, top["site"] or {}, ("site",), {"dir": (str, None)})
    sp = take(rep, top["speech"] or {}, ("speech",), {"model_dir": (str, None)})
    x = take(rep, top["asterisk"] or {}, ("asterisk",), {
        "sip_bind": (str, "127.0.0.1"), "sip_port": (int, 5060), "agi_host": (str, None)})
    _check_host(rep, ("asterisk", "sip_bind"), x["sip_bind"])
    _check_port(rep, ("asterisk", "sip_port"), x["sip_port"])
    if x["agi_host"] is not None:
        _check_host(rep, ("asterisk", "agi_host"), x["agi_host"])

    if problems:
        raise ConfigError(problems)
    return Config(
        path=path,
        agi=AgiConfig(**a),
        ami=AmiConfig(m["host"], m["port"], m["username"], secret, source),
        database=database,
        storage=storage,
        site=SiteConfig(rel(si["dir"])),
        asterisk=AsteriskConfig(**x),
        speech=SpeechConfig(rel(sp["model_dir"])),
    )


def _database(rep: Reporter, d: dict, data_dir: Path, rel) -> DatabaseConfig:
    if d["url"] is None:
        return DatabaseConfig(f"sqlite:///{data_dir / 'madoguchi.sqlite3'}")
    try:
        url = make_url(d["url"])
    except ArgumentError:
        rep.add(("database", "url"), "not a database URL (e.g. sqlite:///var/madoguchi.sqlite3)")
        return DatabaseConfig()
    if url.get_backend_name() not in ("sqlite", "postgresql"):
        rep.add(("database", "url"), f"unsupported database {url.get_backend_name()!r} (sqlite or postgresql)")
    if url.password is not None:
        # do not echo the URL: it contains the password
        rep.add(("database", "url"), "must not contain a password; use password_env or password_file")
        url = url.set(password=None)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        url = url.set(database=str(rel(url.database)))
    env = d["password_env"]
    password, _ = _read_secret(rep, ("database", "password_env"), env, rel(d["password_file"]))
    if env is not None and password is None and _ENV.match(env):
        rep.add(("database", "password_env"), f"environment variable {env} is not set")
    return DatabaseConfig(url.render_as_string(hide_password=False), password)


def _check_host(rep: Reporter, path: tuple, value: str | None) -> None:
    if value is not None and not _valid_host(value):
        rep.add(path, "must be a host name or IP address")


def _check_port(rep: Reporter, path: tuple, value: int | None) -> None:
    if value is not None and not 0 < value < 65536:
        rep.add(path, "must be a port number (1-65535)")
