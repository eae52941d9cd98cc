"""Streaming a kind out as CSV or JSON Lines, in the columns ``carecli import`` reads.

One ordered query per export, read through a server-side cursor a batch at a
time (``BATCH_ROWS``), so memory stays the same for a hundred rows or ten
million. Each batch is written and flushed before the next is fetched.

Permissions: ``export:run`` (narrowed by an API token's scopes), the kind's
read permission held by the role (the ``export:run`` scope covers it), and
``phi:reveal`` for SSN and date of birth. Members are PHI even without those
two columns (names, contact details), so every exported member gets a
``read`` audit row, committed in a transaction of its own *before* its batch
is handed to the writer: if the audit insert fails, nothing of that batch is
written (fail closed). Every run ends with one ``export`` summary row naming
the kind, the number of rows and the filtered columns (never the filter
values, which may be PHI).

CSV output is neutralised against formula ("CSV") injection unless asked
for raw: a cell a spreadsheet would run as a formula gets a leading ``'``
(see :func:`neutralise_cell`). JSON Lines is not a spreadsheet format and is
written as stored.

Filters (``--where``) are not SQL: ``column OP value`` with ``OP`` one of
``= != < <= > >=`` or ``~`` (starts with), on a real, unencrypted column of
the kind's table; the value is parsed by the column's type and bound as a
parameter.
"""

from __future__ import annotations

import contextlib
import csv
import json
import operator
import re
import uuid
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any, TextIO

from sqlalchemy import (
    ColumnElement,
    Engine,
    Insert,
    Select,
    Table,
    Text,
    and_,
    bindparam,
    func,
    insert,
    literal_column,
    null,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, aggregate_order_by
from sqlalchemy.sql import sqltypes

from carecli.data import audit
from carecli.data.bulk import fields
from carecli.data.bulk.catalog import (
    COLUMNS,
    ENTITY_TYPES,
    EXTERNAL_ID,
    EXTERNAL_MEMBER_NUMBER,
    PHI_COLUMNS,
    TABLES,
)
from carecli.data.ids import new_id
from carecli.data.models.identity import User
from carecli.data.models.platform import Metadata, PlatformBase, SpecialistInsurancePlan
from carecli.data.permissions import Permission
from carecli.data.repositories.base import CLOCK_NOW
from carecli.data.repositories.risk_flags import RESOLUTION_KEY
from carecli.data.unit_of_work import NIL, PlatformUnitOfWork
from carecli.errors import ConfigError, PermissionDenied

#: rows fetched, audited and written at a time
BATCH_ROWS = 5000
FORMATS = ("csv", "jsonl")
#: the audit log's entity type for export runs (their summary rows and refusals)
EXPORT_ENTITY = "export"
#: a cell starting with one of these is read as a formula by Excel, LibreOffice Calc and Google Sheets
#: (OWASP, "CSV Injection"): = + - @, tab (0x09), carriage return (0x0D) and line feed (0x0A)
FORMULA_TRIGGERS = frozenset("=+-@\t\r\n")
_PLAIN_NUMBER = re.compile(r"[+-][0-9]+(?:\.[0-9]+)?")

_METADATA = Metadata.__table__
_SPECIALIST_PLANS = SpecialistInsurancePlan.__table__
_USERS = User.__table__
#: the read permission each kind needs from the role, besides export:run
_READ_PERMISSION: dict[str, Permission | None] = {
    "members": Permission.MEMBERS_READ, "plans": None, "enrollments": Permission.MEMBERS_READ,
    "specialists": Permission.MEMBERS_READ, "calls": Permission.MEMBERS_READ, "flags": Permission.MEMBERS_READ,
}
#: member columns that hold PHI encrypted: never a filter, whatever they are called
_ENCRYPTED = frozenset({*PHI_COLUMNS, "encrypted_ssn", "encrypted_dob"})


def table_of(kind: str) -> Table:
    return PlatformBase.metadata.tables[TABLES[kind]]


def columns_for(kind: str, include_phi: bool) -> tuple[str, ...]:
    """The file's columns: the catalog's, less SSN and date of birth unless PHI is included."""
    if include_phi:
        return COLUMNS[kind]
    return tuple(name for name in COLUMNS[kind] if name not in PHI_COLUMNS)


def format_for(path: str, given: str | None) -> str:
    """``given``, else what the file name says (.csv, .jsonl, .ndjson), else CSV."""
    if given:
        return given
    lowered = path.lower()
    if lowered.endswith((".jsonl", ".ndjson")):
        return "jsonl"
    return "csv"


# -- filters ----------------------------------------------------------------------------

_OPERATORS: dict[str, Callable[[Any, Any], ColumnElement[bool]]] = {
    "=": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge,
}
_ORDERED = ("<", "<=", ">", ">=")
_EXPRESSION = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(<=|>=|!=|=|<|>|~)(.*)$", re.DOTALL)


@dataclass(frozen=True)
class Condition:
    """One ``--where``: a column, an operator and the typed value (None: IS NULL / IS NOT NULL)."""

    column: str
    op: str
    value: Any

    def clause(self, table: Table) -> ColumnElement[bool]:
        column = table.c[self.column]
        if self.value is None:
            return column.is_(None) if self.op == "=" else column.is_not(None)
        if self.op == "~":
            return column.startswith(self.value, autoescape=True)
        return _OPERATORS[self.op](column, self.value)


def _filterable(table: Table) -> list[str]:
    return [column.name for column in table.c
            if column.name != "deleted_at" and column.name not in _ENCRYPTED and _value_parser(column) is not None]


def _value_parser(column: Any) -> tuple[fields.Parser, tuple[str, ...]] | None:
    """How to read a filter value for ``column`` and which operators make sense; None: not filterable."""
    if isinstance(column.type, (sqltypes.JSON, sqltypes.LargeBinary)):
        return None
    try:
        kind = column.type.python_type
    except NotImplementedError:
        return None
    ordered = ("=", "!=", *_ORDERED)
    if kind is str:
        return fields.text(getattr(column.type, "length", None)), (*ordered, "~")
    if kind is uuid.UUID:
        return fields.parse_uuid, ordered
    if kind is datetime:
        return fields.parse_timestamp, ordered
    if kind is date:
        return fields.parse_date, ordered
    if kind is bool:
        return fields.parse_bool, ("=", "!=")
    if kind is int:
        return fields.integer(), ordered
    if kind is Decimal:
        return fields.decimal(column.type.precision, column.type.scale), ordered
    return None


def _unquote(raw: str) -> str:
    value = raw.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


def parse_where(kind: str, expressions: Sequence[str]) -> tuple[Condition, ...]:
    """``--where`` expressions as conditions on the kind's table, or a usage error.

    Errors name the column and what is expected, never the value given (it
    may be PHI: a name, an e-mail address).
    """
    table = table_of(kind)
    allowed = ", ".join(_filterable(table))
    conditions = []
    for expression in expressions:
        match = _EXPRESSION.match(expression)
        if match is None:
            raise ConfigError("--where must look like 'column OP value', OP one of = != < <= > >= ~ "
                              "(~ means 'starts with')", hint=f"columns of {kind}: {allowed}")
        name, op, raw = match.group(1).lower(), match.group(2), _unquote(match.group(3))
        if kind == "members" and name in _ENCRYPTED:
            raise ConfigError(f"--where {name}: exports cannot filter on SSN or date of birth (PHI held encrypted)",
                              hint=f"columns of {kind}: {allowed}")
        if name not in table.c or name == "deleted_at":
            raise ConfigError(f"--where {name}: {kind} have no such column", hint=f"columns of {kind}: {allowed}")
        column = table.c[name]
        reading = _value_parser(column)
        if reading is None:
            raise ConfigError(f"--where {name}: this column cannot be filtered on",
                              hint=f"columns of {kind}: {allowed}")
        parse, operators = reading
        if op not in operators:
            raise ConfigError(f"--where {name}: the operator {op} does not apply to this column",
                              hint=f"use one of {' '.join(operators)}")
        if raw == "":
            if op not in ("=", "!="):
                raise ConfigError(f"--where {name}: {op} needs a value",
                                  hint="an empty value with = or != means 'is empty' / 'is not empty'")
            conditions.append(Condition(name, op, None))
            continue
        try:
            value = parse(raw)
        except fields.FieldProblem as problem:
            raise ConfigError(f"--where {name}: the value {problem.message}") from None
        conditions.append(Condition(name, op, value))
    return tuple(conditions)


# -- permissions --------------------------------------------------------------------------


def authorize(uow: PlatformUnitOfWork, kind: str, include_phi: bool) -> None:
    """Raise :class:`PermissionDenied`, after auditing the refusal, unless the actor may run this export."""
    actor = uow.actor
    operation = f"export {kind}"

    def refuse(permission: Permission, what: str, *, scoped: bool, hint: str | None = None) -> None:
        uow.audit_denial(EXPORT_ENTITY, None, operation, permission)
        if scoped and str(permission) in actor.permissions:  # the role may; the API token's scopes do not
            raise PermissionDenied(f"this API token may not {what}: it lacks the '{permission}' scope",
                                   hint=f"create a token with --scopes {permission}" if hint is None else hint)
        raise PermissionDenied(f"{actor.role or 'this user'} may not {what}: it needs the '{permission}' permission",
                               hint=hint)

    if not actor.can(Permission.EXPORT_RUN):
        refuse(Permission.EXPORT_RUN, operation, scoped=True)
    needed = _READ_PERMISSION[kind]
    if needed is not None and str(needed) not in actor.permissions:
        refuse(needed, operation, scoped=False)
    if include_phi and not actor.can(Permission.PHI_REVEAL):
        refuse(Permission.PHI_REVEAL, "export SSN and date of birth", scoped=True,
               hint="export without --include-phi")


# -- queries -------------------------------------------------------------------------------


def _natural_key(entity_type: str, key: str, entity_id: ColumnElement[Any], name: str) -> tuple[Any, Any]:
    """A LEFT JOIN target and its ON clause for a live metadata value, and the value as text."""
    entry = _METADATA.alias(name)
    on = and_(entry.c.entity_type == entity_type, entry.c.entity_id == entity_id, entry.c.metadata_key == key,
              entry.c.deleted_at.is_(None))
    return (entry, on), entry.c.metadata_value.op("#>>", return_type=Text)(literal_column("'{}'"))


def _statement(kind: str, include_phi: bool) -> Select[Any]:
    """The kind's live rows, ordered by id, one result column per file column.

    Columns the database cannot fill are placeholders replaced batch by
    batch: ``ssn``/``dob`` hold the ciphertexts, ``user_email`` the user id.
    """
    table = table_of(kind)
    c = table.c
    joins: list[tuple[Any, Any]] = []
    values: dict[str, Any] = {}
    if kind == "members":
        join, values["external_member_number"] = _natural_key("member", EXTERNAL_MEMBER_NUMBER, c.id, "number")
        joins.append(join)
        values["ssn"], values["dob"] = c.encrypted_ssn, c.encrypted_dob
    elif kind == "enrollments":
        plans = table_of("plans")
        joins.append((plans, plans.c.id == c.insurance_plan_id))
        values["plan_code"] = plans.c.plan_code
        join, values["external_member_number"] = _natural_key("member", EXTERNAL_MEMBER_NUMBER, c.member_id,
                                                              "number")
        joins.append(join)
    elif kind == "specialists":
        links, plans = _SPECIALIST_PLANS, table_of("plans")
        values["user_email"] = c.user_id
        values["plan_codes"] = (
            select(func.string_agg(plans.c.plan_code,
                                   aggregate_order_by(literal_column("';'"), plans.c.plan_code.collate("C"))))
            .select_from(links.join(plans, plans.c.id == links.c.insurance_plan_id))
            .where(links.c.specialist_id == c.id, links.c.deleted_at.is_(None), plans.c.deleted_at.is_(None))
            .scalar_subquery()
        )
    elif kind in ("calls", "flags"):
        join, values["external_id"] = _natural_key(ENTITY_TYPES[kind], EXTERNAL_ID, c.id, "external")
        joins.append(join)
    if kind == "flags":
        # A flag's resolution is a live metadata row {"note", "by", "at"}; the note is free text, like the
        # flag's description (exported as it is; the export's summary audit row names no values).
        resolution = _METADATA.alias("resolution")
        joins.append((resolution, and_(resolution.c.entity_type == "risk_flag", resolution.c.entity_id == c.id,
                                       resolution.c.metadata_key == RESOLUTION_KEY,
                                       resolution.c.deleted_at.is_(None))))
        values["resolved"] = resolution.c.id.is_not(None)
        values["resolved_at"] = resolution.c.metadata_value.op("->>", return_type=Text)(literal_column("'at'"))
        values["resolution_note"] = resolution.c.metadata_value.op("->>", return_type=Text)(
            literal_column("'note'"))
    selected = []
    for name in columns_for(kind, include_phi):
        if name in values:
            selected.append(values[name].label(name))
        elif name in c:
            selected.append(c[name])
        else:  # a file-only reference the export leaves empty (the id beside it says it all)
            selected.append(null().label(name))
    source: Any = table
    for target, on in joins:
        source = source.outerjoin(target, on)
    return select(*selected).select_from(source).where(c.deleted_at.is_(None)).order_by(c.id)


def _audit_reads_statement() -> Insert:
    """Member ``read`` audit rows in one statement: the values of one :func:`audit.audit_row` for
    every id in ``entity_ids`` (row ids made by the server).

    One INSERT per batch instead of one per member: row by row, the audit
    inserts took most of an export's time.
    """
    table = audit.AUDIT
    members = (func.unnest(bindparam("entity_ids", type_=ARRAY(table.c.entity_id.type)))
               .table_valued("entity_id").render_derived("members"))
    same = ("user_id", "entity_type", "action", "old_values", "new_values", "ip_address", "user_agent")
    rows = select(func.gen_random_uuid(), members.c.entity_id,
                  *(bindparam(name, type_=table.c[name].type) for name in same), CLOCK_NOW)
    return insert(table).from_select(["id", "entity_id", *same, "created_at"], rows.select_from(members))


_AUDIT_READS = _audit_reads_statement()


def _emails(identity: Engine, user_ids: Collection[uuid.UUID]) -> dict[uuid.UUID, str]:
    """The e-mail address of each user id, in one query on the identity database."""
    if not user_ids:
        return {}
    with identity.connect() as connection:
        rows = connection.execute(select(_USERS.c.id, _USERS.c.email).where(_USERS.c.id.in_(list(user_ids))))
        return {row.id: row.email for row in rows}


def stream(uow: PlatformUnitOfWork, kind: str, *, conditions: Sequence[Condition] = (), include_phi: bool = False,
           identity: Engine | None = None, batch_size: int = BATCH_ROWS) -> Iterator[list[list[Any]]]:
    """Batches of rows (values in :func:`columns_for` order), fetched as they are consumed.

    Needs a fresh unit of work (its transaction is made read-only) and a
    caller that has checked :func:`authorize`. Member batches are audited
    (committed) before they are decrypted and yielded.
    """
    columns = columns_for(kind, include_phi)
    statement = _statement(kind, include_phi)
    if conditions:
        table = table_of(kind)
        statement = statement.where(*(condition.clause(table) for condition in conditions))
    cipher = uow.reader_cipher() if include_phi else None  # before anything is audited or written
    fields_read = ["contact", "dob", "ssn"] if include_phi else ["contact"]
    connection = uow.connection
    connection.execute(text("SET TRANSACTION READ ONLY"))
    result = connection.execute(statement.execution_options(yield_per=batch_size))  # a server-side cursor
    for partition in result.partitions():
        rows = [list(row) for row in partition]
        if kind == "members":
            with uow.audit_engine.begin() as audit_connection:
                audit_connection.execute(_AUDIT_READS, {
                    **audit.audit_row(uow.actor, "member", NIL, "read", None,
                                      {"purpose": "export", "fields": fields_read}),
                    "entity_ids": [row[0] for row in rows],
                })
        if cipher is not None:
            ssn_at, dob_at = columns.index("ssn"), columns.index("dob")
            for row in rows:
                member_id = row[0]
                if row[ssn_at] is not None:
                    row[ssn_at] = cipher.decrypt_ssn(bytes(row[ssn_at]), member_id).reveal()
                if row[dob_at] is not None:
                    row[dob_at] = cipher.decrypt_dob(bytes(row[dob_at]), member_id).reveal()
        if kind == "specialists":
            assert identity is not None, "exporting specialists needs the identity database for e-mail addresses"
            email_at = columns.index("user_email")
            emails = _emails(identity, {row[email_at] for row in rows if row[email_at] is not None})
            for row in rows:
                row[email_at] = emails.get(row[email_at])
        yield rows


# -- writing -------------------------------------------------------------------------------


def _csv_converter(column: Any) -> Callable[[Any], Any] | None:
    """How a result column's values become CSV text, when ``csv``'s own ``str()`` would not do."""
    if isinstance(column.type, sqltypes.JSON):
        return lambda value: json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    if isinstance(column.type, sqltypes.Boolean):
        return lambda value: "true" if value else "false"
    if isinstance(column.type, sqltypes.DateTime):
        return datetime.isoformat
    if isinstance(column.type, sqltypes.Numeric) and not isinstance(column.type, sqltypes.Float):
        return lambda value: format(value, "f")
    if isinstance(column.type, sqltypes.LargeBinary):  # decrypted PHI: an SSN string or a date
        return str
    return None  # text, ids, integers, dates: str() is already right; None stays an empty cell


def _json_default(value: Any) -> Any:
    if isinstance(value, (date, datetime)):
        return value.isoformat()
    if isinstance(value, Decimal):
        return format(value, "f")  # a string, to keep the exact amount
    return str(value)  # ids


def neutralise_cell(value: str) -> str:
    """``value`` with a leading ``'`` when a spreadsheet opening the CSV would run it as a formula.

    OWASP's rule: a cell starting with ``=``, ``+``, ``-``, ``@``, a tab, a
    carriage return or a line feed gets the quote, which spreadsheets read as
    "this cell is text". One exemption: a cell that is entirely a signed
    plain number (``-12.50``, ``+15035550100``) is left alone. A spreadsheet
    reads it as that number: it names no function, reference or command, so
    there is nothing to run; and quoting it would turn every negative amount
    into text and every phone number (stored as E.164, ``+1`` and ten digits)
    into one that ``carecli import`` refuses (``phone_format``), so a member
    export would no longer import back.

    The cell boundary is the ``csv`` module's: a value with a comma, a double
    quote or a line break is quoted whole (RFC 4180), so nothing inside a
    value can start a cell of its own.
    """
    if value[:1] in FORMULA_TRIGGERS and _PLAIN_NUMBER.fullmatch(value) is None:
        return "'" + value
    return value


class _CsvWriter:
    """CSV rows, cells neutralised (:func:`neutralise_cell`) unless ``raw``."""

    def __init__(self, out: TextIO, columns: Sequence[str], statement: Select[Any], *, raw: bool) -> None:
        self._writer = csv.writer(out)
        self._writer.writerow(columns)
        self._converters = [(i, convert) for i, column in enumerate(statement.selected_columns)
                            if (convert := _csv_converter(column)) is not None]
        self._raw = raw

    def write(self, rows: list[list[Any]]) -> None:
        for row in rows:
            for i, convert in self._converters:
                if row[i] is not None:
                    row[i] = convert(row[i])
            if not self._raw:
                # Every text cell, whatever its column: text typed by people (names, notes), e-mail
                # addresses from the identity database, the converted JSON. What is left unconverted
                # (ids, whole numbers, dates) cannot start with a trigger but as a plain number.
                for at, value in enumerate(row):
                    if value.__class__ is str and value[:1] in FORMULA_TRIGGERS:
                        row[at] = neutralise_cell(value)
        self._writer.writerows(rows)


class _JsonlWriter:
    def __init__(self, out: TextIO, columns: Sequence[str]) -> None:
        self._out = out
        self._columns = tuple(columns)
        self._encode = json.JSONEncoder(ensure_ascii=False, default=_json_default).encode

    def write(self, rows: list[list[Any]]) -> None:
        self._out.write("".join(self._encode(dict(zip(self._columns, row))) + "\n" for row in rows))


@dataclass(frozen=True)
class ExportResult:
    kind: str
    format: str
    rows: int
    include_phi: bool


def run_export(uow: PlatformUnitOfWork, kind: str, out: TextIO, fmt: str, *, conditions: Sequence[Condition] = (),
               include_phi: bool = False, identity: Engine | None = None, batch_size: int = BATCH_ROWS,
               raw: bool = False) -> ExportResult:
    """Check permissions, then write the kind to ``out`` batch by batch, flushing after each.

    CSV cells are neutralised against formula injection unless ``raw``
    (:func:`neutralise_cell`); JSON Lines is always written as stored.

    The summary audit row is committed at the end, also when the export
    fails or is interrupted part way (``completed`` says which).
    """
    if fmt not in FORMATS:
        raise ConfigError(f"unknown format {fmt!r}", hint="use csv or jsonl")
    if include_phi and kind != "members":
        raise ConfigError("--include-phi applies to members only (the only kind with SSN and date of birth)")
    authorize(uow, kind, include_phi)
    columns = columns_for(kind, include_phi)
    writer: _CsvWriter | _JsonlWriter
    if fmt == "csv":
        writer = _CsvWriter(out, columns, _statement(kind, include_phi), raw=raw)
    else:
        writer = _JsonlWriter(out, columns)
    rows = 0

    def summary(completed: bool) -> None:
        audit.write_committed(uow.audit_engine, uow.actor, EXPORT_ENTITY, new_id(), "export", {
            "kind": kind, "format": fmt, "rows": rows, "include_phi": include_phi,
            "where": [condition.column for condition in conditions], "completed": completed,
        })

    try:
        for batch in stream(uow, kind, conditions=conditions, include_phi=include_phi, identity=identity,
                            batch_size=batch_size):
            writer.write(batch)
            out.flush()
            rows += len(batch)
        out.flush()  # a header-only CSV too
    except BaseException:
        with contextlib.suppress(Exception):  # the error that stopped the export is the one to report
            summary(completed=False)
        raise
    summary(completed=True)
    return ExportResult(kind, fmt, rows, include_phi)
