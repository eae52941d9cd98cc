"""Specialists and the plans they specialise in.

``specialists.user_id`` refers to identity's ``users(id)`` in another
database: no foreign key can hold it, so the repository checks it through
the unit of work's ``user_exists`` lookup before every write that sets it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import select

from carecli.data.models.platform import InsurancePlan, SpecialistInsurancePlan
from carecli.data.models.platform import Specialist as SpecialistTable
from carecli.data.permissions import Permission
from carecli.data.records import Specialist, SpecialistPlan
from carecli.data.repositories.base import Repository
from carecli.errors import CarecliError, ValidationError


class SpecialistRepository(Repository[Specialist]):
    table = SpecialistTable.__table__
    record_type = Specialist
    entity_type = "specialist"
    read_permission = Permission.MEMBERS_READ
    write_permission = Permission.SPECIALISTS_WRITE

    def validate(self, values: Mapping[str, Any], current: Mapping[str, Any] | None) -> None:
        user_id = values.get("user_id")
        if user_id is None or (current is not None and current.get("user_id") == user_id):
            return
        if self.uow.user_exists is None:
            raise CarecliError("cannot check specialists.user_id: this unit of work has no identity lookup")
        if not self.uow.user_exists(user_id):
            raise ValidationError("user_id", "reference", "no active user has this id in the identity database")

    def user_ids(self, specialist_ids: Iterable[uuid.UUID | None]) -> dict[uuid.UUID, uuid.UUID]:
        """Specialist id -> the identity user id behind it (deleted specialists too: history names them)."""
        ids = [sid for sid in specialist_ids if sid is not None]
        if not ids:
            return {}
        rows = self.connection.execute(select(self.table.c.id, self.table.c.user_id).where(self.table.c.id.in_(ids)))
        return {row.id: row.user_id for row in rows if row.user_id is not None}

    def for_user(self, user_id: uuid.UUID) -> Specialist | None:
        self.require(self.read_permission, "look up specialists", user_id)
        row = self.connection.execute(self._select().where(self.table.c.user_id == user_id)).first()
        return self.to_record(row) if row else None

    def list(self, *, include_deleted: bool = False) -> list[Specialist]:
        self.require(self.read_permission, "list specialists")
        return self._list(self._select(include_deleted).order_by(self.table.c.license_number, self.table.c.id))

    def create(self, values: Mapping[str, Any]) -> Specialist:
        return self._insert(values, operation="add specialists")

    def update(self, specialist_id: uuid.UUID, expected_updated_at: datetime | None,
               changes: Mapping[str, Any]) -> Specialist:
        return self._update(specialist_id, expected_updated_at, changes, operation="edit specialists")

    def deactivate_for_user(self, user_id: uuid.UUID) -> Specialist | None:
        """Keep the two databases consistent: a deactivated user's specialist goes inactive."""
        specialist = self.for_user(user_id)
        if specialist is None or specialist.is_active is False:
            return specialist
        return self._update(specialist.id, None, {"is_active": False}, operation="deactivate specialists")


class SpecialistPlanRepository(Repository[SpecialistPlan]):
    table = SpecialistInsurancePlan.__table__
    record_type = SpecialistPlan
    entity_type = "specialist_insurance_plan"
    read_permission = Permission.MEMBERS_READ
    write_permission = Permission.SPECIALISTS_WRITE

    def for_specialist(self, specialist_id: uuid.UUID) -> list[SpecialistPlan]:
        self.require(self.read_permission, "list specialists' plans")
        return self._list(self._select().where(self.table.c.specialist_id == specialist_id))

    def link(self, specialist_id: uuid.UUID, plan_id: uuid.UUID, notes: str | None = None) -> SpecialistPlan:
        """Record that a specialist covers a plan (restores a soft-deleted link rather than duplicating it)."""
        # Checked first: an existing link must not be handed back to someone who may not write links.
        self.require(self.write_permission, "link specialists to plans")
        existing = self.connection.execute(
            select(self.table).where(self.table.c.specialist_id == specialist_id,
                                     self.table.c.insurance_plan_id == plan_id)).first()
        if existing is not None:
            if existing.deleted_at is None:
                return self.to_record(existing)
            return self._update(existing.id, None, {"notes": notes}, operation="link specialists to plans",
                                action="restore", include_deleted=True, internal={"deleted_at": None})
        self.require_live(SpecialistTable.__table__, specialist_id, "specialist_id")
        self.require_live(InsurancePlan.__table__, plan_id, "insurance_plan_id")
        return self._insert({"specialist_id": specialist_id, "insurance_plan_id": plan_id, "notes": notes},
                            operation="link specialists to plans")
