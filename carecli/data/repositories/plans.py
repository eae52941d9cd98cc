"""The insurance plan catalog (not PHI: readable by every signed-in user)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import Row

from carecli.data.models.platform import InsurancePlan
from carecli.data.permissions import Permission
from carecli.data.records import Plan
from carecli.data.repositories.base import Repository
from carecli.data.validation import check_not_before, check_range
from carecli.errors import NotFound


class PlanRepository(Repository[Plan]):
    table = InsurancePlan.__table__
    record_type = Plan
    entity_type = "insurance_plan"
    read_permission = None
    write_permission = Permission.PLANS_WRITE

    def validate(self, values: Mapping[str, Any], current: Mapping[str, Any] | None) -> None:
        for name in ("premium_amount", "deductible_amount", "copay_amount"):
            check_range(name, values.get(name), 0, None)
        check_not_before("expiration_date", values.get("expiration_date"),
                         "effective_date", values.get("effective_date"))

    def list(self, *, include_inactive: bool = True, include_deleted: bool = False) -> list[Plan]:
        statement = self._select(include_deleted).order_by(self.table.c.plan_code)
        if not include_inactive:
            statement = statement.where(self.table.c.is_active.is_not(False))
        return self._list(statement)

    def by_code(self, plan_code: str) -> Plan:
        row: Row[Any] | None = self.connection.execute(
            self._select().where(self.table.c.plan_code == plan_code)).first()
        if row is None:
            raise NotFound(f"no insurance plan has the code {plan_code!r}")
        return self.to_record(row)

    def create(self, values: Mapping[str, Any]) -> Plan:
        return self._insert(values, operation="add insurance plans")

    def update(self, plan_id: uuid.UUID, expected_updated_at: datetime | None, changes: Mapping[str, Any]) -> Plan:
        return self._update(plan_id, expected_updated_at, changes, operation="edit insurance plans")
