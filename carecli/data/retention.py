"""SQL of the retention purge and of legal holds (the use cases are in carecli.services.retention).

The purge is the only DELETE in carecli. Each table is described by a
:class:`PurgeTable`: which soft-deleted rows are exempt because their member
is under legal hold, and which are *blocked* because other rows still refer
to them (a parent goes only after all its children went). One batch is one
statement on the platform database: lock up to N purgeable rows (skipping
rows someone else has locked), delete the entity's own ``metadata`` facts
and the rows, and insert one ``purge`` audit row per deleted row, all in the
caller's transaction. Audit values are the table and the deletion date:
never a column value.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, text

from carecli.data.actor import Actor
from carecli.data.ids import new_id

HOLD_KEY = "legal_hold"
PURGE_ACTION = "purge"


def _held(member_id_sql: str) -> str:
    """SQL true when the member whose id is ``member_id_sql`` is under a (live) legal hold."""
    return ("EXISTS (SELECT 1 FROM metadata h WHERE h.entity_type = 'member' "
            f"AND h.metadata_key = '{HOLD_KEY}' AND h.deleted_at IS NULL AND h.entity_id = {member_id_sql})")


def _refers(table: str, column: str) -> str:
    """SQL true when some row of ``table`` (any state) still points at ``t`` through ``column``."""
    return f"EXISTS (SELECT 1 FROM {table} x WHERE x.{column} = t.id)"


@dataclass(frozen=True)
class PurgeTable:
    """One table the purge removes old soft-deleted rows from."""

    name: str
    database: str
    entity_type: str
    #: SQL on alias ``t``: the row belongs to a member under legal hold
    held: str = "false"
    #: SQL on alias ``t``: rows still refer to this one, so it must stay
    blocked: str = "false"
    #: the row's own facts in ``metadata`` (entity_type = this entity) go with it
    with_facts: bool = True


_CALL_OF_HELD = f"EXISTS (SELECT 1 FROM call_records c WHERE c.id = {{}} AND {_held('c.member_id')})"

#: Children before parents: a table comes after every table whose rows point at it.
PLATFORM_TABLES: tuple[PurgeTable, ...] = (
    PurgeTable("risk_flags", "platform", "risk_flag",
               held=f"({_held('t.member_id')} OR {_CALL_OF_HELD.format('t.call_record_id')})"),
    PurgeTable("call_records", "platform", "call_record", held=_held("t.member_id"),
               blocked=_refers("risk_flags", "call_record_id")),
    PurgeTable("member_insurance_plans", "platform", "member_insurance_plan", held=_held("t.member_id")),
    PurgeTable("specialist_insurance_plans", "platform", "specialist_insurance_plan"),
    # Notes and other facts deleted on their own; facts of a purged entity go with the entity.
    PurgeTable("metadata", "platform", "metadata", with_facts=False, held=(
        f"((t.entity_type = 'member' AND {_held('t.entity_id')})"
        f" OR (t.entity_type = 'call_record' AND {_CALL_OF_HELD.format('t.entity_id')})"
        " OR (t.entity_type = 'risk_flag' AND EXISTS (SELECT 1 FROM risk_flags f WHERE f.id = t.entity_id AND "
        f"({_held('f.member_id')} OR {_CALL_OF_HELD.format('f.call_record_id')})))"
        " OR (t.entity_type = 'member_insurance_plan' AND EXISTS (SELECT 1 FROM member_insurance_plans e "
        f"WHERE e.id = t.entity_id AND {_held('e.member_id')})))")),
    PurgeTable("members", "platform", "member", held=_held("t.id"), blocked=" OR ".join((
        _refers("call_records", "member_id"), _refers("member_insurance_plans", "member_id"),
        _refers("risk_flags", "member_id")))),
    PurgeTable("specialists", "platform", "specialist", blocked=" OR ".join((
        _refers("call_records", "specialist_id"), _refers("risk_flags", "specialist_id"),
        _refers("specialist_insurance_plans", "specialist_id")))),
    PurgeTable("insurance_plans", "platform", "insurance_plan", blocked=" OR ".join((
        _refers("member_insurance_plans", "insurance_plan_id"),
        _refers("specialist_insurance_plans", "insurance_plan_id")))),
)

#: Identity tables; their audit rows and ``metadata`` facts (API token names) are in the platform database.
#: ``users`` are also kept while a platform ``specialists`` row refers to them (checked by the service).
IDENTITY_TABLES: tuple[PurgeTable, ...] = (
    PurgeTable("sessions", "identity", "session"),
    PurgeTable("tokens", "identity", "token"),
    PurgeTable("users", "identity", "user", blocked=" OR ".join((
        _refers("tokens", "user_id"), _refers("sessions", "user_id"),
        _refers("pending_platform_changes", "user_id")))),
    PurgeTable("roles", "identity", "role", blocked=_refers("users", "role_id")),
)

ALL_TABLES: tuple[PurgeTable, ...] = PLATFORM_TABLES + IDENTITY_TABLES
#: entity types whose imports keep digests in ``import_digests``, purged with their rows
DIGESTED = frozenset({"member"})
#: platform tables the purge deletes from besides those of :data:`PLATFORM_TABLES`
PLATFORM_EXTRA = ("import_digests",)


def _actor_params(actor: Actor) -> dict[str, Any]:
    return {"user_id": actor.user_id, "ip": actor.ip_address, "ua": actor.user_agent}


_AUDIT_COLUMNS = ("id, user_id, entity_type, entity_id, action, old_values, new_values, ip_address, user_agent, "
                  "created_at")
_AUDIT_ACTOR = "CAST(:user_id AS uuid), {etype}, {id}, 'purge', CAST(NULL AS jsonb), {values}, CAST(:ip AS inet), :ua"
_NOW = "clock_timestamp() AT TIME ZONE 'UTC'"


def _purge_values(table_sql: str, deleted_sql: str, extra: str = "") -> str:
    return f"jsonb_build_object('table', {table_sql}, 'deleted_at', to_char({deleted_sql}, 'YYYY-MM-DD'){extra})"


def _candidates(spec: PurgeTable, *, lock: bool) -> str:
    return (f"SELECT t.id, t.deleted_at FROM {spec.name} t WHERE t.deleted_at < :cutoff "
            f"AND NOT ({spec.held}) AND NOT ({spec.blocked}) AND t.id <> ALL(CAST(:skip AS uuid[])) "
            "ORDER BY t.deleted_at, t.id LIMIT :limit" + (" FOR UPDATE OF t SKIP LOCKED" if lock else ""))


@dataclass(frozen=True)
class BatchResult:
    #: rows of the table itself deleted
    rows: int
    #: ``metadata`` rows deleted with them
    facts: int


def purge_platform_batch(connection: Connection, spec: PurgeTable, actor: Actor, cutoff: datetime,
                         limit: int) -> BatchResult:
    """Delete up to ``limit`` purgeable rows of a platform table, with their facts and audit rows."""
    facts_cte = facts_audit = ""
    if spec.with_facts:
        facts_cte = (", facts AS (DELETE FROM metadata m USING doomed d WHERE m.entity_type = :etype "
                     "AND m.entity_id = d.id RETURNING m.id, m.deleted_at)")
        facts_audit = (" UNION ALL SELECT gen_random_uuid(), "
                       + _AUDIT_ACTOR.format(etype="'metadata'", id="id", values=_purge_values(
                           "'metadata'", "deleted_at", ", 'with', CAST(:etype AS text)"))
                       + f", {_NOW} FROM facts")
    digests_cte = ""
    if spec.entity_type in DIGESTED:  # the keyed digests of the rows' import records (carecli.data.bulk.digests)
        digests_cte = (", digests AS (DELETE FROM import_digests x USING doomed d WHERE x.entity_type = :etype "
                       "AND x.entity_id = d.id)")
    statement = text(
        f"WITH doomed AS ({_candidates(spec, lock=True)}){facts_cte}{digests_cte}, "
        f"gone AS (DELETE FROM {spec.name} t USING doomed d WHERE t.id = d.id RETURNING t.id, t.deleted_at), "
        f"audited AS (INSERT INTO audit_logs ({_AUDIT_COLUMNS}) SELECT gen_random_uuid(), "
        + _AUDIT_ACTOR.format(etype="CAST(:etype AS varchar)", id="id",
                              values=_purge_values("CAST(:table AS text)", "deleted_at"))
        + f", {_NOW} FROM gone{facts_audit}) "
        # Data-modifying CTEs run to completion whether or not the main query reads them.
        "SELECT (SELECT count(*) FROM gone), " + ("(SELECT count(*) FROM facts)" if spec.with_facts else "0")
    )
    rows, facts = connection.execute(statement, {
        "cutoff": cutoff, "limit": limit, "skip": [], "etype": spec.entity_type, "table": spec.name,
        **_actor_params(actor)}).one()
    return BatchResult(int(rows), int(facts))


def identity_candidates(connection: Connection, spec: PurgeTable, cutoff: datetime, limit: int,
                        skip: Sequence[uuid.UUID]) -> list[tuple[uuid.UUID, datetime]]:
    """Lock up to ``limit`` purgeable rows of an identity table (ids and deletion times)."""
    rows = connection.execute(text(_candidates(spec, lock=True)),
                              {"cutoff": cutoff, "limit": limit, "skip": list(skip)})
    return [(row.id, row.deleted_at) for row in rows]


def users_with_specialists(platform: Connection, user_ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
    """Which of these users a platform ``specialists`` row still refers to (by value: no FK across databases)."""
    rows = platform.execute(text("SELECT DISTINCT user_id FROM specialists WHERE user_id = ANY(CAST(:ids AS uuid[]))"),
                            {"ids": list(user_ids)})
    return {row[0] for row in rows}


def audit_identity_purge(platform: Connection, spec: PurgeTable, actor: Actor,
                         rows: Sequence[tuple[uuid.UUID, datetime]]) -> int:
    """On the platform database: delete the rows' ``metadata`` facts and write their purge audit rows.

    Returns how many facts went. Committed before the identity rows are deleted,
    like every identity change: a deletion can never lack its audit row.
    """
    params = {"ids": [row_id for row_id, _ in rows], "deleted": [deleted for _, deleted in rows],
              "etype": spec.entity_type, "table": spec.name, **_actor_params(actor)}
    facts = platform.execute(text(
        "WITH facts AS (DELETE FROM metadata m "
        "WHERE m.entity_type = :etype AND m.entity_id = ANY(CAST(:ids AS uuid[])) RETURNING m.id, m.deleted_at) "
        f"INSERT INTO audit_logs ({_AUDIT_COLUMNS}) SELECT gen_random_uuid(), "
        + _AUDIT_ACTOR.format(etype="'metadata'", id="id", values=_purge_values(
            "'metadata'", "deleted_at", ", 'with', CAST(:etype AS text)"))
        + f", {_NOW} FROM facts RETURNING 1"), params).rowcount
    platform.execute(text(
        f"INSERT INTO audit_logs ({_AUDIT_COLUMNS}) SELECT gen_random_uuid(), "
        + _AUDIT_ACTOR.format(etype="CAST(:etype AS varchar)", id="u.id",
                              values=_purge_values("CAST(:table AS text)", "u.deleted_at"))
        + f", {_NOW} FROM unnest(CAST(:ids AS uuid[]), CAST(:deleted AS timestamp[])) AS u(id, deleted_at)"), params)
    return int(facts)


def delete_identity_rows(connection: Connection, spec: PurgeTable, ids: Sequence[uuid.UUID]) -> int:
    """Delete rows of an identity table (already locked by :func:`identity_candidates`)."""
    result = connection.execute(text(f"DELETE FROM {spec.name} WHERE id = ANY(CAST(:ids AS uuid[]))"),
                                {"ids": list(ids)})
    return int(result.rowcount)


def count_held(connection: Connection, spec: PurgeTable, cutoff: datetime) -> int:
    """Old soft-deleted rows kept because their member is under legal hold."""
    return int(connection.execute(text(
        f"SELECT count(*) FROM {spec.name} t WHERE t.deleted_at < :cutoff AND ({spec.held})"),
        {"cutoff": cutoff}).scalar_one())


def remaining(connection: Connection, spec: PurgeTable, cutoff: datetime, sample: int) -> tuple[int, list[uuid.UUID]]:
    """Old soft-deleted rows not held that are still there (blocked, or locked by someone): count and some ids."""
    where = f"FROM {spec.name} t WHERE t.deleted_at < :cutoff AND NOT ({spec.held})"
    count = int(connection.execute(text(f"SELECT count(*) {where}"), {"cutoff": cutoff}).scalar_one())
    ids = [row[0] for row in connection.execute(
        text(f"SELECT t.id {where} ORDER BY t.deleted_at, t.id LIMIT :n"), {"cutoff": cutoff, "n": sample})]
    return count, ids


def missing_delete_privilege(connection: Connection, tables: Sequence[str]) -> list[str]:
    """The tables the connected role may not DELETE from."""
    return [table for table in tables if not connection.execute(
        text("SELECT has_table_privilege(CAST(:t AS text), 'DELETE')"), {"t": table}).scalar_one()]


def owns_audit_logs(connection: Connection) -> bool:
    """Whether the connected role is (a member of) the owner of ``audit_logs`` (the trigger's own test)."""
    return bool(connection.execute(text(
        "SELECT pg_has_role(current_user, (SELECT relowner FROM pg_class WHERE oid = 'audit_logs'::regclass), "
        "'MEMBER')")).scalar_one())


def database_now(connection: Connection) -> datetime:
    """The database's clock in UTC (naive, like the seed's timestamps)."""
    return connection.execute(text("SELECT now() AT TIME ZONE 'UTC'")).scalar_one()


# -- audit rows -------------------------------------------------------------------------------


@dataclass(frozen=True)
class AuditBatch:
    rows: int
    oldest: datetime | None
    newest: datetime | None


def purge_audit_batch(connection: Connection, cutoff: datetime, limit: int) -> tuple[AuditBatch, list[bytes]]:
    """Delete up to ``limit`` audit rows created before ``cutoff``, oldest first (by created_at, then id).

    The append-only trigger lets these through only because the transaction
    names the cutoff (platform_0007 checks it is old enough, and the role).
    Returns the batch and the removed rows' seal entries (carecli.data.audit_seal), in that order: the
    caller records them in a purge seal in the same transaction.
    """
    from carecli.data.audit_seal import purge_batch_sql

    connection.execute(text("SELECT set_config('carecli.audit_purge_before', :cutoff, true)"),
                       {"cutoff": cutoff.isoformat(sep=" ")})
    removed = connection.execute(text(
        f"WITH doomed AS ({purge_batch_sql()}), "
        "gone AS (DELETE FROM audit_logs a USING doomed d WHERE a.id = d.id RETURNING a.id) "
        "SELECT d.entry, d.created_at FROM doomed d JOIN gone g ON g.id = d.id ORDER BY d.created_at, d.id"),
        {"cutoff": cutoff, "limit": limit}).all()
    connection.execute(text("SELECT set_config('carecli.audit_purge_before', '', true)"))
    batch = AuditBatch(len(removed), removed[0].created_at if removed else None,
                       removed[-1].created_at if removed else None)
    return batch, [bytes(row.entry) for row in removed]


def count_audit_before(connection: Connection, cutoff: datetime) -> int:
    return int(connection.execute(text("SELECT count(*) FROM audit_logs WHERE created_at < :cutoff"),
                                  {"cutoff": cutoff}).scalar_one())


# -- legal holds ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hold:
    """A legal hold on a member: no row of theirs is purged while it stands."""

    member_id: uuid.UUID
    reason: str
    set_by: str | None
    set_at: str | None
    metadata_id: uuid.UUID
    #: whether the member record itself is soft-deleted
    member_deleted: bool = False


def member_state(connection: Connection, member_id: uuid.UUID) -> datetime | None | bool:
    """False when no such member row exists; else its ``deleted_at`` (None for a live member)."""
    row = connection.execute(text("SELECT deleted_at FROM members WHERE id = :id FOR SHARE"), {"id": member_id}).first()
    return False if row is None else row.deleted_at


def _hold(row: Any) -> Hold:
    value = row.metadata_value if isinstance(row.metadata_value, dict) else {}
    return Hold(member_id=row.entity_id, reason=str(value.get("reason", "")), set_by=value.get("set_by"),
                set_at=value.get("set_at"), metadata_id=row.id,
                member_deleted=getattr(row, "member_deleted_at", None) is not None)


def current_hold(connection: Connection, member_id: uuid.UUID, *, lock: bool = False) -> Hold | None:
    """The member's live legal hold, if any."""
    row = connection.execute(text(
        "SELECT id, entity_id, metadata_value FROM metadata WHERE entity_type = 'member' AND entity_id = :id "
        f"AND metadata_key = '{HOLD_KEY}' AND deleted_at IS NULL" + (" FOR UPDATE" if lock else "")),
        {"id": member_id}).first()
    return None if row is None else _hold(row)


def put_hold(connection: Connection, member_id: uuid.UUID, value: dict[str, Any]) -> tuple[uuid.UUID, bool]:
    """Set the hold row (creating it, or reviving a released one); returns its id and whether it is new."""
    row = connection.execute(text(
        "INSERT INTO metadata (id, entity_type, entity_id, metadata_key, metadata_value, created_at, updated_at) "
        f"VALUES (:new_id, 'member', :id, '{HOLD_KEY}', CAST(:value AS jsonb), {_NOW}, {_NOW}) "
        "ON CONFLICT (entity_type, entity_id, metadata_key) DO UPDATE SET metadata_value = EXCLUDED.metadata_value, "
        f"deleted_at = NULL, updated_at = {_NOW} RETURNING id, (xmax = 0) AS created"),
        {"new_id": new_id(), "id": member_id, "value": json.dumps(value, sort_keys=True)}).one()
    return row.id, bool(row.created)


def end_hold(connection: Connection, metadata_id: uuid.UUID) -> None:
    """Release a hold: its row is soft-deleted (and purged in its turn, like any fact)."""
    connection.execute(text(f"UPDATE metadata SET deleted_at = {_NOW}, updated_at = {_NOW} WHERE id = :id"),
                       {"id": metadata_id})


def list_holds(connection: Connection) -> list[Hold]:
    """Every live legal hold, oldest first."""
    rows = connection.execute(text(
        "SELECT h.id, h.entity_id, h.metadata_value, m.deleted_at AS member_deleted_at FROM metadata h "
        "LEFT JOIN members m ON m.id = h.entity_id "
        f"WHERE h.entity_type = 'member' AND h.metadata_key = '{HOLD_KEY}' AND h.deleted_at IS NULL "
        "ORDER BY h.created_at, h.id"))
    return [_hold(row) for row in rows]
