"""Reading the audit log: by entity, by user, by time range (admins and auditors)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, NoReturn

from sqlalchemy import Select, select, tuple_

from carecli.data.models.platform import AuditLog
from carecli.data.permissions import Permission
from carecli.data.records import AuditEntry
from carecli.data.repositories.base import Repository
from carecli.errors import CarecliError

MAX_PAGE = 1000


class AuditLogRepository(Repository[AuditEntry]):
    """Read-only: audit rows are written by the other repositories and never changed."""

    table = AuditLog.__table__
    record_type = AuditEntry
    entity_type = "audit_log"
    read_permission = Permission.AUDIT_READ

    def _select(self, include_deleted: bool = False) -> Select[Any]:
        return select(self.table)  # audit rows are never soft-deleted: there is no deleted_at

    def delete(self, entity_id: uuid.UUID, expected_updated_at: datetime | None) -> NoReturn:
        raise CarecliError("the audit log is append-only: its rows cannot be deleted")

    def restore(self, entity_id: uuid.UUID) -> NoReturn:
        raise CarecliError("the audit log is append-only: its rows are never deleted, so never restored")

    def search(self, *, entity_type: str | None = None, entity_id: uuid.UUID | None = None,
               user_id: uuid.UUID | None = None, since: datetime | None = None, until: datetime | None = None,
               action: str | None = None, before_id: tuple[datetime, uuid.UUID] | None = None,
               limit: int = 100) -> list[AuditEntry]:
        """Newest first; page with ``before_id=(created_at, id)`` of the last row seen."""
        self.require(self.read_permission, "read the audit log")
        c = self.table.c
        statement = select(self.table)
        if entity_type is not None:
            statement = statement.where(c.entity_type == entity_type)
        if entity_id is not None:
            statement = statement.where(c.entity_id == entity_id)
        if user_id is not None:
            statement = statement.where(c.user_id == user_id)
        if action is not None:
            statement = statement.where(c.action == action)
        if since is not None:
            statement = statement.where(c.created_at >= since)
        if until is not None:
            statement = statement.where(c.created_at < until)
        if before_id is not None:
            statement = statement.where(tuple_(c.created_at, c.id) < tuple_(*before_id))
        statement = statement.order_by(c.created_at.desc(), c.id.desc()).limit(min(limit, MAX_PAGE))
        return self._list(statement)

    def for_entity(self, entity_type: str, entity_id: uuid.UUID, *, limit: int = 100) -> list[AuditEntry]:
        """Who accessed or changed this record."""
        return self.search(entity_type=entity_type, entity_id=entity_id, limit=limit)
