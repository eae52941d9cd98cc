"""What every importable kind shares: parsing a record, matching rows to what
exists, and planning the creates, updates and audit rows of a batch.

A kind turns a batch of parsed rows into a :class:`BatchPlan` using only
reads (``plan``); the loader's writer applies plans (COPY and set-based
UPDATE) in the batch's transaction. Splitting the two lets the next batch be
parsed, validated and encrypted while the database writes the previous one.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, ClassVar

from sqlalchemy import Connection, Table, any_, bindparam, select, tuple_
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.types import Date, DateTime, Numeric, String

from carecli.data import audit
from carecli.data.bulk import fields as f
from carecli.data.bulk.catalog import COLUMNS, ENTITY_TYPES, EXTERNAL_ID
from carecli.data.bulk.readers import Record, RecordProblem
from carecli.data.models.platform import Metadata
from carecli.data.permissions import Permission

if TYPE_CHECKING:
    from carecli.data.actor import Actor
    from carecli.data.bulk.blind_index import BlindIndex
    from carecli.data.crypto.fields import FieldCipher

METADATA = Metadata.__table__


@dataclass
class Parsed:
    """A record whose provided columns parsed; ``values`` holds only the columns the file gave."""

    row: int
    values: dict[str, Any]


@dataclass
class Update:
    table: str
    row: int
    id: uuid.UUID
    expected_updated_at: datetime | None
    changes: dict[str, Any]


@dataclass
class BatchPlan:
    """What one batch will write, and what it found."""

    inserts: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    updates: list[Update] = field(default_factory=list)
    metadata_upserts: list[dict[str, Any]] = field(default_factory=list)
    audit: list[dict[str, Any]] = field(default_factory=list)
    problems: list[RecordProblem] = field(default_factory=list)
    created: int = 0
    updated: int = 0
    unchanged: int = 0

    def insert(self, table: str, values: dict[str, Any]) -> None:
        self.inserts.setdefault(table, []).append(values)


class SeenKeys:
    """Natural keys already taken by an earlier row of this file, to refuse in-file duplicates.

    Kept in a temporary table on the planning connection, not in memory, so a
    file of any size runs in constant memory.
    """

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        connection.exec_driver_sql(
            "CREATE TEMP TABLE IF NOT EXISTS carecli_import_seen (key text PRIMARY KEY, row integer NOT NULL)")
        connection.exec_driver_sql("TRUNCATE carecli_import_seen")
        connection.commit()

    def claim(self, candidates: Sequence[tuple[int, Sequence[str]]]) -> dict[int, tuple[str, int]]:
        """Record each row's keys; returns row -> (key, earlier row) for rows that repeat an earlier key.

        ``candidates`` are in file order; a row that repeats a key claims none of its keys.
        """
        all_keys = [key for _, keys in candidates for key in keys]
        earlier: dict[str, int] = {}
        if all_keys:
            result = self.connection.exec_driver_sql(
                "SELECT key, row FROM carecli_import_seen WHERE key = ANY(%(keys)s)", {"keys": all_keys})
            earlier = {key: row for key, row in result}
        duplicates: dict[int, tuple[str, int]] = {}
        new_keys: list[str] = []
        new_rows: list[int] = []
        for row, keys in candidates:
            hit = next((key for key in keys if key in earlier), None)
            if hit is not None:
                duplicates[row] = (hit, earlier[hit])
                continue
            for key in keys:
                earlier[key] = row
                new_keys.append(key)
                new_rows.append(row)
        if new_keys:
            self.connection.exec_driver_sql(
                "INSERT INTO carecli_import_seen (key, row) SELECT * FROM unnest(%(keys)s::text[], %(rows)s::int[])",
                {"keys": new_keys, "rows": new_rows})
        self.connection.commit()
        return duplicates


@dataclass
class BatchContext:
    connection: Connection
    actor: Actor
    seen: SeenKeys
    cipher: Callable[[], FieldCipher]
    blind_index: Callable[[], BlindIndex | None]
    identity: Connection | None = None


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
    if python_type is dict:
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
                self.parsers[name] = f.text(100)
        self.table_columns = tuple(name for name in self.columns if name in self.table.c and name != "id")

    # -- parsing ---------------------------------------------------------------------------

    def parse(self, record: Record) -> Parsed | list[RecordProblem]:
        values: dict[str, Any] = {}
        problems: list[RecordProblem] = []
        for name, raw in record.values.items():
            if f.blank(raw):
                values[name] = None
                continue
            try:
                values[name] = self.parsers[name](raw)
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

    # -- planning ----------------------------------------------------------------------------

    def plan(self, ctx: BatchContext, rows: list[Parsed]) -> BatchPlan:
        raise NotImplementedError

    # Shared steps of planning.

    def new_values(self, parsed: Parsed, extra: Mapping[str, Any] = ()) -> dict[str, Any]:
        """A new row's table values: what the file gave, then the schema defaults."""
        values = {name: parsed.values[name] for name in self.table_columns if name in parsed.values}
        values.update(extra)
        for name, default in self.defaults.items():
            if values.get(name) is None and name not in parsed.values:
                values[name] = default
        return values

    def changes(self, parsed: Parsed, existing: Mapping[str, Any], extra: Mapping[str, Any] = ()) -> dict[str, Any]:
        """Table columns whose value the file changes (columns it leaves out stay as they are)."""
        wanted = {name: parsed.values[name] for name in self.table_columns if name in parsed.values}
        wanted.update(extra)
        return {name: value for name, value in wanted.items() if not same(existing.get(name), value)}

    def create(self, plan: BatchPlan, ctx: BatchContext, row_id: uuid.UUID, values: dict[str, Any],
               audit_extra: Mapping[str, Any] = ()) -> None:
        plan.insert(self.table.name, {"id": row_id, **values})
        plan.audit.append(audit.audit_row(ctx.actor, self.entity_type, row_id, "create", None,
                                          {**values, **audit_extra}))
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
        row_id = uuid.uuid4()
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
    target = tuple_(*(table.c[name] for name in columns)) if len(columns) > 1 else table.c[columns[0]]
    values = wanted if len(columns) > 1 else [key[0] for key in wanted]
    statement = select(table).where(target.in_(values))
    if lock:
        statement = statement.with_for_update()
    found: dict[tuple, dict[str, Any]] = {}
    for row in connection.execute(statement):
        mapping = dict(row._mapping)
        found[tuple(mapping[name] for name in columns)] = mapping
    return found


def metadata_owners(connection: Connection, entity_type: str, key: str, values: Iterable[str]) -> dict[str, uuid.UUID]:
    """Which live entity holds each metadata value (a natural key) of ``key``."""
    wanted = list({value for value in values if value is not None})
    if not wanted:
        return {}
    rows = connection.execute(select(METADATA.c.metadata_value, METADATA.c.entity_id).where(
        METADATA.c.entity_type == entity_type, METADATA.c.metadata_key == key, METADATA.c.deleted_at.is_(None),
        METADATA.c.metadata_value == any_(bindparam("values", wanted, type_=ARRAY(JSONB)))))
    return {value: entity_id for value, entity_id in rows}


def metadata_of(connection: Connection, entity_type: str, key: str, ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, Any]:
    """The live value of metadata ``key`` for each of ``ids`` that has one."""
    wanted = list(set(ids))
    if not wanted:
        return {}
    rows = connection.execute(select(METADATA.c.entity_id, METADATA.c.metadata_value).where(
        METADATA.c.entity_type == entity_type, METADATA.c.metadata_key == key, METADATA.c.deleted_at.is_(None),
        METADATA.c.entity_id.in_(wanted)))
    return {entity_id: value for entity_id, value in rows}


__all__ = ["EXTERNAL_ID", "BatchContext", "BatchPlan", "Kind", "Parsed", "SeenKeys", "Update", "fetch_by",
           "metadata_of", "metadata_owners", "same"]
