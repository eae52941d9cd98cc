"""Bulk loads where indexes cost most: secondary indexes dropped before a large load, built after it.

Keeping an index up to date row by row during a bulk load costs the server
about three times what building it once after the data does (issue 19: the
indexes of ``members`` and ``audit_logs`` were most of a 200,000-member
import's time in the database). So a load that is large relative to a table
(the rows going in are at least as many as the rows already there, and at
least :data:`MIN_ROWS`; ``--defer-indexes always|never`` overrides) drops
that table's *deferrable* indexes, loads, and builds them again, the way
pg_restore does. An import estimates the rows going in as the file's records
(from its size) times the share of its first batch that creates records, so
a re-run of a file already loaded defers nothing.

Deferrable: a valid, non-unique index that backs no constraint, named
``ix_...`` (carecli's migrations name their indexes so), on ``members``,
``metadata`` or ``audit_logs``, whose definition builds back exactly as it is
(tried on an empty temporary copy of the table first). Never a primary key,
never a UNIQUE constraint or unique index (the import's natural keys and the
metadata upserts depend on them, and they guard the data while it goes in),
never anything of the seed's.

Kill-safe: each index's exact definition (``pg_get_indexdef``) and the
statistics targets of its columns (``platform_0011`` sets some) go into
``deferred_indexes`` (``platform_0014``) in the very transaction that drops
it: whenever an index is missing, its record is committed, whatever is
killed when. The record names the load's database session
(``owner_pid``/``owner_started``, and the session holds the advisory lock
``(OWNER_LOCK, pid)``): while it lives the index is the load's to build;
once it is gone (``kill -9``, a lost connection) anyone builds it: the next
import (which instead takes the records over when it defers that table
itself), ``carecli db upgrade``, ``carecli db rebuild-indexes``;
``carecli doctor`` and ``carecli db check`` report it. Each index is built
with ``CREATE INDEX`` (``maintenance_work_mem`` raised for the transaction)
and its record deleted in the same transaction, under a row lock
(``FOR UPDATE SKIP LOCKED``), so two builders never build one index twice. An
index found INVALID (a ``CREATE INDEX CONCURRENTLY`` that failed) or with a
definition other than the recorded one is dropped and built as recorded.

Locks: dropping takes ``ACCESS EXCLUSIVE`` on the tables for the few
milliseconds of the drop transaction, requested with ``lock_timeout``
(:data:`LOCK_TIMEOUT_MS`, a few attempts): while the request waits behind a
running query, the app's queries on that table queue behind it, at most that
long; a load that cannot get the lock loads with the indexes in place. During
the load the app keeps working on the tables, searching them without those
indexes (slower: sequential scans). Building holds ``SHARE``: reads go on,
writes to that table (the app saving a member) wait for the build (about a
second per index per 200,000 members on 2 cores).

Audit: one ``defer_indexes`` row per table (the index names, the reason, the
row counts that decided it) and one ``rebuild_indexes`` row per index built,
``entity_type`` ``database_index``, ``entity_id`` the load's run id. No values.

A role that does not own the tables (the least-privilege app role) cannot
drop or build indexes: its loads keep them in place.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError

from carecli.data import audit
from carecli.data.actor import Actor
from carecli.data.ids import new_id

log = logging.getLogger(__name__)

#: the tables whose secondary indexes a bulk load may defer
DEFERRABLE_TABLES = ("members", "metadata", "audit_logs")
#: ``--defer-indexes``: auto (by size), always, never
MODES = ("auto", "always", "never")
#: auto: a table's indexes are deferred only for at least this many incoming rows (below it the drop, the
#: rebuild's scans of the table and the DDL's catalog churn cost more than they save)
MIN_ROWS = 10_000
#: waiting for the drop's ACCESS EXCLUSIVE lock: this long per attempt (the app's queries queue behind it)
LOCK_TIMEOUT_MS = 1_000
LOCK_ATTEMPTS = 3
#: waiting for a build's SHARE lock (in-flight writes to the table finish first; reads are never blocked)
BUILD_LOCK_TIMEOUT_MS = 60_000
#: maintenance_work_mem for the builds (one sort per index in memory up to ~1M rows)
BUILD_MEMORY = "256MB"
ENTITY_TYPE = "database_index"
_INDEX_PREFIX = "ix_"

#: key1 of the session-level advisory lock (key1, pid) a load holds while it owns records ("care")
OWNER_LOCK = 0x63617265
# A record's load lives while its session holds the advisory lock (OWNER_LOCK, its pid): pg_locks shows every
# session's locks to every role, where pg_stat_activity hides other roles' sessions' details. A session started
# later under the same pid (so with another backend_start, where that is visible) is not the load.
_LIVE = (f"(EXISTS (SELECT 1 FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted "
         f"AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
         f"AND l.classid = {OWNER_LOCK}::oid AND l.objid = d.owner_pid::oid AND l.objsubid = 2 "
         f"AND l.pid = d.owner_pid) "
         f"AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.pid = d.owner_pid "
         f"AND a.backend_start IS NOT NULL AND a.backend_start <> d.owner_started))")


@dataclass(frozen=True)
class IndexInfo:
    """A deferrable index: where it is, and how to build it again exactly."""

    schema: str
    name: str
    table: str
    definition: str
    #: column number (as text) -> statistics target, for columns with one set
    statistics: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Recorded(IndexInfo):
    """A row of ``deferred_indexes``, with the state of its index now."""

    by_run: uuid.UUID = uuid.UUID(int=0)
    reason: str = ""
    deferred_at: datetime | None = None
    #: the load that dropped it still runs (its database session is alive)
    alive: bool = False
    #: the index exists (possibly INVALID, or other than recorded)
    present: bool = False
    valid: bool = False


@dataclass
class RebuildResult:
    built: list[str] = field(default_factory=list)
    #: records left: their load still runs, someone else is building them, or the build failed
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def available(connection: Connection) -> bool:
    """Whether this database has ``deferred_indexes`` (``platform_0014`` or later)."""
    return connection.execute(text("SELECT to_regclass('public.deferred_indexes') IS NOT NULL")).scalar_one()


# -- what may be deferred -----------------------------------------------------------------------------------


def candidates(connection: Connection, tables: Sequence[str]) -> list[IndexInfo]:
    """The deferrable indexes of ``tables`` (in schema public) as they are now."""
    rows = connection.execute(text(
        """
        SELECT n.nspname, ic.relname, t.relname, pg_get_indexdef(i.indexrelid),
               coalesce((SELECT jsonb_object_agg(a.attnum::text, a.attstattarget) FROM pg_attribute a
                         WHERE a.attrelid = i.indexrelid AND a.attnum > 0 AND a.attstattarget >= 0), '{}'::jsonb)
        FROM pg_index i
        JOIN pg_class t ON t.oid = i.indrelid
        JOIN pg_class ic ON ic.oid = i.indexrelid
        JOIN pg_namespace n ON n.oid = ic.relnamespace
        WHERE t.relnamespace = 'public'::regnamespace AND t.relname = ANY(:tables)
          AND NOT i.indisprimary AND NOT i.indisunique AND NOT i.indisexclusion
          AND i.indisvalid AND i.indisready AND i.indislive
          AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)
          AND starts_with(ic.relname, :prefix)
        ORDER BY t.relname, ic.relname
        """), {"tables": list(tables), "prefix": _INDEX_PREFIX}).all()
    return [IndexInfo(schema, name, table, definition, {str(k): int(v) for k, v in (stats or {}).items()})
            for schema, name, table, definition, stats in rows]


def _after_table(definition: str) -> str | None:
    """What follows ``ON <table>`` in an index definition (the method, keys, INCLUDE and predicate)."""
    head, sep, tail = definition.partition(" USING ")
    return tail if sep and " ON " in head else None


def rebuilds_identically(connection: Connection, index: IndexInfo) -> bool:
    """Whether ``index.definition`` builds back an index with the very same definition.

    PostgreSQL re-parses some expressions into an equivalent but differently written form (a
    varchar ``IN`` list comes back with its casts moved); such an index is not deferred, so the
    schema never drifts from the migrations'. Tried on an empty temporary copy of the table (a
    few milliseconds), in a savepoint of the caller's transaction.
    """
    expected = _after_table(index.definition)
    marker = f" ON {_qualified_name(connection, index.schema, index.table)} USING "
    if expected is None or marker not in index.definition:
        return False
    probe_table = f"carecli_probe_{index.table}"
    savepoint = connection.begin_nested()
    try:
        connection.exec_driver_sql(f"CREATE TEMP TABLE {probe_table} (LIKE {index.schema}.{index.table})")
        probe = index.definition.replace(f" INDEX {_quote(connection, index.name)} ON ",
                                          " INDEX carecli_probe_index ON ", 1).replace(
            marker, f" ON pg_temp.{probe_table} USING ", 1)
        connection.exec_driver_sql(probe)
        built = connection.execute(text("SELECT pg_get_indexdef('pg_temp.carecli_probe_index'::regclass)")).scalar()
    except DBAPIError:
        built = None
    finally:
        savepoint.rollback()
    return built is not None and _after_table(built) == expected


class UnsafeDefinition(ValueError):
    """A recorded definition that is not the one statement building that very index: never run."""


def checked_definition(connection: Connection, definition: str, schema: str, name: str, table: str) -> str:
    """``definition`` if it is one ``CREATE INDEX`` of the recorded index on one of the deferrable tables.

    A record is run as SQL by whoever builds it (the owner role, in ``db upgrade`` or ``rebuild-indexes``):
    anything else written into ``deferred_indexes`` (the app role may only read it; a hand-edited row, a
    restored dump) must not become a statement run with the owner's rights. ``pg_get_indexdef`` gives
    exactly ``CREATE [UNIQUE] INDEX name ON schema.table USING ...`` with no semicolon; the deferrable
    indexes are never unique.
    """
    prefix = f"CREATE INDEX {_quote(connection, name)} ON {_qualified_name(connection, schema, table)} USING "
    if table not in DEFERRABLE_TABLES or not definition.startswith(prefix) or ";" in definition:
        raise UnsafeDefinition(f"the recorded definition of index {schema}.{name} is not a CREATE INDEX of that "
                               f"index on {schema}.{table}; it was not run (delete the record, then check the "
                               "index by hand)")
    return definition


def _quote(connection: Connection, name: str) -> str:
    return str(connection.execute(text("SELECT quote_ident(:n)"), {"n": name}).scalar_one())


def _qualified_name(connection: Connection, schema: str, name: str) -> str:
    return str(connection.execute(text("SELECT quote_ident(:s) || '.' || quote_ident(:n)"),
                                  {"s": schema, "n": name}).scalar_one())


def existing_rows(connection: Connection, table: str, cap: int) -> int:
    """The rows of ``table``, counted up to ``cap`` (a table clearly larger by its statistics is not counted)."""
    estimate = connection.execute(text("SELECT reltuples FROM pg_class WHERE oid = to_regclass(:t)"),
                                  {"t": f"public.{table}"}).scalar()
    if estimate is not None and estimate > 2 * cap:
        return int(estimate)
    return int(connection.execute(text(f"SELECT count(*) FROM (SELECT 1 FROM public.{table} LIMIT :cap) s"),
                                  {"cap": cap}).scalar_one())


def choose_tables(connection: Connection, incoming: Mapping[str, int], mode: str) -> dict[str, int]:
    """The tables whose indexes a load of ``incoming`` rows (per table) defers, with their rows now.

    ``auto``: at least :data:`MIN_ROWS` rows coming and at least as many as the table holds.
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}")
    chosen: dict[str, int] = {}
    if mode == "never":
        return chosen
    for table, rows in incoming.items():
        if table not in DEFERRABLE_TABLES or rows <= 0:
            continue
        if mode == "always":
            chosen[table] = existing_rows(connection, table, rows + 1)
            continue
        if rows < MIN_ROWS:
            continue
        existing = existing_rows(connection, table, rows + 1)
        if existing <= rows:
            chosen[table] = existing
    return chosen


# -- the records ---------------------------------------------------------------------------------------------


def recorded(connection: Connection, tables: Sequence[str] | None = None) -> list[Recorded]:
    """Every row of ``deferred_indexes`` (of ``tables``), with whether its load lives and its index exists."""
    if not available(connection):
        return []
    rows = connection.execute(text(
        f"""
        SELECT d.schema_name, d.name, d.table_name, d.definition, d.column_statistics, d.by_run, d.reason,
               d.deferred_at, {_LIVE} AS alive, i.indexrelid IS NOT NULL AS present, coalesce(i.indisvalid, false)
        FROM deferred_indexes d
        LEFT JOIN pg_class c ON c.relname = d.name AND c.relnamespace = to_regnamespace(d.schema_name)
        LEFT JOIN pg_index i ON i.indexrelid = c.oid
        WHERE (CAST(:tables AS text[]) IS NULL OR d.table_name = ANY(CAST(:tables AS text[])))
        ORDER BY d.table_name, d.name
        """), {"tables": None if tables is None else list(tables)}).all()
    return [Recorded(schema, name, table, definition, {str(k): int(v) for k, v in (stats or {}).items()},
                     by_run, reason, deferred_at, alive, present, valid)
            for schema, name, table, definition, stats, by_run, reason, deferred_at, alive, present, valid in rows]


def invalid_indexes(connection: Connection) -> list[tuple[str, str]]:
    """(table, index) of every INVALID index on a table of schema public (a failed concurrent build)."""
    return [(table, name) for table, name in connection.execute(text(
        "SELECT t.relname, ic.relname FROM pg_index i JOIN pg_class t ON t.oid = i.indrelid "
        "JOIN pg_class ic ON ic.oid = i.indexrelid WHERE t.relnamespace = 'public'::regnamespace "
        "AND NOT i.indisvalid ORDER BY 1, 2")).all()]


def owns_tables(connection: Connection, tables: Iterable[str]) -> bool:
    """Whether this role may drop and create indexes on ``tables`` (it owns them, or is a member of the owner)."""
    return bool(connection.execute(text(
        "SELECT coalesce(bool_and(pg_has_role(current_user, relowner, 'USAGE')), false) FROM pg_class "
        "WHERE oid = ANY(SELECT to_regclass('public.' || t) FROM unnest(CAST(:tables AS text[])) t)"),
        {"tables": list(tables)}).scalar_one())


# -- deferring ------------------------------------------------------------------------------------------------


def _lock_not_available(exc: DBAPIError) -> bool:
    return getattr(getattr(exc.orig, "diag", None), "sqlstate", None) == "55P03"


def _insufficient_privilege(exc: DBAPIError) -> bool:
    return getattr(getattr(exc.orig, "diag", None), "sqlstate", None) == "42501"


def defer(connection: Connection, tables: Mapping[str, int], *, run_id: uuid.UUID, actor: Actor, reason: str,
          incoming: Mapping[str, int]) -> list[IndexInfo]:
    """Drop the deferrable indexes of ``tables`` (table -> its rows now), recording each; return them
    (with the records taken over).

    Runs on the load's own connection: its session owns the records until it ends. Records of
    these tables left by a load that is gone are taken over (their indexes are missing already
    and are built with this load's). Records, drops and the audit rows commit together; the
    caller's transaction must be clear. A lock not granted within :data:`LOCK_TIMEOUT_MS` after
    :data:`LOCK_ATTEMPTS` tries, or a role that does not own the tables, defers nothing.
    """
    if not tables or not available(connection):
        return []
    names = sorted(tables)
    if not owns_tables(connection, names):
        connection.rollback()
        log.info("not deferring indexes: this role does not own %s", ", ".join(names))
        return []
    probed = {index.name for index in candidates(connection, names) if rebuilds_identically(connection, index)}
    connection.rollback()
    for attempt in range(1, LOCK_ATTEMPTS + 1):
        try:
            deferred = _defer_once(connection, names, probed, run_id=run_id, actor=actor, reason=reason,
                                   tables=tables, incoming=incoming)
        except DBAPIError as exc:
            connection.rollback()
            if _lock_not_available(exc) and attempt < LOCK_ATTEMPTS:
                time.sleep(0.2 * attempt)
                continue
            if _lock_not_available(exc) or _insufficient_privilege(exc):
                log.warning("indexes of %s stay in place during the load: %s", ", ".join(names),
                            "their tables stayed busy" if _lock_not_available(exc) else "no privilege to drop them")
                return []
            raise
        connection.commit()
        if deferred:
            log.info("deferred %d index(es) of %s until after the load", len(deferred), ", ".join(names))
        return deferred
    return []


def _defer_once(connection: Connection, names: list[str], probed: set[str], *, run_id: uuid.UUID, actor: Actor,
                reason: str, tables: Mapping[str, int], incoming: Mapping[str, int]) -> list[IndexInfo]:
    connection.exec_driver_sql(f"SET LOCAL lock_timeout = {LOCK_TIMEOUT_MS}")
    # Held by this session until it ends (or unlocks it): says the load lives. Taken once per session.
    connection.execute(text("SELECT pg_advisory_lock(:key, pg_backend_pid()) WHERE NOT EXISTS (SELECT 1 FROM "
                            "pg_locks WHERE locktype = 'advisory' AND classid = CAST(:key AS oid) "
                            "AND objid = pg_backend_pid()::oid AND objsubid = 2 AND pid = pg_backend_pid())"),
                       {"key": OWNER_LOCK})
    connection.exec_driver_sql("LOCK TABLE " + ", ".join(f"public.{name}" for name in names)
                               + " IN ACCESS EXCLUSIVE MODE")
    owner = {"run": run_id, "reason": reason[:100]}
    # Records of these tables whose load is gone: this load builds them with its own.
    adopted = [IndexInfo(schema, name, table, definition, {str(k): int(v) for k, v in (stats or {}).items()})
               for schema, name, table, definition, stats in connection.execute(text(
                   "UPDATE deferred_indexes d SET by_run = :run, reason = :reason, owner_pid = pg_backend_pid(), "
                   "owner_started = (SELECT backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()) "
                   f"WHERE d.table_name = ANY(:tables) AND NOT {_LIVE} "
                   "RETURNING d.schema_name, d.name, d.table_name, d.definition, d.column_statistics"),
                   {**owner, "tables": names}).all()]
    found = [index for index in candidates(connection, names) if index.name in probed]
    for index in found:
        connection.execute(text(
            "INSERT INTO deferred_indexes (schema_name, name, table_name, definition, column_statistics, by_run, "
            "reason, owner_pid, owner_started) VALUES (:schema, :name, :table, :definition, "
            "CAST(:statistics AS jsonb), :run, :reason, pg_backend_pid(), "
            "(SELECT backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()))"),
            {"schema": index.schema, "name": index.name, "table": index.table, "definition": index.definition,
             "statistics": _json(index.statistics), **owner})
        connection.exec_driver_sql(f"DROP INDEX {_qualified_name(connection, index.schema, index.name)}")
    for table in names:
        dropped = [index.name for index in found if index.table == table]
        taken = [index.name for index in adopted if index.table == table]
        if dropped or taken:
            audit.write(connection, actor, ENTITY_TYPE, run_id, "defer_indexes", None, {
                "table": table, "indexes": dropped, "taken_over": taken, "reason": reason,
                "incoming_rows": incoming.get(table, 0), "existing_rows": tables[table]})
    return found + adopted


def _json(values: Mapping[str, int]) -> str:
    return json.dumps(dict(values))


# -- building them again -----------------------------------------------------------------------------------------


def rebuild(engine: Engine, actor: Actor, *, run_id: uuid.UUID | None = None, tables: Sequence[str] | None = None,
            exclude_tables: Sequence[str] = (), progress: Callable[[str], None] | None = None) -> RebuildResult:
    """Build the recorded indexes that are ``run_id``'s or whose load is gone; delete their records.

    One transaction per index: the build and the deletion of its record commit together. A
    record whose load still runs (and is not ``run_id``), or that another process is building
    (its row is locked), is skipped. A build that fails (a lock not granted within
    :data:`BUILD_LOCK_TIMEOUT_MS`, no privilege) leaves its record for the next try.
    """
    result = RebuildResult()
    with engine.connect() as connection:
        if not available(connection):
            return result
        pending = [record for record in recorded(connection, tables)
                   if record.table not in exclude_tables and (not record.alive or record.by_run == run_id)]
        connection.rollback()
        for record in pending:
            try:
                built = _rebuild_one(connection, record, actor, run_id)
            except UnsafeDefinition as exc:
                connection.rollback()
                log.error("%s", exc)
                result.failed.append(record.name)
                continue
            except DBAPIError as exc:
                connection.rollback()
                sqlstate = getattr(getattr(exc.orig, "diag", None), "sqlstate", None)
                log.warning("could not build index %s of %s (SQLSTATE %s); its record stays for the next try",
                            record.name, record.table, sqlstate)
                result.failed.append(record.name)
                continue
            (result.built if built else result.skipped).append(record.name)
            if built and progress is not None:
                progress(record.name)
    if result.built:
        log.info("built %d deferred index(es): %s", len(result.built), ", ".join(result.built))
    return result


def _rebuild_one(connection: Connection, record: Recorded, actor: Actor, run_id: uuid.UUID | None) -> bool:
    started = time.perf_counter()
    connection.exec_driver_sql("SET LOCAL statement_timeout = 0")
    connection.exec_driver_sql(f"SET LOCAL lock_timeout = {BUILD_LOCK_TIMEOUT_MS}")
    connection.exec_driver_sql(f"SET LOCAL maintenance_work_mem = '{BUILD_MEMORY}'")
    row = connection.execute(text(
        f"SELECT d.definition, d.column_statistics, d.by_run, {_LIVE} AS alive FROM deferred_indexes d "
        "WHERE d.schema_name = :schema AND d.name = :name FOR UPDATE SKIP LOCKED"),
        {"schema": record.schema, "name": record.name}).first()
    if row is None or (row.alive and row.by_run != run_id):
        connection.rollback()  # built meanwhile, being built, or taken over by a running load
        return False
    # Checked before anything is dropped or run: that index's CREATE INDEX on its table, one statement.
    definition = checked_definition(connection, row.definition, record.schema, record.name, record.table)
    qualified = _qualified_name(connection, record.schema, record.name)
    current = connection.execute(text(
        "SELECT pg_get_indexdef(i.indexrelid), i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "WHERE c.relname = :name AND c.relnamespace = to_regnamespace(:schema)"),
        {"schema": record.schema, "name": record.name}).first()
    action = "built"
    if current is not None and current[1] and current[0] == definition:
        action = "already present"
    else:
        if current is not None:
            action = "rebuilt (was invalid)" if not current[1] else "rebuilt (was different)"
            connection.exec_driver_sql(f"DROP INDEX {qualified}")
        connection.exec_driver_sql(definition)  # as recorded (and checked), never through a parameter parser
    for column, target in sorted((row.column_statistics or {}).items(), key=lambda item: int(item[0])):
        connection.exec_driver_sql(f"ALTER INDEX {qualified} ALTER COLUMN {int(column)} SET STATISTICS {int(target)}")
    connection.execute(text("DELETE FROM deferred_indexes WHERE schema_name = :schema AND name = :name"),
                       {"schema": record.schema, "name": record.name})
    audit.write(connection, actor, ENTITY_TYPE, row.by_run, "rebuild_indexes", None, {
        "table": record.table, "index": record.name, "outcome": action,
        "seconds": round(time.perf_counter() - started, 2), "deferred_by": record.reason})
    connection.commit()
    return True


def orphans(connection: Connection) -> list[Recorded]:
    """Records whose load is gone: their indexes wait for someone to build them."""
    return [record for record in recorded(connection) if not record.alive]


def describe(records: Sequence[Recorded]) -> str:
    by_table: dict[str, list[str]] = {}
    for record in records:
        by_table.setdefault(record.table, []).append(record.name)
    return "; ".join(f"{table}: {', '.join(names)}" for table, names in by_table.items())


def run_id() -> uuid.UUID:
    """A load's id: the audit rows of its deferral and of the builds name it."""
    return new_id()



def reindex_invalid(engine: Engine, actor: Actor) -> list[str]:
    """``REINDEX`` every INVALID index of schema public that no record covers (a failed concurrent build)."""
    done: list[str] = []
    with engine.connect() as connection:
        recorded_names = {record.name for record in recorded(connection)}
        invalid = [(table, name) for table, name in invalid_indexes(connection) if name not in recorded_names]
        connection.rollback()
        for table, name in invalid:
            started = time.perf_counter()
            connection.exec_driver_sql("SET LOCAL statement_timeout = 0")
            connection.exec_driver_sql(f"SET LOCAL lock_timeout = {BUILD_LOCK_TIMEOUT_MS}")
            connection.exec_driver_sql(f"SET LOCAL maintenance_work_mem = '{BUILD_MEMORY}'")
            try:
                connection.exec_driver_sql(f"REINDEX INDEX {_qualified_name(connection, 'public', name)}")
                audit.write(connection, actor, ENTITY_TYPE, uuid.UUID(int=0), "rebuild_indexes", None, {
                    "table": table, "index": name, "outcome": "reindexed (was invalid)",
                    "seconds": round(time.perf_counter() - started, 2)})
                connection.commit()
            except DBAPIError as exc:
                connection.rollback()
                sqlstate = getattr(getattr(exc.orig, "diag", None), "sqlstate", None)
                log.warning("could not reindex %s of %s (SQLSTATE %s)", name, table, sqlstate)
                continue
            done.append(name)
    return done
