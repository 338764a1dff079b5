"""`madoguchi check`: validate the runtime config and the site folder in one pass."""
from __future__ import annotations

from pathlib import Path

from .config import ConfigError, load_config
from .problems import Problem
from .site import SiteError, load_site


def check_all(config_path: str | Path | None, site_dir: str | Path | None = None) -> list[Problem]:
    """Every problem in the config and the site (site dir from the config unless given)."""
    problems: list[Problem] = []
    config = None
    try:
        config = load_config(config_path)
    except ConfigError as e:
        problems += e.problems
    where = str(Path(config_path).resolve()) if config_path else "<defaults>"
    if config is not None and config.ami.secret is None:
        source = config.ami.secret_source.replace("env:", "environment variable ").replace("file:", "file ")
        problems.append(Problem(where, None, "ami", f"no AMI secret: {source} is not set"))
    if site_dir is None and config is not None:
        site_dir = config.site.dir
    if site_dir is None:
        if config is not None:
            problems.append(Problem(where, None, "site.dir", "no site folder configured"))
    else:
        try:
            load_site(site_dir)
        except SiteError as e:
            problems += e.problems
    return problems
