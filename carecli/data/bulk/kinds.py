"""What every importable kind shares: parsing a record, matching rows to what
exists, and planning the creates, updates and audit rows of a batch.

A kind turns a batch of parsed rows into a :class:`BatchPlan` using only
reads (``plan``); the loader's writer applies plans (COPY and set-based
UPDATE) in the batch's transaction. Splitting the two lets the next batch be
parsed, validated and encrypted while the database writes the previous one.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, ClassVar

from sqlalchemy import (
    ColumnElement,
    Connection,
    Table,
    Text,
    TextClause,
    any_,
    bindparam,
    select,
    text,
    tuple_,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.exc import DBAPIError
from sqlalchemy.types import JSON, Date, DateTime, Numeric, String

from carecli.data import audit
from carecli.data.bulk import copytext
from carecli.data.bulk import fields as f
from carecli.data.bulk.catalog import COLUMNS, ENTITY_TYPES, EXTERNAL_ID
from carecli.data.bulk.readers import Record, RecordProblem
from carecli.data.ids import new_id
from carecli.data.models.platform import NATURAL_KEY_SQL, Metadata
from carecli.data.permissions import Permission

if TYPE_CHECKING:
    import psycopg
    from sqlalchemy.pool import PoolProxiedConnection

    from carecli.data.actor import Actor
    from carecli.data.bulk.blind_index import BlindIndex
    from carecli.data.crypto.fields import FieldCipher

METADATA = Metadata.__table__
_IDENTIFIER = re.compile(r"^[a-z_]{1,50}$")
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"})


@dataclass
class Parsed:
    """A record whose provided columns parsed; ``values`` holds only the columns the file gave."""

    row: int
    values: dict[str, Any]
    #: what the kind's :meth:`Kind.prepare_row` made of the row (in a worker process, or here): sealed PHI,
    #: keyed hashes, a preformatted COPY line; never plaintext PHI (it crosses a process boundary)
    prep: Any = None


@dataclass
class Update:
    table: str
    row: int
    id: uuid.UUID
    expected_updated_at: datetime | None
    changes: dict[str, Any]


@dataclass(frozen=True)
class Staged:
    """A bulk path for new rows: COPY into a temporary staging table, then set-based SQL.

    The statements run in the batch's transaction after the COPY and may use
    the parameters ``user_id``, ``ip_address`` and ``user_agent`` (the actor's,
    for audit rows written by SQL). For kinds that create rows by the
    hundred thousand, this keeps the per-row work in the database (which
    runs on its own core) instead of in Python.
    """

    table: str
    columns: tuple[str, ...]
    create: str
    statements: tuple[str, ...]

    @property
    def formatters(self) -> list[copytext.Formatter]:
        return copytext.formatters(self.columns)


#: in a state of ``BatchPlan.new_digests``: the id of the transaction that writes the batch
XID = "X"


@dataclass
class BatchPlan:
    """What one batch will write, and what it found."""

    #: each staged path's rows, as COPY text lines
    staged: dict[Staged, list[str]] = field(default_factory=dict)
    #: rows COPYed straight into (table, columns), as COPY text lines, before ``inserts``
    copies: dict[tuple[str, tuple[str, ...]], list[str]] = field(default_factory=dict)
    inserts: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    updates: list[Update] = field(default_factory=list)
    metadata_upserts: list[dict[str, Any]] = field(default_factory=list)
    audit: list[dict[str, Any]] = field(default_factory=list)
    problems: list[RecordProblem] = field(default_factory=list)
    #: (record id, source record digest) of the rows this batch loaded or found unchanged, recorded by
    #: ``digest_sql`` once the batch is written (:mod:`carecli.data.bulk.digests`)
    digests: dict[uuid.UUID, uuid.UUID] = field(default_factory=dict)
    digest_sql: str | None = None
    #: the same for records this batch creates: (digest, state), the state with :data:`XID` for the
    #: transaction id of the batch's transaction (the ``xmin`` of every row it inserts)
    new_digests: dict[uuid.UUID, tuple[uuid.UUID, str]] = field(default_factory=dict)
    #: no digest of this kind was recorded before the run: ``new_digests`` go in as plain inserts
    digests_first: bool = False
    created: int = 0
    updated: int = 0
    unchanged: int = 0

    def insert(self, table: str, values: dict[str, Any]) -> None:
        self.inserts.setdefault(table, []).append(values)

    def stage(self, staged: Staged, values: tuple[Any, ...]) -> None:
        self.stage_line(staged, copytext.line(staged.formatters, values))

    def copy_line(self, table: str, columns: tuple[str, ...], line: str) -> None:
        """Rows (one or more COPY text lines of ``columns``) to COPY into ``table``."""
        self.copies.setdefault((table, columns), []).append(line)

    def stage_line(self, staged: Staged, line: str) -> None:
        """A row already formatted as a COPY text line of ``staged.columns`` (:func:`copytext.line`)."""
        self.staged.setdefault(staged, []).append(line)


def driver_connection(pooled: PoolProxiedConnection) -> psycopg.Connection[Any]:
    """The psycopg connection under a pooled one (COPY needs it); an invalidated proxy has none."""
    driver = pooled.driver_connection
    if driver is None:
        raise ConnectionError("the database connection was invalidated")
    return driver


#: the session's buffers for temporary tables while an import claims keys (PostgreSQL's default is 8 MB; the
#: claims of 1M members are some 200 MB of table and index): taken as the pages are used, up to this much
CLAIM_TEMP_BUFFERS = "128MB"


def _more_temp_buffers(connection: Connection) -> None:
    """:data:`CLAIM_TEMP_BUFFERS` for this session, if it has not used a temporary table yet: PostgreSQL
    refuses the change after that (a pooled connection that claimed before keeps what it has)."""
    try:
        with connection.begin_nested():
            connection.exec_driver_sql(f"SET temp_buffers = '{CLAIM_TEMP_BUFFERS}'")
    except DBAPIError:
        pass


class SeenKeys:
    """Natural keys already taken by an earlier row of this file, to refuse in-file duplicates.

    Kept in a temporary table on the planning connection, not in memory, so a
    file of any size runs in constant memory.
    """

    def __init__(self, connection: Connection, *, aside: bool = False) -> None:
        self.connection = connection
        #: with ``aside``, :meth:`claim_soon` claims in a thread of its own (see there)
        self._aside = ThreadPoolExecutor(1, thread_name_prefix="carecli-import-claims") if aside else None
        _more_temp_buffers(connection)
        # Byte order ("C"): the keys are only ever compared for equality. A hash index, not a b-tree:
        # claims only ever probe for equality, and the keys of SSN blind indexes arrive in random order;
        # with the larger buffers, 1M members' claims took 6.5 s instead of 11.7 (2M keys, PG 15). Each key
        # goes in once (a row repeating a key claims none of its keys): no uniqueness to enforce.
        connection.exec_driver_sql("CREATE TEMP TABLE IF NOT EXISTS carecli_import_seen "
                                   "(key text COLLATE \"C\" NOT NULL, row integer NOT NULL)")
        connection.exec_driver_sql("CREATE INDEX IF NOT EXISTS carecli_import_seen_key "
                                   "ON carecli_import_seen USING hash (key)")
        connection.exec_driver_sql("CREATE TEMP TABLE IF NOT EXISTS carecli_import_batch "
                                   "(key text COLLATE \"C\", row integer)")
        connection.exec_driver_sql("TRUNCATE carecli_import_seen")
        connection.commit()

    def claim_soon(self, candidates: Sequence[tuple[int, Sequence[str]]]) -> Future[dict[int, tuple[str, int]]]:
        """:meth:`claim`, answered by the future: in the claims thread when there is one (a threaded import), so
        the planner does the batch's Python meanwhile (the claim is mostly the server's index work: a first
        load of 1M members waited 8.7 s for it, batch after batch); else here, before returning. The
        connection is the claim's until the answer is taken: the caller must not use it before."""
        if self._aside is not None:
            return self._aside.submit(self.claim, candidates)
        done: Future[dict[int, tuple[str, int]]] = Future()
        done.set_result(self.claim(candidates))
        return done

    def close(self) -> None:
        """End the claims thread (after the claim it runs, if any); once, however often called."""
        aside, self._aside = self._aside, None
        if aside is not None:
            aside.shutdown(wait=True)

    def claim(self, candidates: Sequence[tuple[int, Sequence[str]]]) -> dict[int, tuple[str, int]]:
        """Record each row's keys; returns row -> (key, earlier row) for rows that repeat an earlier key.

        ``candidates`` are in file order; a row that repeats a key claims none of its keys.
        """
        lines = "".join(f"{key}\t{row}\n" for row, keys in candidates for key in keys)
        if not lines:
            return {}
        count = sum(len(keys) for _, keys in candidates)
        if lines.count("\t") != count or lines.count("\n") != count or "\\" in lines or "\r" in lines:
            # A key holds a character COPY's text format escapes (a member number may, in principle): every
            # key escaped. Otherwise the line is the same, without translating each key (a fifth of the cost).
            lines = "".join(f"{key.translate(_COPY_ESCAPES)}\t{row}\n" for row, keys in candidates for key in keys)
        self.connection.exec_driver_sql("TRUNCATE carecli_import_batch")
        with driver_connection(self.connection.connection).cursor() as cursor:
            with cursor.copy("COPY carecli_import_batch (key, row) FROM STDIN") as copy:
                copy.write(lines.encode("utf-8"))
        # Probes of the key index, one per key of the batch. A join lets the planner, which has no
        # statistics for these temporary tables, hash the whole table of keys seen so far: a scan
        # per batch, so a file's cost would grow with the square of its length.
        earlier: dict[str, int] = dict(self.connection.exec_driver_sql(
            "SELECT key, row FROM carecli_import_seen WHERE key = ANY(ARRAY(SELECT key FROM carecli_import_batch))"
        ).all())
        duplicates: dict[int, tuple[str, int]] = {}
        for row, keys in candidates:
            hit = next((key for key in keys if key in earlier), None)
            if hit is not None:
                duplicates[row] = (hit, earlier[hit])
                continue
            for key in keys:
                earlier[key] = row
        self.connection.exec_driver_sql(
            "INSERT INTO carecli_import_seen (key, row) SELECT key, row FROM carecli_import_batch "
            "WHERE row <> ALL(%(rows)s::int[])", {"rows": list(duplicates)})
        self.connection.commit()
        return duplicates


class PrepareTools:
    """The keys :meth:`Kind.prepare_row` may use, each made on first use (``None``: the import has none),
    and the actor of the import (for audit rows)."""

    def __init__(self, cipher: Callable[[], Any], blind_index: Callable[[], BlindIndex | None],
                 actor_fields: tuple[str, str, str] = ("\\N", "\\N", "\\N"), *, in_worker: bool = False) -> None:
        #: the actor's user_id, ip_address and user_agent as COPY text fields (for audit rows made here)
        self.actor_fields = actor_fields
        #: in a worker process: what :meth:`Kind.prepare_row` sends back must hold no plaintext PHI; in the
        #: planning process it may keep a row's PHI until the planner knows what the row is for
        self.in_worker = in_worker
        self._cipher_of = cipher
        self._blind_of = blind_index
        self._cipher: Any = None
        self._blind: list[BlindIndex | None] = []

    def cipher(self) -> Any:
        """A cipher with ``encrypt_ssn``/``encrypt_dob`` under the primary data key."""
        if self._cipher is None:
            self._cipher = self._cipher_of()
        return self._cipher

    def blind_index(self) -> BlindIndex | None:
        if not self._blind:
            self._blind.append(self._blind_of())
        return self._blind[0]


@dataclass
class BatchContext:
    connection: Connection
    actor: Actor
    seen: SeenKeys
    cipher: Callable[[], FieldCipher]
    blind_index: Callable[[], BlindIndex | None]
    identity: Connection | None = None
    #: file row -> the digest of its source record, for rows that take the full path (kinds with digests)
    digests: dict[int, uuid.UUID] = field(default_factory=dict)
    #: natural keys (metadata keys of the kind's entities) no live row held when this run's first batch was
    #: planned, under the import's lock (:meth:`Kind.before_first_batch` finds them; see :func:`absent_keys`)
    absent_keys: frozenset[str] = frozenset()


def absent_keys(connection: Connection, entity_type: str, keys: Iterable[str]) -> frozenset[str]:
    """Those of ``keys`` (natural keys kept in metadata, written only by imports of this kind) that no live
    metadata row of ``entity_type`` holds: one probe of each key's partial unique index.

    Asked once, under the import's lock, before its first batch. While this run goes on, a lookup of such
    a key can find only rows this run wrote itself, for records of the file that come before: a row that
    matched one would repeat that record's key, and the in-file claim (:class:`SeenKeys`) refuses it
    either way, with the same row, rule and message; a lookup run before the earlier batch committed
    (as planning overlaps writing) found nothing already. So the lookups of those keys are skipped: a
    first load into an empty table (200,000 members: 174 lookups, 1.7 s of the server's time, waited for
    in turn) no longer asks for what cannot be there.
    """
    if not _IDENTIFIER.match(entity_type):
        raise ValueError("entity type must be a plain identifier")
    absent = set()
    for key in keys:
        if not _IDENTIFIER.match(key):
            raise ValueError("metadata key must be a plain identifier")
        # Written into the SQL, as in metadata_owners: the partial index's predicate must be provable.
        held = connection.exec_driver_sql(
            f"SELECT EXISTS (SELECT 1 FROM metadata WHERE entity_type = '{entity_type}' AND metadata_key = '{key}' "
            "AND deleted_at IS NULL)").scalar()
        if not held:
            absent.add(key)
    return frozenset(absent)


def column_parser(table: Table, name: str) -> f.Parser:
    """A parser for a plain table column, from its SQL type."""
    column = table.c[name]
    kind = column.type
    if isinstance(kind, String):
        return f.text(kind.length)
    if isinstance(kind, DateTime):
        return f.parse_timestamp
    if isinstance(kind, Date):
        return f.parse_date
    if isinstance(kind, Numeric):
        return f.decimal(kind.precision or 10, kind.scale or 2)
    python_type = kind.python_type
    if python_type is bool:
        return f.parse_bool
    if python_type is int:
        return f.integer(0, 2_147_483_647)
    if python_type is uuid.UUID:
        return f.parse_uuid
    if isinstance(kind, JSON):
        return f.parse_json_object
    return f.text(None)


def same(old: Any, new: Any) -> bool:
    if isinstance(old, Decimal) or isinstance(new, Decimal):
        return old is not None and new is not None and Decimal(old) == Decimal(new)
    if isinstance(old, datetime) and isinstance(new, date) and not isinstance(new, datetime):
        return False
    return old == new


class Kind:
    """Base for one importable kind. Subclasses set the class attributes and implement :meth:`plan`."""

    name: ClassVar[str]
    table: ClassVar[Table]
    permission: ClassVar[Permission]
    #: columns the CSV header must have
    required_columns: ClassVar[tuple[str, ...]] = ()
    #: table columns a new row must have a value for
    required_on_create: ClassVar[tuple[str, ...]] = ()
    #: values for table columns a new row's file leaves out (the column defaults of the schema)
    defaults: ClassVar[Mapping[str, Any]] = {}
    #: parsers for file columns that are not plain table columns, or need more than their type
    special_parsers: ClassVar[Mapping[str, f.Parser]] = {}

    def __init__(self) -> None:
        self.entity_type = ENTITY_TYPES[self.name]
        self.columns = COLUMNS[self.name]
        self.parsers: dict[str, f.Parser] = {}
        for name in self.columns:
            if name in self.special_parsers:
                self.parsers[name] = self.special_parsers[name]
            elif name in self.table.c:
                self.parsers[name] = column_parser(self.table, name)
            else:  # a reference or key column held as text
                self.parsers[name] = f.code(100)
        self.table_columns = tuple(name for name in self.columns if name in self.table.c and name != "id")

    # -- parsing ---------------------------------------------------------------------------

    def parse(self, record: Record) -> Parsed | list[RecordProblem]:
        values: dict[str, Any] = {}
        problems: list[RecordProblem] = []
        parsers = self.parsers
        for name, raw in record.values.items():
            if f.blank(raw):
                values[name] = None
                continue
            try:
                values[name] = parsers[name](raw)
            except f.FieldProblem as problem:
                problems.append(RecordProblem(record.row, name, problem.rule, problem.message))
        if not problems:
            for name, rule, message in self.check(values):
                problems.append(RecordProblem(record.row, name, rule, message))
        return problems or Parsed(record.row, values)

    def check(self, values: Mapping[str, Any]) -> Iterable[tuple[str, str, str]]:
        """Rules across fields of one row: (field, rule, message) for each broken one."""
        return ()

    def required_problems(self, parsed: Parsed, merged: Mapping[str, Any]) -> list[RecordProblem]:
        return [RecordProblem(parsed.row, name, "required", "is required")
                for name in self.required_on_create if merged.get(name) is None]

    @staticmethod
    def date_order(values: Mapping[str, Any], later: str, earlier: str) -> Iterable[tuple[str, str, str]]:
        if values.get(later) is not None and values.get(earlier) is not None and values[later] < values[earlier]:
            yield later, "date_order", f"must not be before {earlier}"

    #: rows a new record adds (about) to each table whose secondary indexes a large load may build after the
    #: data instead of during it (:mod:`carecli.data.deferred_indexes`); a kind not listing a table never defers it
    rows_per_record: ClassVar[Mapping[str, int]] = {"audit_logs": 1}

    # -- preparing (a worker process may run this) ------------------------------------------------

    #: whether :meth:`prepare_row` needs the keys (the data key and the blind-index key)
    uses_keys: ClassVar[bool] = False

    def prepare_row(self, parsed: Parsed, tools: PrepareTools) -> None:
        """Per-row work that needs no database, after parsing: hashing, encryption, preformatting.

        Runs in a worker process when the import has workers (or here, in order, when not);
        sets ``parsed.prep``. In a worker (``tools.in_worker``) it must leave no plaintext PHI
        object in ``parsed``: it is pickled back to the planning process. Nothing by default.
        """

    # -- planning ----------------------------------------------------------------------------

    def before_first_batch(self, ctx: BatchContext) -> None:
        """Once before the first batch of a run that writes (not a dry run)."""

    def plan(self, ctx: BatchContext, rows: list[Parsed]) -> BatchPlan:
        raise NotImplementedError

    #: whether a re-run may know this kind's rows unchanged by their source record's digest
    #: (:mod:`carecli.data.bulk.digests`): the kind then implements :meth:`known_unchanged`, plans the
    #: rows it gets from it, and fills ``BatchPlan.digests``
    keeps_digests: ClassVar[bool] = False

    def known_unchanged(self, connection: Connection, digests: Collection[str]) -> dict[str, Any]:
        """digest -> what :meth:`plan` needs of a row with that digest that is known unchanged (its ``prep``)."""
        return {}

    def unchanged_prep(self, found: Any, record: Record) -> Any:
        """The ``prep`` of ``record``, known unchanged as ``found`` (from :meth:`known_unchanged`)."""
        return found

    # Shared steps of planning.

    def new_values(self, parsed: Parsed, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """A new row's table values: what the file gave, then the schema defaults."""
        values = {name: parsed.values[name] for name in self.table_columns if name in parsed.values}
        values.update(extra or {})
        for name, default in self.defaults.items():
            if values.get(name) is None:  # left out, or blank: a new row takes the schema's default
                values[name] = default
        return values

    def changes(self, parsed: Parsed, existing: Mapping[str, Any],
                extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Table columns whose value the file changes (columns it leaves out stay as they are)."""
        wanted = {name: parsed.values[name] for name in self.table_columns if name in parsed.values}
        for name, default in self.defaults.items():
            if name in wanted and wanted[name] is None:  # blank means the default here too, so re-runs agree
                wanted[name] = default
        wanted.update(extra or {})
        return {name: value for name, value in wanted.items() if not same(existing.get(name), value)}

    def create(self, plan: BatchPlan, ctx: BatchContext, row_id: uuid.UUID, values: dict[str, Any],
               audit_extra: Mapping[str, Any] | None = None) -> None:
        plan.insert(self.table.name, {"id": row_id, **values})
        plan.audit.append(audit.audit_row(ctx.actor, self.entity_type, row_id, "create", None,
                                          {**values, **(audit_extra or {})}))
        plan.created += 1

    def update(self, plan: BatchPlan, ctx: BatchContext, parsed: Parsed, existing: Mapping[str, Any],
               changes: dict[str, Any], audit_extra: tuple[Mapping[str, Any], Mapping[str, Any]] = ({}, {})) -> None:
        if changes:
            plan.updates.append(Update(self.table.name, parsed.row, existing["id"], existing.get("updated_at"),
                                       changes))
        old = {name: existing.get(name) for name in changes}
        plan.audit.append(audit.audit_row(ctx.actor, self.entity_type, existing["id"], "update",
                                          {**old, **audit_extra[0]}, {**changes, **audit_extra[1]}))
        plan.updated += 1

    def metadata(self, plan: BatchPlan, ctx: BatchContext, entity_id: uuid.UUID, key: str, value: Any,
                 *, new: bool) -> None:
        """Set a metadata key of an entity (an insert when the entity is new, else an upsert); audited."""
        values = {"entity_type": self.entity_type, "entity_id": entity_id, "metadata_key": key,
                  "metadata_value": value}
        row_id = new_id()
        if new:
            plan.insert("metadata", {"id": row_id, **values})
        else:
            plan.metadata_upserts.append({"id": row_id, **values})
        plan.audit.append(audit.audit_row(ctx.actor, "metadata", row_id, "create" if new else "update", None,
                                          values))

    def reject(self, plan: BatchPlan, parsed: Parsed, name: str, rule: str, message: str) -> None:
        plan.problems.append(RecordProblem(parsed.row, name, rule, message))


def fetch_by(connection: Connection, table: Table, columns: Sequence[str], keys: Iterable[tuple],
             *, lock: bool = False) -> dict[tuple, dict[str, Any]]:
    """Existing rows (soft-deleted included) whose ``columns`` equal one of ``keys``."""
    wanted = list({key for key in keys if all(part is not None for part in key)})
    if not wanted:
        return {}
    condition: ColumnElement[bool]
    if len(columns) > 1:
        condition = tuple_(*(table.c[name] for name in columns)).in_(wanted)
    else:  # one array parameter, not thousands of bound values to compile and send
        column = table.c[columns[0]]
        condition = column == any_(bindparam(f"{columns[0]}_values", [key[0] for key in wanted],
                                             type_=ARRAY(column.type)))
    statement = select(table).where(condition)
    if lock:
        statement = statement.with_for_update()
    found: dict[tuple, dict[str, Any]] = {}
    for row in connection.execute(statement).all():  # one fetchall, not a fetchone per row
        mapping = dict(row._mapping)
        found[tuple(mapping[name] for name in columns)] = mapping
    return found


def metadata_owners(connection: Connection, entity_type: str, key: str,
                    values: Iterable[str | None]) -> dict[str, uuid.UUID]:
    """Which live entity holds each metadata value (a natural key) of ``key``."""
    wanted = list({value for value in values if value is not None})
    if not wanted:
        return {}
    rows = connection.execute(owners_statement(entity_type, key), {"values": wanted}).all()
    return {value: entity_id for value, entity_id in rows}


def owners_statement(entity_type: str, key: str) -> TextClause:
    """:func:`metadata_owners`' query (``:values``, a list of text): by the text the natural key's unique
    index holds (NATURAL_KEY_SQL, platform_0016), so that it reads that index.

    ``entity_type`` and ``key`` are written into the SQL, not bound: the natural-key indexes are partial on
    them, and a generic plan (which PostgreSQL switches to after a few executions) cannot prove a partial
    index's predicate from parameters; it would scan all of metadata for every batch.
    """
    if not (_IDENTIFIER.match(entity_type) and _IDENTIFIER.match(key)):
        raise ValueError("entity type and metadata key must be plain identifiers")
    return text(
        f"SELECT {NATURAL_KEY_SQL}, entity_id FROM metadata WHERE entity_type = '{entity_type}' "
        f"AND metadata_key = '{key}' AND deleted_at IS NULL AND {NATURAL_KEY_SQL} = ANY(:values)").bindparams(
        bindparam("values", type_=ARRAY(Text)))


def metadata_of(connection: Connection, entity_type: str, key: str, ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, Any]:
    """The live value of metadata ``key`` for each of ``ids`` that has one."""
    wanted = list(set(ids))
    if not wanted:
        return {}
    # A probe of metadata's unique key per id (a subquery each): as ``entity_id = ANY(...)`` the planner
    # scanned all of metadata for every batch (58 ms for 5,000 ids at 400,000 rows, growing with the table).
    rows = connection.execute(_METADATA_OF, {"entity_type": entity_type, "key": key, "entity_ids": wanted}).all()
    return {entity_id: value for entity_id, value in rows if value is not None}


_METADATA_OF = text(
    "SELECT w.id, (SELECT k.metadata_value FROM metadata k WHERE k.entity_type = :entity_type "
    "AND k.entity_id = w.id AND k.metadata_key = :key AND k.deleted_at IS NULL) "
    "FROM unnest(:entity_ids) AS w(id)").bindparams(
    bindparam("entity_ids", type_=ARRAY(METADATA.c.entity_id.type))).columns(
    id=METADATA.c.entity_id.type, metadata_value=METADATA.c.metadata_value.type)


__all__ = ["EXTERNAL_ID", "BatchContext", "BatchPlan", "Kind", "Parsed", "PrepareTools", "SeenKeys", "Update",
           "fetch_by", "metadata_of", "metadata_owners", "same"]


# -- References to other records (enrollments, specialists, calls, flags) ---------------------------
#
# A row names another record by its id column (``member_id``) and/or a natural-key column
# (``external_member_number``); both are resolved for the whole batch in a few queries.


@dataclass
class Ref:
    """What a row's reference columns resolved to.

    ``given`` is False when the row names no record (the columns are absent or blank);
    ``blanked`` is True when one of the columns is in the row but every one given is blank
    (the file clears the reference). ``problem`` is (field, rule, message) when the
    reference cannot be used.
    """

    given: bool = False
    id: uuid.UUID | None = None
    field: str | None = None
    deleted: bool = False
    blanked: bool = False
    row: Mapping[str, Any] | None = None
    problem: tuple[str, str, str] | None = None


def rows_by_id(connection: Connection, table: Table, ids: Iterable[uuid.UUID | None],
               columns: Sequence[str] = ("id", "deleted_at")) -> dict[uuid.UUID, dict[str, Any]]:
    """``columns`` of the rows (soft-deleted included) with one of ``ids``, in one query."""
    wanted = list({value for value in ids if value is not None})
    if not wanted:
        return {}
    rows = connection.execute(select(*(table.c[name] for name in columns)).where(table.c.id.in_(wanted)))
    return {row._mapping["id"]: dict(row._mapping) for row in rows}


def resolve_refs(rows: Sequence[Parsed], id_field: str, key_field: str | None,
                 found: Mapping[uuid.UUID, Mapping[str, Any]],
                 owners: Mapping[Any, uuid.UUID | tuple[str, str]], what: str) -> dict[int, Ref]:
    """Each row's reference by ``id_field`` and/or ``key_field``.

    ``found`` holds the referenced rows by id (``rows_by_id``, soft-deleted included);
    ``owners`` maps a natural-key value to the id it names, or to (rule, message) when it
    names none usably. Both columns given must name the same record (``identity_conflict``).
    """
    refs: dict[int, Ref] = {}
    for parsed in rows:
        values = parsed.values
        given_id = values.get(id_field)
        key = values.get(key_field) if key_field else None
        if given_id is None and key is None:
            refs[parsed.row] = Ref(blanked=id_field in values or (key_field is not None and key_field in values))
            continue
        problem: tuple[str, str, str] | None = None
        target = given_id
        if given_id is not None and given_id not in found:
            problem = (id_field, "reference", f"no {what} has this {id_field}")
        if key is not None and key_field is not None and problem is None:  # a key implies its field
            owner = owners.get(key)
            if owner is None or (not isinstance(owner, tuple) and owner not in found):
                problem = (key_field, "reference", f"no {what} has this {key_field}")
            elif isinstance(owner, tuple):
                problem = (key_field, owner[0], owner[1])
            elif given_id is not None and owner != given_id:
                problem = (key_field, "identity_conflict", f"{id_field} and {key_field} name different {what}s")
            else:
                target = owner
        row = found.get(target) if target is not None else None
        refs[parsed.row] = Ref(given=True, id=target if problem is None else None,
                               field=id_field if given_id is not None else key_field,
                               deleted=row is not None and row.get("deleted_at") is not None,
                               row=row, problem=problem)
    return refs


def member_refs(connection: Connection, rows: Sequence[Parsed]) -> dict[int, Ref]:
    """Rows' members by ``member_id`` and/or ``external_member_number`` (two queries per batch)."""
    from carecli.data.bulk.catalog import EXTERNAL_MEMBER_NUMBER
    from carecli.data.models.platform import Member

    owners = metadata_owners(connection, "member", EXTERNAL_MEMBER_NUMBER,
                             (p.values.get("external_member_number") for p in rows))
    found = rows_by_id(connection, Member.__table__,
                       [p.values.get("member_id") for p in rows] + list(owners.values()))
    return resolve_refs(rows, "member_id", "external_member_number", found, owners, "member")


def users_by_email(identity: Connection, emails: Iterable[str]) -> dict[str, list[dict[str, Any]]]:
    """Live identity users (id, is_active) for each lower-cased e-mail address, in one query.

    The identity transaction is ended at once: an import must not hold one open for its whole run.
    """
    from sqlalchemy import func

    from carecli.data.models.identity import User

    users = User.__table__
    wanted = list({email.strip().lower() for email in emails if email})
    if not wanted:
        return {}
    try:
        rows = identity.execute(select(users.c.id, func.lower(users.c.email).label("email"), users.c.is_active)
                                .where(func.lower(users.c.email).in_(wanted), users.c.deleted_at.is_(None)))
        found: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            found.setdefault(row.email, []).append({"id": row.id, "is_active": row.is_active is not False})
        return found
    finally:
        identity.rollback()


#: the rule for a row that names a user by e-mail address when the import has no identity database
IDENTITY_UNAVAILABLE = ("identity_unavailable",
                        "needs the identity database to look up e-mail addresses (give the specialist's id instead)")


def specialist_refs(ctx: BatchContext, rows: Sequence[Parsed], id_field: str = "specialist_id",
                    email_field: str = "specialist_email") -> dict[int, Ref]:
    """Rows' specialists by ``id_field`` and/or ``email_field`` (their user's e-mail address):
    one identity query and two platform queries per batch."""
    from carecli.data.models.platform import Specialist

    table = Specialist.__table__
    emails = {p.values[email_field] for p in rows if p.values.get(email_field) is not None}
    owners: dict[Any, uuid.UUID | tuple[str, str]] = {}
    if emails and ctx.identity is None:
        owners = {email: IDENTITY_UNAVAILABLE for email in emails}
    elif emails and ctx.identity is not None:
        users = users_by_email(ctx.identity, emails)
        user_ids = [user["id"] for found in users.values() for user in found]
        by_user: dict[uuid.UUID, list[uuid.UUID]] = {}
        if user_ids:
            for row in ctx.connection.execute(select(table.c.id, table.c.user_id).where(
                    table.c.user_id.in_(user_ids), table.c.deleted_at.is_(None))):
                by_user.setdefault(row.user_id, []).append(row.id)
        for email in emails:
            found = users.get(email.strip().lower(), [])
            if not found:
                owners[email] = ("reference", "no user has this e-mail address")
                continue
            if len(found) > 1:
                owners[email] = ("ambiguous", "more than one user has this e-mail address; give the specialist's id")
                continue
            specialists = by_user.get(found[0]["id"], [])
            if not specialists:
                owners[email] = ("reference", "the user with this e-mail address is not a live specialist")
            elif len(specialists) > 1:
                owners[email] = ("ambiguous", "more than one specialist belongs to this user; give the specialist's id")
            else:
                owners[email] = specialists[0]
    found_rows = rows_by_id(ctx.connection, table,
                            [p.values.get(id_field) for p in rows]
                            + [owner for owner in owners.values() if not isinstance(owner, tuple)],
                            ("id", "user_id", "deleted_at"))
    return resolve_refs(rows, id_field, email_field, found_rows, owners, "specialist")


def database_now(connection: Connection) -> datetime:
    """The database's clock (naive UTC), for timestamps the import sets itself (``deleted_at``)."""
    return connection.exec_driver_sql("SELECT clock_timestamp() AT TIME ZONE 'UTC'").scalar_one()


def actor_fields(actor: Actor) -> tuple[str, str, str]:
    """An actor's user_id, ip_address and user_agent as COPY text fields."""
    return (copytext.field(actor.user_id), copytext.field(actor.ip_address), copytext.field(actor.user_agent))
