"""``carecli retention``: purge old soft-deleted rows, legal holds, purge old audit rows."""

from __future__ import annotations

import json
import uuid
from datetime import date

import click

from carecli.config import Settings, load_settings
from carecli.data.actor import Actor
from carecli.data.databases import Databases, open_databases, require_head
from carecli.errors import ConfigError
from carecli.services import retention
from carecli.services.auth.current import resolve_actor


def _signed_in() -> tuple[Settings, Databases, Actor]:
    settings = load_settings()
    databases = open_databases(settings)
    require_head(databases)
    return settings, databases, resolve_actor(settings, databases, channel="cli").actor


def _date(value: str | None) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value.strip())
    except ValueError:
        raise ConfigError(f"--before '{value}' is not a date", hint="give it as YYYY-MM-DD, e.g. 2019-01-31") from None


def _member_id(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value.strip())
    except ValueError:
        raise ConfigError(f"'{value}' is not a member id", hint="member ids are UUIDs, e.g. "
                          "0b9c6a1e-3f7d-4a52-9e51-5d2f1c7a8b90") from None


@click.group("retention")
def retention_group() -> None:
    """Purge records deleted longer ago than the retention period; legal holds exempt members."""


@retention_group.command("purge")
@click.option("--dry-run", is_flag=True, help="Count what would be purged, per table; delete nothing.")
@click.option("--before", "before", metavar="DATE",
              help="Only rows deleted before DATE (YYYY-MM-DD); never widens the retention period.")
@click.option("--audit", "audit_rows", is_flag=True,
              help="Purge audit rows older than [retention] audit_years instead (admin role only).")
@click.option("--batch-size", type=int, default=retention.DEFAULT_BATCH, show_default=True,
              help="Rows per transaction.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def purge_command(dry_run: bool, before: str | None, audit_rows: bool, batch_size: int, as_json: bool) -> None:
    """Delete for good the rows soft-deleted longer ago than their table's retention period.

    Children go before parents; a row others still refer to is kept and
    reported as blocked; everything of a member under legal hold is kept.
    Each deleted row gets a 'purge' audit row (table and id only). Needs
    retention:admin, and a database role that may DELETE (the tables' owner).
    """
    when = _date(before)
    settings, databases, actor = _signed_in()
    if audit_rows:
        result = retention.purge_audit(databases, actor, settings, before=when, dry_run=dry_run,
                                       batch_size=batch_size)
        if as_json:
            click.echo(json.dumps({"dry_run": result.dry_run, "table": "audit_logs", "years": result.years,
                                   "created_before": result.cutoff.isoformat(sep=" "), "purged": result.purged,
                                   "batches": result.batches, "seconds": round(result.seconds, 3)}))
            return
        verb = "would purge" if dry_run else "purged"
        click.echo(f"audit_logs: {verb} {result.purged:,} rows created before {result.cutoff:%Y-%m-%d} "
                   f"({result.years} years) in {result.seconds:.1f}s")
        return
    report = retention.purge(databases, actor, settings, before=when, dry_run=dry_run, batch_size=batch_size)
    if as_json:
        click.echo(json.dumps({"dry_run": report.dry_run, "purged": report.purged,
                               "seconds": round(report.seconds, 3),
                               "tables": [table.as_json() for table in report.tables]}))
        return
    if dry_run:
        click.echo("dry run: nothing was deleted; 'purged' is what a purge would delete now")
    click.echo(f"{'table':<28} {'database':<9} {'years':>5}  {'deleted before':<14} {'purged':>8} {'held':>6} "
               f"{'blocked':>8}")
    for table in report.tables:
        click.echo(f"{table.table:<28} {table.database:<9} {table.years:>5}  {table.cutoff:%Y-%m-%d}     "
                   f"{table.purged:>8,} {table.held:>6,} {table.blocked:>8,}")
    held = sum(table.held for table in report.tables)
    blocked = sum(table.blocked for table in report.tables)
    click.echo(f"total: {report.purged:,} purged, {held:,} held, {blocked:,} blocked in {report.seconds:.1f}s")
    if blocked:
        click.echo("blocked rows are still referred to by rows that are kept (live, recent or held); "
                   "--json lists their ids", err=True)


@retention_group.command("hold")
@click.argument("member_id")
@click.option("--reason", required=True, help="Why (a case or matter reference); kept with the hold.")
def hold_command(member_id: str, reason: str) -> None:
    """Put MEMBER_ID under legal hold: nothing of theirs is purged until it is released."""
    member = _member_id(member_id)
    _, databases, actor = _signed_in()
    hold = retention.place_hold(databases, actor, member, reason)
    click.echo(f"member {hold.member_id} is under legal hold since {hold.set_at}")


@retention_group.command("release")
@click.argument("member_id")
def release_command(member_id: str) -> None:
    """End MEMBER_ID's legal hold; their old deleted records become purgeable again."""
    member = _member_id(member_id)
    _, databases, actor = _signed_in()
    retention.release_hold(databases, actor, member)
    click.echo(f"member {member} is no longer under legal hold")


@retention_group.command("holds")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def holds_command(as_json: bool) -> None:
    """List the legal holds in force."""
    _, databases, actor = _signed_in()
    found = retention.holds(databases, actor)
    if as_json:
        click.echo(json.dumps([{"member_id": str(h.member_id), "reason": h.reason, "set_by": h.set_by,
                                "set_at": h.set_at, "member_deleted": h.member_deleted} for h in found]))
        return
    if not found:
        click.echo("no legal holds")
        return
    for h in found:
        deleted = " (member deleted)" if h.member_deleted else ""
        click.echo(f"{h.member_id}  since {h.set_at}  by {h.set_by or '-'}{deleted}  {h.reason}")
