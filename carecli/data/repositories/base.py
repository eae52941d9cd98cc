"""What every platform repository shares: permission checks, audited writes,
soft delete and restore, and optimistic concurrency on ``updated_at``."""

from __future__ import annotations

import dataclasses
import ipaddress
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from sqlalchemy import Row, Select, Table, func, insert, select, update
from sqlalchemy.sql import ClauseElement

from carecli.data import audit
from carecli.data.ids import new_id
from carecli.data.permissions import Permission
from carecli.data.validation import check_columns
from carecli.errors import ConflictError, NotFound, PermissionDenied, ValidationError

if TYPE_CHECKING:
    from carecli.data.unit_of_work import PlatformUnitOfWork

R = TypeVar("R")

# clock_timestamp(), not now(): two updates in one transaction must still get
# distinct updated_at values, or optimistic concurrency could not tell them apart.
CLOCK_NOW = func.clock_timestamp().op("AT TIME ZONE")("UTC")


class Repository(Generic[R]):
    """Base for one table. Subclasses set the class attributes and add their rules."""

    table: ClassVar[Table]
    record_type: ClassVar[type]
    entity_type: ClassVar[str]
    read_permission: ClassVar[Permission | None] = Permission.MEMBERS_READ
    write_permission: ClassVar[Permission | None]
    #: columns a caller may not set directly
    protected: ClassVar[frozenset[str]] = frozenset({"id", "created_at", "updated_at", "deleted_at"})

    def __init__(self, uow: PlatformUnitOfWork) -> None:
        self.uow = uow

    @property
    def connection(self):  # noqa: ANN201 - SQLAlchemy Connection
        return self.uow.connection

    # -- permissions --------------------------------------------------------

    def require(self, permission: Permission | None, operation: str, entity_id: uuid.UUID | None = None) -> None:
        """Raise :class:`PermissionDenied` (and audit the denial) unless the actor may."""
        if permission is None or self.uow.actor.can(permission):
            return
        self.uow.audit_denial(self.entity_type, entity_id, operation, permission)
        role = self.uow.actor.role or "this user"
        raise PermissionDenied(f"{role} may not {operation}: it needs the '{permission}' permission")

    # -- reading ------------------------------------------------------------

    def to_record(self, row: Row[Any]) -> R:
        mapping = row._mapping
        names = [f.name for f in dataclasses.fields(self.record_type)]
        return self.record_type(**{name: _plain(mapping[name]) for name in names})

    def _select(self, include_deleted: bool = False) -> Select[Any]:
        statement = select(self.table)
        if not include_deleted:
            statement = statement.where(self.table.c.deleted_at.is_(None))
        return statement

    def _fetch(self, entity_id: uuid.UUID, *, include_deleted: bool = False, lock: bool = False) -> Row[Any]:
        statement = self._select(include_deleted).where(self.table.c.id == entity_id)
        if lock:
            statement = statement.with_for_update()
        row = self.connection.execute(statement).first()
        if row is None:
            raise NotFound(f"{self.entity_type.replace('_', ' ')} {entity_id} does not exist or was deleted")
        return row

    def get(self, entity_id: uuid.UUID, *, include_deleted: bool = False) -> R:
        self.require(self.read_permission, f"read {self.entity_type}s", entity_id)
        return self.to_record(self._fetch(entity_id, include_deleted=include_deleted))

    def _list(self, statement: Select[Any]) -> list[R]:
        return [self.to_record(row) for row in self.connection.execute(statement)]

    def require_live(self, table: Table, entity_id: uuid.UUID | None, field: str) -> Row[Any]:
        """The referenced row, which must exist and not be soft-deleted."""
        row = None
        if entity_id is not None:
            row = self.connection.execute(
                select(table).where(table.c.id == entity_id, table.c.deleted_at.is_(None))).first()
        if row is None:
            raise ValidationError(field, "reference", f"no live {table.name} row has this id")
        return row

    # -- writing ------------------------------------------------------------

    def validate(self, values: Mapping[str, Any], current: Mapping[str, Any] | None) -> None:
        """Entity rules over the merged row (``current`` is None on create). Override."""

    @staticmethod
    def changed(values: Mapping[str, Any], current: Mapping[str, Any] | None) -> dict[str, Any] | None:
        """The fields of ``values`` that differ from ``current`` (None on create: everything is new).

        A server-side expression (CLOCK_NOW for deleted_at) counts as a change.
        """
        if current is None:
            return None
        return {name: value for name, value in values.items()
                if isinstance(value, ClauseElement) or isinstance(current.get(name), ClauseElement)
                or current.get(name) != value}

    def _check_caller_fields(self, values: Mapping[str, Any]) -> None:
        for name in values:
            if name in self.protected:
                raise ValidationError(name, "read_only", "is set by carecli and cannot be given")

    def _insert(self, values: Mapping[str, Any], *, operation: str, entity_id: uuid.UUID | None = None,
                generated: Mapping[str, Any] | None = None, permission: Permission | None = None) -> R:
        """Validate, insert with an app-generated id, audit 'create', return the record.

        ``permission`` overrides ``write_permission`` (a flag's resolution is a metadata row
        written with ``flags:write``).
        """
        self.require(permission or self.write_permission, operation)
        self._check_caller_fields(values)
        row_values = {**values, **(generated or {})}
        check_columns(self.table, row_values, creating=True, generated=frozenset({"id"}))
        self.validate(row_values, None)
        row_values["id"] = entity_id or new_id()
        row = self.connection.execute(insert(self.table).values(row_values).returning(self.table)).one()
        audit.write(self.uow.audit_connection, self.uow.audit_actor(self.entity_type, row.id, row._mapping),
                    self.entity_type, row.id, "create", None, _without(dict(row._mapping), ("id",)))
        self._announce(row)
        return self.to_record(row)

    def _update(self, entity_id: uuid.UUID, expected_updated_at: datetime | None, changes: Mapping[str, Any], *,
                operation: str, action: str = "update", include_deleted: bool = False,
                internal: Mapping[str, Any] | None = None, permission: Permission | None = None,
                audit_values: tuple[Mapping[str, Any], Mapping[str, Any]] | None = None) -> R:
        """Update if nobody changed the row since ``expected_updated_at``; audit the difference.

        ``internal`` holds changes the repository itself makes (not checked
        against ``protected``); ``permission`` overrides ``write_permission``;
        ``audit_values`` adds (old, new) facts to the audit row that are not
        columns (a flag's resolution state).
        """
        self.require(permission or self.write_permission, operation, entity_id)
        self._check_caller_fields(changes)
        current = self._fetch(entity_id, include_deleted=include_deleted, lock=True)
        current_values = dict(current._mapping)
        if expected_updated_at is not None and current_values["updated_at"] != expected_updated_at:
            changed_at = current_values["updated_at"]
            when = f" (at {changed_at:%Y-%m-%d %H:%M:%S} UTC)" if changed_at is not None else ""
            raise ConflictError(
                f"{self.entity_type.replace('_', ' ')} {entity_id} was changed by someone else since you "
                f"read it{when}", hint="reload it and apply your change again",
                changed_by=self._last_writer(entity_id), changed_at=changed_at)
        row_changes = {**changes, **(internal or {})}
        # SQL expressions (CLOCK_NOW for deleted_at) are computed by the server, not checked as values.
        check_columns(self.table, {name: value for name, value in row_changes.items()
                                   if not isinstance(value, ClauseElement)}, creating=False)
        self.validate({**current_values, **row_changes}, current_values)
        if action == "update" and all(not isinstance(value, ClauseElement) and current_values.get(name) == value
                                      for name, value in row_changes.items()):
            return self.to_record(current)  # nothing changes: no write, no audit row, updated_at kept
        if "updated_at" in self.table.c:
            row_changes["updated_at"] = CLOCK_NOW
        row = self.connection.execute(
            update(self.table).where(self.table.c.id == entity_id).values(row_changes).returning(self.table)
        ).one()
        old, new = audit.changed_fields(current_values, dict(row._mapping))
        if audit_values is not None:
            old, new = {**old, **audit_values[0]}, {**new, **audit_values[1]}
        audit.write(self.uow.audit_connection, self.uow.audit_actor(self.entity_type, entity_id, row._mapping),
                    self.entity_type, entity_id, action, old, new)
        self._announce(row)
        return self.to_record(row)

    def _last_writer(self, entity_id: uuid.UUID) -> uuid.UUID | None:
        """Who last changed a row, from its newest change audit entry (for conflict messages)."""
        if getattr(self.uow, "record_change", None) is None:
            return None  # identity rows: their audit log lives in the other database
        log = audit.AUDIT
        return self.connection.execute(
            select(log.c.user_id).where(log.c.entity_type == self.entity_type, log.c.entity_id == entity_id,
                                        log.c.action.not_in(("read", "deny")))
            .order_by(log.c.created_at.desc()).limit(1)).scalar_one_or_none()

    def _announce(self, row: Row[Any]) -> None:
        """Tell the unit of work a row was written, for the change notice sent at commit.

        Identity units of work reuse these repositories and announce nothing
        (live updates are about the platform's records), hence the lookup.
        """
        record_change = getattr(self.uow, "record_change", None)
        if record_change is not None:
            record_change(self.entity_type, row._mapping)

    def delete(self, entity_id: uuid.UUID, expected_updated_at: datetime | None) -> R:
        """Soft delete: set ``deleted_at``; the row stays for history and restore."""
        return self._update(entity_id, expected_updated_at, {}, operation=f"delete {self.entity_type}s",
                            action="delete", internal={"deleted_at": CLOCK_NOW})

    def restore(self, entity_id: uuid.UUID) -> R:
        """Bring a soft-deleted row back (admins: ``records:restore``)."""
        self.require(Permission.RECORDS_RESTORE, f"restore {self.entity_type}s", entity_id)
        row = self._fetch(entity_id, include_deleted=True)
        if row.deleted_at is None:
            return self.to_record(row)
        return self._update(entity_id, None, {}, operation=f"restore {self.entity_type}s", action="restore",
                            include_deleted=True, internal={"deleted_at": None},
                            permission=Permission.RECORDS_RESTORE)


def _plain(value: Any) -> Any:
    """Driver types records do not promise: INET comes back as an ipaddress object."""
    if isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return str(value)
    return value


def _without(values: dict[str, Any], names: Sequence[str]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if k not in names}
