"""Risk flags raised from a call; member and specialist come from the call itself."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from carecli.data.models.platform import CallRecord
from carecli.data.models.platform import RiskFlag as RiskFlagTable
from carecli.data.permissions import Permission
from carecli.data.records import RiskFlag
from carecli.data.repositories.base import Repository


class RiskFlagRepository(Repository[RiskFlag]):
    table = RiskFlagTable.__table__
    record_type = RiskFlag
    entity_type = "risk_flag"
    read_permission = Permission.MEMBERS_READ
    write_permission = Permission.FLAGS_WRITE
    protected = Repository.protected | {"member_id", "specialist_id", "call_record_id"}

    def raise_from_call(self, call_id: uuid.UUID, *, risk_type: str, severity: str, description: str) -> RiskFlag:
        """Flag a risk found on a call; the member and specialist are the call's."""
        self.require(self.write_permission, "raise risk flags")
        call = self.require_live(CallRecord.__table__, call_id, "call_record_id")
        return self._insert(
            {"risk_type": risk_type, "severity": severity, "description": description},
            operation="raise risk flags",
            generated={"call_record_id": call.id, "member_id": call.member_id, "specialist_id": call.specialist_id},
        )

    def for_member(self, member_id: uuid.UUID) -> list[RiskFlag]:
        self.require(self.read_permission, "read risk flags", member_id)
        return self._list(self._select().where(self.table.c.member_id == member_id)
                          .order_by(self.table.c.created_at.desc(), self.table.c.id))

    def update(self, flag_id: uuid.UUID, expected_updated_at: datetime | None,
               changes: Mapping[str, Any]) -> RiskFlag:
        return self._update(flag_id, expected_updated_at, changes, operation="edit risk flags")
