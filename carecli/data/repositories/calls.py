"""Call records: outreach, follow-up and support calls with their outcomes."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import func

from carecli.data.models.platform import CallRecord, Member, Specialist
from carecli.data.permissions import Permission
from carecli.data.records import Call
from carecli.data.repositories.base import Repository
from carecli.errors import ValidationError


def _call_day(values: Mapping[str, Any]) -> datetime | None:
    return values.get("started_at") or values.get("scheduled_at")


class CallRepository(Repository[Call]):
    table = CallRecord.__table__
    record_type = Call
    entity_type = "call_record"
    read_permission = Permission.MEMBERS_READ
    write_permission = Permission.CALLS_WRITE
    protected = Repository.protected | {"duration_seconds"}

    def validate(self, values: Mapping[str, Any], current: Mapping[str, Any] | None) -> None:
        started, ended = values.get("started_at"), values.get("ended_at")
        if started and ended and ended < started:
            raise ValidationError("ended_at", "date_order", "must not be before started_at")
        if ended and not started:
            raise ValidationError("started_at", "required", "is required when ended_at is given")
        follow_up, day = values.get("follow_up_date"), _call_day(values)
        if follow_up and day and follow_up < day.date():
            raise ValidationError("follow_up_date", "date_order", "must not be before the call")
        if values.get("follow_up_required") and not follow_up:
            raise ValidationError("follow_up_date", "required", "is required when a follow-up is required")
        if values.get("call_status") == "scheduled" and not values.get("scheduled_at"):
            raise ValidationError("scheduled_at", "required", "is required for a scheduled call")
        if values.get("call_status") == "completed" and not started:
            raise ValidationError("started_at", "required", "is required for a completed call")

    @staticmethod
    def _with_duration(values: Mapping[str, Any]) -> dict[str, Any]:
        started, ended = values.get("started_at"), values.get("ended_at")
        if started and ended and ended >= started:
            return {"duration_seconds": int((ended - started).total_seconds())}
        return {"duration_seconds": None}

    def for_member(self, member_id: uuid.UUID, *, limit: int = 200) -> list[Call]:
        self.require(self.read_permission, "read call history", member_id)
        # Newest first by when the call happened, or is to happen (a call logged after the fact
        # has no scheduled time).
        when = func.coalesce(self.table.c.started_at, self.table.c.scheduled_at)
        statement = (self._select().where(self.table.c.member_id == member_id)
                     .order_by(when.desc().nulls_last(), self.table.c.id).limit(limit))
        return self._list(statement)

    def create(self, values: Mapping[str, Any]) -> Call:
        """Log a call; the duration is computed from its start and end."""
        self.require(self.write_permission, "log calls")
        self.require_live(Member.__table__, values.get("member_id"), "member_id")
        self.require_live(Specialist.__table__, values.get("specialist_id"), "specialist_id")
        return self._insert(values, operation="log calls", generated=self._with_duration(values))

    def update(self, call_id: uuid.UUID, expected_updated_at: datetime | None, changes: Mapping[str, Any]) -> Call:
        self.require(self.write_permission, "edit calls", call_id)
        current = dict(self._fetch(call_id)._mapping)
        merged = {**current, **changes}
        return self._update(call_id, expected_updated_at, changes, operation="edit calls",
                            internal=self._with_duration(merged))
