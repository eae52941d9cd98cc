"""Retention: purge old soft-deleted rows for good, keep what a legal hold protects, purge old audit rows.

``purge`` walks the tables children first (:data:`carecli.data.retention.PLATFORM_TABLES`,
then the identity tables), each in batches that are transactions of their
own: a killed purge leaves whole batches done and a re-run carries on.
A row goes when it was soft-deleted longer ago than its table's retention
period (and before ``--before``), its member is not under legal hold, and
nothing refers to it any more. A dry run does the same work in one
transaction per database and rolls it back, so its counts are exactly what a
purge would do at that moment; nothing is committed.

Everything needs the ``retention:admin`` permission; purging audit rows also
needs the ``admin`` role. Refusals are audited (``deny``).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.exc import IntegrityError

from carecli.config import RETENTION_TABLES, Settings
from carecli.data import audit, audit_seal
from carecli.data import retention as sql
from carecli.data.actor import Actor
from carecli.data.crypto.runtime import master_key
from carecli.data.databases import Databases
from carecli.data.permissions import Permission
from carecli.data.repositories.identity import IdentityUnitOfWork
from carecli.data.unit_of_work import PlatformUnitOfWork
from carecli.errors import CarecliError, ConfigError, NotFound, PermissionDenied, ValidationError

NIL = uuid.UUID(int=0)
ENTITY = "retention"
AUDIT_PURGE_ROLE = "admin"
DEFAULT_BATCH = 1000
BLOCKED_SAMPLE = 20
REASON_MAX = 500
_FK_RETRIES = 3

assert {spec.name for spec in sql.ALL_TABLES} == set(RETENTION_TABLES), "retention tables out of step with config"


@dataclass
class TableReport:
    """What the purge did (or would do) to one table."""

    table: str
    database: str
    years: int
    #: rows deleted before this moment (UTC) were eligible
    cutoff: datetime
    purged: int = 0
    #: old deleted rows kept because their member is under legal hold
    held: int = 0
    #: old deleted rows kept because other rows still refer to them (or someone had them locked)
    blocked: int = 0
    blocked_ids: list[uuid.UUID] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {"table": self.table, "database": self.database, "years": self.years,
                "deleted_before": self.cutoff.isoformat(sep=" "), "purged": self.purged, "held": self.held,
                "blocked": self.blocked, "blocked_ids": [str(i) for i in self.blocked_ids]}


@dataclass
class PurgeReport:
    dry_run: bool
    tables: list[TableReport]
    seconds: float = 0.0

    @property
    def purged(self) -> int:
        return sum(table.purged for table in self.tables)


@dataclass
class AuditPurgeReport:
    dry_run: bool
    years: int
    cutoff: datetime
    purged: int = 0
    batches: int = 0
    seconds: float = 0.0


# -- permissions --------------------------------------------------------------------------------


def _deny(databases: Databases, actor: Actor, operation: str, permission: str,
          entity_id: uuid.UUID | None = None) -> PermissionDenied:
    audit.write_committed(databases.platform, actor, ENTITY, entity_id or NIL, "deny",
                          {"operation": operation, "permission": permission})
    role = actor.role or "this user"
    return PermissionDenied(f"{role} may not {operation}: it needs the '{permission}' permission")


def require_retention_admin(databases: Databases, actor: Actor, operation: str,
                            entity_id: uuid.UUID | None = None) -> None:
    """Refuse (audited) unless the actor holds ``retention:admin``."""
    if not actor.can(Permission.RETENTION_ADMIN):
        raise _deny(databases, actor, operation, str(Permission.RETENTION_ADMIN), entity_id)


def _require_delete(connection: Connection, database: str, tables: list[str]) -> None:
    missing = sql.missing_delete_privilege(connection, tables)
    if missing:
        raise ConfigError(
            f"the {database} database role in use may not DELETE from {', '.join(missing)}: "
            "the retention purge runs as the tables' owner",
            hint=f"run this command with CARECLI_{database.upper()}_URL set to the <prefix>_{database}_owner "
                 "role's URL (see `carecli db grants`)")


# -- cutoffs ------------------------------------------------------------------------------------


def years_before(moment: datetime, years: int) -> datetime:
    """``moment`` moved back by whole years (29 February becomes 28 February)."""
    try:
        return moment.replace(year=moment.year - years)
    except ValueError:
        return moment.replace(year=moment.year - years, day=28)


def _cutoff(now: datetime, years: int, before: date | None) -> datetime:
    cutoff = years_before(now, years)
    if before is not None:
        cutoff = min(cutoff, datetime(before.year, before.month, before.day))
    return cutoff


# -- the purge ----------------------------------------------------------------------------------


class _Work:
    """Units of work for the batches: one per batch, or one for the whole dry run (rolled back)."""

    def __init__(self, databases: Databases, actor: Actor, dry_run: bool) -> None:
        self.databases, self.actor, self.dry_run = databases, actor, dry_run
        self._platform: PlatformUnitOfWork | None = None
        self._identity: IdentityUnitOfWork | None = None

    @contextmanager
    def platform(self) -> Iterator[Connection]:
        if self.dry_run:
            if self._platform is None:
                self._platform = PlatformUnitOfWork(self.databases.platform, self.actor).__enter__()
            yield self._platform.connection
            return
        with PlatformUnitOfWork(self.databases.platform, self.actor) as uow:
            yield uow.connection
            uow.commit()

    @contextmanager
    def identity(self) -> Iterator[tuple[Connection, Connection]]:
        """The identity connection and the platform connection its audit rows go to."""
        if self.dry_run:
            if self._identity is None:
                self._identity = IdentityUnitOfWork(self.databases.identity, self.databases.platform,
                                                    self.actor).__enter__()
            with self.platform() as platform:  # the dry run's platform side, so its deletions are seen
                yield self._identity.connection, platform
            return
        with IdentityUnitOfWork(self.databases.identity, self.databases.platform, self.actor) as uow:
            yield uow.connection, uow.audit_connection
            uow.commit()  # audit rows first, then the deletion

    def close(self) -> None:
        """Roll back whatever a dry run did."""
        for uow in (self._identity, self._platform):
            if uow is not None:
                uow.__exit__(None, None, None)
        self._identity = self._platform = None


def _with_fk_retry(connection: Connection, run: Callable[[], Any]) -> Any:
    """Run one batch in a savepoint; if a row gained a child meanwhile (FK refusal), select again."""
    for _ in range(_FK_RETRIES):
        try:
            with connection.begin_nested():
                return run()
        except IntegrityError as exc:
            if getattr(exc.orig, "sqlstate", None) != "23503":  # foreign_key_violation
                raise
    raise CarecliError("rows kept gaining new references while being purged",
                       hint="another service is writing to records deleted long ago; run the purge again later")


def purge(databases: Databases, actor: Actor, settings: Settings, *, before: date | None = None,
          dry_run: bool = False, batch_size: int = DEFAULT_BATCH,
          on_table: Callable[[TableReport], None] | None = None) -> PurgeReport:
    """Remove old soft-deleted rows from every table, children first (see the module docstring)."""
    if batch_size <= 0:
        raise ConfigError("--batch-size must be a positive whole number")
    require_retention_admin(databases, actor, "purge deleted records")
    started = time.perf_counter()
    platform_tables = [spec.name for spec in sql.PLATFORM_TABLES] + list(sql.PLATFORM_EXTRA)
    identity_tables = [spec.name for spec in sql.IDENTITY_TABLES]
    with databases.platform.connect() as connection:
        _require_delete(connection, "platform", platform_tables)
        now = sql.database_now(connection)
    with databases.identity.connect() as connection:
        _require_delete(connection, "identity", identity_tables)
    report = PurgeReport(dry_run=dry_run, tables=[
        TableReport(spec.name, spec.database, settings.retention_years_for(spec.name),
                    _cutoff(now, settings.retention_years_for(spec.name), before)) for spec in sql.ALL_TABLES])
    work = _Work(databases, actor, dry_run)
    try:
        for spec, table in zip(sql.ALL_TABLES, report.tables, strict=True):
            if spec.database == "platform":
                _purge_platform_table(work, spec, table, batch_size, report)
            else:
                _purge_identity_table(work, spec, table, batch_size, report)
            if on_table is not None:
                on_table(table)
    finally:
        work.close()
    report.seconds = time.perf_counter() - started
    return report


def _metadata_report(report: PurgeReport) -> TableReport:
    return next(table for table in report.tables if table.table == "metadata")


def _purge_platform_table(work: _Work, spec: sql.PurgeTable, table: TableReport, batch_size: int,
                          report: PurgeReport) -> None:
    while True:
        with work.platform() as connection:
            done = _with_fk_retry(connection, lambda: sql.purge_platform_batch(
                connection, spec, work.actor, table.cutoff, batch_size))
        table.purged += done.rows
        _count_facts(report, done.facts)
        if done.rows < batch_size:
            break
    with work.platform() as connection:
        table.held = sql.count_held(connection, spec, table.cutoff)
        table.blocked, table.blocked_ids = sql.remaining(connection, spec, table.cutoff, BLOCKED_SAMPLE)


def _count_facts(report: PurgeReport, facts: int) -> None:
    """Facts purged with their entity count as purged metadata rows."""
    if facts:
        _metadata_report(report).purged += facts


def _purge_identity_table(work: _Work, spec: sql.PurgeTable, table: TableReport, batch_size: int,
                          report: PurgeReport) -> None:
    skip: set[uuid.UUID] = set()  # users a specialists row still refers to
    while True:
        with work.identity() as (identity, platform):
            rows = sql.identity_candidates(identity, spec, table.cutoff, batch_size, sorted(skip))
            if spec.name == "users" and rows:
                referenced = sql.users_with_specialists(platform, [row_id for row_id, _ in rows])
                skip |= referenced
                rows_to_go = [row for row in rows if row[0] not in referenced]
            else:
                rows_to_go = rows
            if rows_to_go:
                facts = sql.audit_identity_purge(platform, spec, work.actor, rows_to_go)
                _count_facts(report, facts)
                table.purged += sql.delete_identity_rows(identity, spec, [row_id for row_id, _ in rows_to_go])
        if len(rows) < batch_size:
            break
    with work.identity() as (identity, _):
        table.blocked, table.blocked_ids = sql.remaining(identity, spec, table.cutoff, BLOCKED_SAMPLE)


# -- audit rows ---------------------------------------------------------------------------------


def purge_audit(databases: Databases, actor: Actor, settings: Settings, *, before: date | None = None,
                dry_run: bool = False, batch_size: int = DEFAULT_BATCH) -> AuditPurgeReport:
    """Delete audit rows older than the audit retention period (admin role and ``retention:admin``).

    Each batch writes one summary ``purge`` row (entity ``audit_log``: how many
    rows, the oldest and newest time) in its own transaction.
    """
    if batch_size <= 0:
        raise ConfigError("--batch-size must be a positive whole number")
    operation = "purge audit rows"
    require_retention_admin(databases, actor, operation)
    if actor.role != AUDIT_PURGE_ROLE:
        raise _deny(databases, actor, operation, f"role:{AUDIT_PURGE_ROLE}")
    started = time.perf_counter()
    with databases.platform.connect() as connection:
        now = sql.database_now(connection)
        _require_delete(connection, "platform", ["audit_logs"])
        if not sql.owns_audit_logs(connection):
            raise ConfigError("only the owner of audit_logs may purge audit rows",
                              hint="run this command with CARECLI_PLATFORM_URL set to the <prefix>_platform_owner "
                                   "role's URL (see `carecli db grants`)")
    years = settings.retention_audit_years
    report = AuditPurgeReport(dry_run=dry_run, years=years, cutoff=_cutoff(now, years, before))
    if dry_run:
        with PlatformUnitOfWork(databases.platform, actor) as uow:
            report.purged = sql.count_audit_before(uow.connection, report.cutoff)
        report.seconds = time.perf_counter() - started
        return report
    # Purged rows stay accounted for: everything that can be is sealed first, only sealed rows are
    # purged, and each batch leaves a purge seal of what it removed (carecli.data.audit_seal).
    master = master_key(settings, databases)
    audit_seal.seal(databases.platform, master)
    with databases.platform.connect() as connection:
        sealed_until = audit_seal.sealed_until(connection)
    cutoff = report.cutoff if sealed_until is None else min(report.cutoff, sealed_until)
    if sealed_until is None:
        cutoff = datetime.min
    while True:
        with PlatformUnitOfWork(databases.platform, actor) as uow:
            batch, removed = sql.purge_audit_batch(uow.connection, cutoff, batch_size)
            audit_seal.record_purge(uow.connection, master, removed)
            if batch.rows:
                audit.write(uow.connection, actor, "audit_log", NIL, sql.PURGE_ACTION, None, {
                    "table": "audit_logs", "rows": batch.rows, "created_before": report.cutoff.isoformat(sep=" "),
                    "oldest": batch.oldest, "newest": batch.newest})
            uow.commit()
        report.purged += batch.rows
        report.batches += 1 if batch.rows else 0
        if batch.rows < batch_size:
            break
    report.seconds = time.perf_counter() - started
    return report


# -- legal holds --------------------------------------------------------------------------------


def place_hold(databases: Databases, actor: Actor, member_id: uuid.UUID, reason: str) -> sql.Hold:
    """Put a member under legal hold: none of their rows is purged until it is released."""
    require_retention_admin(databases, actor, "place legal holds", member_id)
    reason = reason.strip()
    if not reason:
        raise ValidationError("reason", "required", "give the reason for the hold (a case or matter reference)")
    if len(reason) > REASON_MAX:
        raise ValidationError("reason", "max_length", f"is longer than {REASON_MAX} characters")
    with PlatformUnitOfWork(databases.platform, actor) as uow:
        connection = uow.connection
        if sql.member_state(connection, member_id) is False:
            raise NotFound(f"member {member_id} does not exist",
                           hint="check the id (`carecli retention holds` lists holds)")
        existing = sql.current_hold(connection, member_id, lock=True)
        if existing is not None:
            raise CarecliError(f"member {member_id} is already under legal hold (since {existing.set_at})",
                               hint="release it first to change the reason")
        set_at = sql.database_now(connection).isoformat(sep=" ", timespec="seconds")
        set_by = str(actor.user_id) if actor.user_id else None
        metadata_id, created = sql.put_hold(connection, member_id, {"reason": reason, "set_by": set_by,
                                                                    "set_at": set_at})
        # The reason is free text: like every metadata value it stays out of the audit log.
        audit.write(connection, actor, "metadata", metadata_id, "create" if created else "restore", None,
                    {"entity_type": "member", "entity_id": member_id, "metadata_key": sql.HOLD_KEY,
                     "metadata_value": "set"})
        audit.write(connection, actor, "member", member_id, "legal_hold", None, {"metadata_id": metadata_id})
        uow.commit()
    return sql.Hold(member_id, reason, set_by, set_at, metadata_id)


def release_hold(databases: Databases, actor: Actor, member_id: uuid.UUID) -> sql.Hold:
    """End a member's legal hold; their old deleted rows become purgeable again."""
    require_retention_admin(databases, actor, "release legal holds", member_id)
    with PlatformUnitOfWork(databases.platform, actor) as uow:
        connection = uow.connection
        hold = sql.current_hold(connection, member_id, lock=True)
        if hold is None:
            raise NotFound(f"member {member_id} is not under legal hold",
                           hint="`carecli retention holds` lists the holds")
        sql.end_hold(connection, hold.metadata_id)
        audit.write(connection, actor, "metadata", hold.metadata_id, "delete", None, {"deleted": True})
        audit.write(connection, actor, "member", member_id, "legal_hold_release", None,
                    {"metadata_id": hold.metadata_id, "held_since": hold.set_at})
        uow.commit()
    return hold


def holds(databases: Databases, actor: Actor) -> list[sql.Hold]:
    """Every legal hold in force."""
    require_retention_admin(databases, actor, "list legal holds")
    with PlatformUnitOfWork(databases.platform, actor) as uow:
        return sql.list_holds(uow.connection)
