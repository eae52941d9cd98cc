"""``carecli check data``: how many stored rows break each rule; exit 1 when any does."""

from __future__ import annotations

import json

import click

from carecli.config import load_settings
from carecli.data.databases import open_databases, require_head
from carecli.data.integrity import RuleCount, total
from carecli.errors import EXIT_FAILURE
from carecli.services.auth.current import resolve_actor
from carecli.services.integrity import check_data


def _print_table(counts: list[RuleCount]) -> None:
    width = max(len(count.name) for count in counts)
    click.echo(f"{'rule':<{width}}  {'rows':>7}  meaning")
    for count in counts:
        click.echo(f"{count.name:<{width}}  {count.count:>7,}  {count.description}")
    found = total(counts)
    click.echo(f"\n{found:,} stored rows break a rule" if found else "\nNo stored row breaks a rule.")


@click.group("check")
def check_group() -> None:
    """Check stored data."""


@check_group.command("data")
@click.option("--json", "as_json", is_flag=True, help="One JSON object: each rule's count and the total.")
@click.pass_context
def data_command(ctx: click.Context, as_json: bool) -> None:
    """Count live rows that break a rule the app enforces (rows stored before the rule, or by hand).

    Nothing is changed: fix the rows in the app. Needs audit:read (admins, auditors). Exit 1 when any
    row breaks a rule.
    """
    settings = load_settings()
    databases = open_databases(settings)
    try:
        require_head(databases)
        actor = resolve_actor(settings, databases, channel="cli").actor
        counts = check_data(databases, actor)
    finally:
        databases.dispose()
    if as_json:
        click.echo(json.dumps({"rules": [count.as_json() for count in counts], "total": total(counts)}))
    else:
        _print_table(counts)
    if total(counts):
        ctx.exit(EXIT_FAILURE)
