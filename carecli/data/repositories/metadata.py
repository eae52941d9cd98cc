"""Per-entity facts in the seed's ``metadata`` table (one value per entity and key)."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select

from carecli.data.models.platform import Metadata
from carecli.data.permissions import Permission
from carecli.data.records import MetadataEntry
from carecli.data.repositories.base import Repository


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

    def put(self, entity_type: str, entity_id: uuid.UUID, key: str, value: Any) -> MetadataEntry:
        """Set ``key`` for an entity: creates it, updates it, or revives a deleted one."""
        self.require(self.write_permission, "write notes", entity_id)
        existing = self.connection.execute(
            select(self.table).where(self.table.c.entity_type == entity_type, self.table.c.entity_id == entity_id,
                                     self.table.c.metadata_key == key).with_for_update()).first()
        if existing is None:
            return self._insert({"entity_type": entity_type, "entity_id": entity_id, "metadata_key": key,
                                 "metadata_value": value}, operation="write notes")
        action = "restore" if existing.deleted_at is not None else "update"
        return self._update(existing.id, None, {"metadata_value": value}, operation="write notes", action=action,
                            include_deleted=True, internal={"deleted_at": None})
