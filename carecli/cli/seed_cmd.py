"""``carecli seed``: fill empty databases with realistic synthetic data."""

from __future__ import annotations

import sys

import click

from carecli.config import load_settings
from carecli.data.crypto.runtime import cipher_provider
from carecli.data.databases import open_databases, require_head
from carecli.errors import ConfigError


class _Progress:
    """One self-rewriting line on a terminal; silent when piped."""

    def __init__(self) -> None:
        self.enabled = sys.stderr.isatty()

    def __call__(self, table: str, done: int, total: int) -> None:
        if self.enabled:
            click.echo(f"\r  {table:<28} {done:>10,} / {total:,}", err=True, nl=False)

    def finish(self) -> None:
        if self.enabled:
            click.echo("\r" + " " * 60 + "\r", err=True, nl=False)


@click.command("seed")
@click.option("--members", type=click.IntRange(min=1, max=50_000_000), required=True,
              help="How many members to create (with their enrollments, calls and flags).")
@click.option("--seed", "rng_seed", type=int, default=None,
              help="Random seed: the same seed gives the same data.")
@click.option("--if-empty", is_flag=True,
              help="Do nothing (and succeed) when the databases already hold data.")
@click.option("--without-phi", is_flag=True,
              help="Leave SSN and date of birth empty (no master key needed).")
def seed_command(members: int, rng_seed: int | None, if_empty: bool, without_phi: bool) -> None:
    """Fill empty databases with synthetic roles, users, specialists, plans,
    members, enrollments, calls and risk flags (bulk COPY: a million members
    is practical). Synthetic SSNs and dates of birth are encrypted under the
    primary data key, as the app would."""
    # Imported here: the name lists and generators are only needed by this command.
    from carecli.data.seeding import SeedTargetNotEmpty, seed_demo_data

    settings = load_settings()
    databases = open_databases(settings)
    require_head(databases)
    cipher = None if without_phi else cipher_provider(settings, databases)()
    progress = _Progress()
    try:
        summary = seed_demo_data(databases.identity, databases.platform, members=members, seed=rng_seed,
                                 progress=progress, cipher=cipher)
    except SeedTargetNotEmpty as exc:
        progress.finish()
        if if_empty:
            click.echo(f"nothing seeded: {exc}")
            return
        raise ConfigError(str(exc)) from None
    finally:
        progress.finish()
    width = max(len(table) for table in summary.counts)
    click.echo(f"seeded in {summary.seconds:.1f}s:")
    for table, count in summary.counts.items():
        click.echo(f"  {table:<{width}}  {count:>10,}")
    if databases.embedded is not None:
        click.echo("\nThe data is in the embedded PostgreSQL: open the app with `carecli` (sign in by picking "
                   "a demo user), or look at the tables with `carecli db psql` (`--db identity` for users).")
