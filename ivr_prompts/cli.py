"""``madoguchi prompts``: build and list the site's voice prompts."""
from __future__ import annotations

from pathlib import Path

import click

CONFIG_HELP = "Runtime configuration file (madoguchi.toml): gives [site] dir and storage.prompts_dir."


def _paths(config_path, site_dir, out_dir, need_out: bool = True) -> tuple[Path, Path | None]:
    """Site folder and output folder: the options, else the config (else its defaults)."""
    config = None
    if config_path or not site_dir or (need_out and not out_dir):
        from provisioning.config import load_config
        from provisioning.problems import load_or_exit
        config = load_or_exit(load_config, config_path)
    site = Path(site_dir) if site_dir else config.site.dir
    if site is None:
        raise click.UsageError("no site folder: pass --site or set [site] dir in the config")
    out = Path(out_dir) if out_dir else (config.storage.prompts_dir if need_out else None)
    return site, out


@click.group("prompts")
def prompts():
    """Voice prompts: texts in <site>/prompts.toml, built to 8 kHz WAV for Asterisk and FreeSWITCH."""


@prompts.command("build")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help=CONFIG_HELP)
@click.option("--site", "site_dir", type=click.Path(file_okay=False), help="Site folder (overrides the config).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False),
              help="Output folder (default: storage.prompts_dir, var/prompts). Gets asterisk/<lang>/madoguchi/ "
                   "and freeswitch/<lang>/madoguchi/8000/.")
@click.option("--lang", "languages", multiple=True, metavar="xx",
              help="Build only this language (repeatable). Default: every site language.")
@click.option("--force", is_flag=True, help="Rebuild every file, changed or not.")
def build_cmd(config_path, site_dir, out_dir, languages, force):
    """Synthesize (or convert recordings of) every prompt that changed since the last build."""
    from .build import EngineMissing, build_prompts
    from .texts import PromptsError
    site, out = _paths(config_path, site_dir, out_dir)
    bar = None

    def progress(done: int, total: int, key: str):
        nonlocal bar
        if bar is None:
            bar = click.progressbar(length=total, label="prompts", show_pos=True,
                                    item_show_func=lambda k: k or "")
            bar.__enter__()
        bar.update(1, key)

    try:
        report = build_prompts(site, out, languages=languages or None, force=force, progress=progress)
    except PromptsError as e:
        for p in e.problems:
            click.echo(str(p), err=True)
        click.echo(f"{len(e.problems)} problem(s): nothing was built", err=True)
        raise SystemExit(1)
    except EngineMissing as e:
        raise click.ClickException(str(e))
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)
    for key, why in report.failed.items():
        click.echo(f"failed {key}: {why}", err=True)
    for key in report.removed:
        click.echo(f"removed {key}")
    click.echo(report.summary())
    if not report.ok:
        raise SystemExit(1)


@prompts.command("list")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help=CONFIG_HELP)
@click.option("--site", "site_dir", type=click.Path(file_okay=False), help="Site folder (overrides the config).")
def list_cmd(config_path, site_dir):
    """One line per prompt and language: id, language, source (text or recording), text."""
    from provisioning.problems import load_or_exit

    from .texts import load_texts
    site, _ = _paths(config_path, site_dir, None, need_out=False)
    texts = load_or_exit(load_texts, site, code=1)
    for src in texts.sources():
        if src.recording is not None:
            what = f"recording {src.recording.relative_to(site.resolve()).as_posix()}"
        else:
            what = " ".join(p.text if p.language == src.language else f"[{p.language}] {p.text}"
                            for p in src.parts)
        click.echo(f"{src.prompt:<20} {src.language:<3} {what}")
