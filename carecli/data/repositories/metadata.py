"""Per-entity facts in the seed's ``metadata`` table (one value per entity and key)."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select

from carecli.data.models.platform import Metadata
from carecli.data.permissions import Permission
from carecli.data.records import MetadataEntry
from carecli.data.repositories.base import CLOCK_NOW, Repository


class MetadataRepository(Repository[MetadataEntry]):
    table = Metadata.__table__
    record_type = MetadataEntry
    entity_type = "metadata"
    read_permission = Permission.MEMBERS_READ
    write_permission = Permission.MEMBERS_WRITE

    def for_entity(self, entity_type: str, entity_id: uuid.UUID) -> list[MetadataEntry]:
        self.require(self.read_permission, "read notes", entity_id)
        return self._list(self._select().where(self.table.c.entity_type == entity_type,
                                               self.table.c.entity_id == entity_id)
                          .order_by(self.table.c.metadata_key))

    def put(self, entity_type: str, entity_id: uuid.UUID, key: str, value: Any, *,
            permission: Permission | None = None, operation: str = "write notes") -> MetadataEntry:
        """Set ``key`` for an entity: creates it, updates it, or revives a deleted one.

        ``permission`` overrides ``members:write`` for facts about other entities
        (a risk flag's resolution needs ``flags:write``).
        """
        self.require(permission or self.write_permission, operation, entity_id)
        existing = self.find(entity_type, entity_id, key)
        if existing is None:
            return self._insert({"entity_type": entity_type, "entity_id": entity_id, "metadata_key": key,
                                 "metadata_value": value}, operation=operation, permission=permission)
        action = "restore" if existing.deleted_at is not None else "update"
        return self._update(existing.id, None, {"metadata_value": value}, operation=operation, action=action,
                            include_deleted=True, internal={"deleted_at": None}, permission=permission)

    def remove(self, entity_type: str, entity_id: uuid.UUID, key: str, *, value: Any = None,
               permission: Permission | None = None, operation: str = "remove notes") -> MetadataEntry | None:
        """Soft-delete ``key`` of an entity (None when it is not set); ``value`` replaces it first, for history."""
        self.require(permission or self.write_permission, operation, entity_id)
        existing = self.find(entity_type, entity_id, key)
        if existing is None or existing.deleted_at is not None:
            return None
        changes = {"metadata_value": value} if value is not None else {}
        return self._update(existing.id, None, changes, operation=operation, action="delete",
                            internal={"deleted_at": CLOCK_NOW}, permission=permission)

    def find(self, entity_type: str, entity_id: uuid.UUID, key: str) -> Any:
        return self.connection.execute(
            select(self.table).where(self.table.c.entity_type == entity_type, self.table.c.entity_id == entity_id,
                                     self.table.c.metadata_key == key).with_for_update()).first()
