"""Per-entity facts in the seed's ``metadata`` table (one value per entity and key).

Most of these facts are the system's own (an SSN's blind index, external numbers,
break-the-glass grants, legal holds, a flag's resolution). A person's free-text
note about a member is the one kind shown as a "note": a key ``note:<UTC time>``.
:meth:`MetadataRepository.notes` lists only those, by that allow-list, so a new
kind of system fact never shows up among the notes.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import func, select

from carecli.data.models.platform import Metadata
from carecli.data.permissions import Permission
from carecli.data.records import MetadataEntry
from carecli.data.repositories.base import CLOCK_NOW, Repository

#: the key of a person's note is this prefix and the UTC time it was written (``note:20260102T030405.000006``)
NOTE_KEY_PREFIX = "note:"


def note_key(written_at: datetime) -> str:
    """The metadata key of a note written at ``written_at`` (UTC)."""
    return f"{NOTE_KEY_PREFIX}{written_at:%Y%m%dT%H%M%S.%f}"


class MetadataRepository(Repository[MetadataEntry]):
    table = Metadata.__table__
    record_type = MetadataEntry
    entity_type = "metadata"
    read_permission = Permission.MEMBERS_READ
    write_permission = Permission.MEMBERS_WRITE

    def for_entity(self, entity_type: str, entity_id: uuid.UUID) -> list[MetadataEntry]:
        """Every live fact about an entity, system facts included (not for showing as notes: see :meth:`notes`)."""
        self.require(self.read_permission, "read notes", entity_id)
        return self._list(self._select().where(self.table.c.entity_type == entity_type,
                                               self.table.c.entity_id == entity_id)
                          .order_by(self.table.c.metadata_key))

    def notes(self, entity_type: str, entity_id: uuid.UUID) -> list[MetadataEntry]:
        """The people's notes about an entity, oldest first: only ``note:`` keys, never a system fact."""
        self.require(self.read_permission, "read notes", entity_id)
        return self._list(self._select().where(self.table.c.entity_type == entity_type,
                                               self.table.c.entity_id == entity_id,
                                               func.starts_with(self.table.c.metadata_key, NOTE_KEY_PREFIX))
                          .order_by(self.table.c.metadata_key))

    def value(self, entity_type: str, entity_id: uuid.UUID, key: str) -> Any:
        """The live value of one fact about an entity (None when it is not set)."""
        self.require(self.read_permission, "read notes", entity_id)
        return self.connection.execute(
            select(self.table.c.metadata_value).where(
                self.table.c.entity_type == entity_type, self.table.c.entity_id == entity_id,
                self.table.c.metadata_key == key, self.table.c.deleted_at.is_(None))).scalar()

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
