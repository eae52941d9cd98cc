"""``carecli config``: where settings come from and what they are."""

from __future__ import annotations

import click

from carecli.config import SPECS, default_config_path, load_settings
from carecli.data.databases import display_url


@click.group("config")
def config_group() -> None:
    """Show carecli's configuration."""


@config_group.command("path")
def config_path() -> None:
    """Print the config file carecli reads."""
    click.echo(str(default_config_path()))


@config_group.command("show")
def config_show() -> None:
    """Print every setting, its value (passwords masked) and where it came from."""
    settings = load_settings()
    found = "" if settings.config_file_found else " (not present)"
    click.echo(f"config file: {settings.config_file}{found}")
    click.echo(f"mode: {'embedded PostgreSQL' if settings.embedded else 'configured servers'}")
    for spec in SPECS:
        value = getattr(settings, spec.name)
        if value is None:
            shown = "-"
        elif spec.name.endswith("_url"):
            shown = display_url(value)
        else:
            shown = str(value)
        source = settings.sources[spec.name]
        origin = spec.env if source == "env" else (f"[{spec.section}] {spec.key}" if source == "file" else "default")
        click.echo(f"  {spec.name:<22} {shown}  ({origin})")
