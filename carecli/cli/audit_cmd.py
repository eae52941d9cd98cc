"""``carecli audit``: the review queue of break-the-glass emergency accesses.

``audit emergencies`` lists the grants nobody has reviewed yet (``--all``:
every grant), with the number of audit rows done under each; ``audit
emergency GRANT_ID`` shows one grant and those rows; ``audit review GRANT_ID
--note TEXT`` marks it reviewed (``emergency:review``; audited). Listing
needs ``emergency:review`` or ``audit:read``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

import click

from carecli.config import load_settings
from carecli.data.databases import open_databases, require_head
from carecli.data.repositories.emergency import EmergencyGrant
from carecli.errors import EXIT_FAILURE
from carecli.services.auth.current import resolve_actor
from carecli.services.emergency import EmergencyAccess, QueueEntry


def _service() -> EmergencyAccess:
    """The signed-in user's emergency-access service on both databases (reachable, at head)."""
    settings = load_settings()
    databases = open_databases(settings)
    require_head(databases)
    actor = resolve_actor(settings, databases, channel="cli").actor
    return EmergencyAccess(databases, actor, minutes=settings.emergency_minutes)


def _grant_id(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an emergency access id (a UUID from "
                                 "`carecli audit emergencies`)", param_hint="GRANT_ID") from None


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M") if moment else "-"


def state(grant: EmergencyGrant) -> str:
    """live / ended / reviewed, as the queue shows it."""
    if grant.reviewed:
        return "reviewed"
    return "live" if grant.live else "ended"


def _entry_json(entry: QueueEntry) -> dict[str, Any]:
    grant = entry.grant
    # The reason and note are shown to reviewers only (here and in the app), never written to audit values.
    return {"id": str(grant.id), "member_id": str(grant.member_id), "user_id": str(grant.user_id),
            "user": entry.who, "reason": grant.reason, "minutes": grant.minutes,
            "granted_at": grant.granted_at.isoformat(), "expires_at": grant.expires_at.isoformat(),
            "state": state(grant), "live": grant.live, "actions": grant.actions,
            "reviewed_by": str(grant.reviewed_by) if grant.reviewed_by else None, "reviewer": entry.reviewer,
            "reviewed_at": grant.reviewed_at.isoformat() if grant.reviewed_at else None,
            "review_note": grant.review_note}


def _print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max([len(header[i]), *(len(row[i]) for row in rows)]) for i in range(len(header))]
    for cells in (header, ["-" * width for width in widths], *rows):
        click.echo("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(cells)).rstrip())


@click.group("audit")
def audit_group() -> None:
    """Review break-the-glass emergency accesses; seal and verify the audit history."""


@audit_group.command("emergencies")
@click.option("--all", "include_reviewed", is_flag=True, help="Reviewed grants too.")
@click.option("--json", "as_json", is_flag=True, help="JSON for scripts (includes the reasons).")
def emergencies_command(include_reviewed: bool, as_json: bool) -> None:
    """Emergency accesses waiting for review (emergency:review or audit:read)."""
    entries = _service().queue(include_reviewed=include_reviewed)
    if as_json:
        click.echo(json.dumps([_entry_json(entry) for entry in entries], indent=2))
        return
    if not entries:
        click.echo("no emergency accesses" if include_reviewed else "no emergency accesses waiting for review")
        return
    _print_table(("GRANT", "USER", "MEMBER", "GRANTED (UTC)", "EXPIRES (UTC)", "STATE", "ACTIONS"), [
        (str(e.grant.id), e.who, str(e.grant.member_id), _when(e.grant.granted_at), _when(e.grant.expires_at),
         state(e.grant), str(e.grant.actions or 0)) for e in entries])


@audit_group.command("emergency")
@click.argument("grant_id")
@click.option("--json", "as_json", is_flag=True, help="JSON for scripts.")
def emergency_command(grant_id: str, as_json: bool) -> None:
    """One emergency access and the audit rows done under it."""
    target = _grant_id(grant_id)
    service = _service()
    entry = service.get(target)
    actions = service.actions(target)
    if as_json:
        click.echo(json.dumps({**_entry_json(entry), "audit_rows": [
            {"id": str(a.id), "created_at": a.created_at.isoformat() if a.created_at else None,
             "action": a.action, "entity_type": a.entity_type, "entity_id": str(a.entity_id),
             "new_values": a.new_values} for a in actions]}, indent=2))
        return
    grant = entry.grant
    click.echo(f"emergency access {grant.id}: {entry.who} on member {grant.member_id}, "
               f"{_when(grant.granted_at)} to {_when(grant.expires_at)} UTC ({state(grant)})")
    click.echo(f"reason: {grant.reason}")
    if grant.reviewed:
        click.echo(f"reviewed by {entry.reviewer} on {_when(grant.reviewed_at)} UTC: {grant.review_note}")
    _print_table(("WHEN (UTC)", "ACTION", "ENTITY", "ID"), [
        (_when(a.created_at), a.action, a.entity_type, str(a.entity_id)) for a in actions])


@audit_group.command("review")
@click.argument("grant_id")
@click.option("--note", required=True, help="What you checked (at least 4 characters).")
def review_command(grant_id: str, note: str) -> None:
    """Mark an emergency access reviewed (emergency:review); a live one ends now."""
    target = _grant_id(grant_id)
    grant = _service().review(target, note)
    ended = " (it was still live: it has ended now)" if grant.expires_at == grant.reviewed_at else ""
    click.echo(f"emergency access {grant.id} reviewed{ended}")


# -- sealed history ---------------------------------------------------------------------------------------


def _sealing() -> tuple[Any, Any]:
    """The platform engine and the master key (sealing needs no signed-in user: the master key is the authority)."""
    from carecli.data.crypto.runtime import master_key

    settings = load_settings()
    databases = open_databases(settings)
    require_head(databases)
    return databases, master_key(settings, databases)


@audit_group.command("seal")
@click.option("--json", "as_json", is_flag=True, help="JSON for scripts (the seals made and the chain's head).")
def seal_command(as_json: bool) -> None:
    """Seal the audit rows that can no longer change (safe to run at any time, from cron, concurrently).

    Each seal holds the rows' ids, times and digests, the previous seal's head and a MAC under a
    seal key wrapped by the master key. Keep the printed head elsewhere to detect the newest seals
    being removed.
    """
    from carecli.data import audit_seal

    databases, master = _sealing()
    try:
        report = audit_seal.seal(databases.platform, master)
    finally:
        databases.dispose()
    horizon = report.horizon
    if as_json:
        click.echo(json.dumps({
            "sealed": [{"seal": s.seal_no, "rows": s.row_count, "from": s.range_start.isoformat() if s.range_start
                        else None, "until": s.range_end.isoformat(), "head": s.head.hex()} for s in report.sealed],
            "rows": report.rows, "horizon": horizon.at.isoformat() if horizon else None,
            "hidden_transactions": horizon.hidden if horizon else 0}))
        return
    if not report.sealed:
        click.echo("Nothing new to seal" + (f" before {horizon.at:%Y-%m-%d %H:%M:%S} UTC." if horizon else "."))
    for made in report.sealed:
        click.echo(f"seal {made.seal_no}: {made.row_count:,} audit rows created until "
                   f"{made.range_end:%Y-%m-%d %H:%M:%S.%f} UTC; head {made.head.hex()}")
    if horizon is not None and horizon.hidden:
        click.echo(f"note: {horizon.hidden} transaction(s) of other roles are hidden from this role, so rows of the "
                   f"last {audit_seal.HIDDEN_GRACE.seconds // 60} minutes wait for a later seal (grant this role "
                   "pg_read_all_stats to seal up to the present)")


def _since(value: str | None) -> datetime | None:
    """--since as a naive UTC time (seals' times are UTC): a date, or a date and time with or without an offset."""
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value.strip())
        if moment.tzinfo is not None:
            moment = moment.astimezone(timezone.utc).replace(tzinfo=None)
    except (ValueError, OverflowError):
        raise click.BadParameter("not a date: give YYYY-MM-DD, or YYYY-MM-DDTHH:MM (UTC unless an offset "
                                 "such as +02:00 follows)", param_hint="--since") from None
    return moment


@audit_group.command("verify")
@click.option("--since", "since", metavar="DATE", help="Check rows sealed from DATE on (UTC); the chain always.")
@click.option("--json", "as_json", is_flag=True, help="JSON for scripts.")
def verify_command(since: str | None, as_json: bool) -> None:
    """Check the sealed audit history: exit 0 when intact, 1 listing each altered, deleted, moved or
    inserted row and each broken seal, by id and time (never by value)."""
    from carecli.data import audit_seal
    start = _since(since)
    databases, master = _sealing()
    try:
        report = audit_seal.verify(databases.platform, master, since=start)
    finally:
        databases.dispose()
    if as_json:
        click.echo(json.dumps({"intact": report.intact, "seals": report.seals, "rows_checked": report.rows_checked,
                               "rows_purged": report.rows_purged, "rows_not_sealed_yet": report.unsealed,
                               "sealed_until": report.sealed_until.isoformat() if report.sealed_until else None,
                               "findings": [finding.as_json() for finding in report.findings]}))
    else:
        until = f"{report.sealed_until:%Y-%m-%d %H:%M:%S} UTC" if report.sealed_until else "nothing sealed yet"
        click.echo(f"{report.seals:,} seals; {report.rows_checked:,} sealed rows checked, {report.rows_purged:,} "
                   f"purged; sealed until {until}; {report.unsealed:,} rows not sealed yet")
        if report.findings:
            _print_table(("problem", "id", "created (UTC)", "seal", "detail"), [
                (f.what, f.ref, f.at.isoformat(sep=" ") if f.at else "-", str(f.seal_no or "-"), f.detail)
                for f in report.findings])
        else:
            click.echo("intact")
    if not report.intact:
        raise SystemExit(EXIT_FAILURE)
