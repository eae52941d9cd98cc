"""A member's plans: enroll, terminate, and one primary plan at a time."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import date, datetime
from typing import Any

from sqlalchemy import select

from carecli.data.models.platform import InsurancePlan, Member, MemberInsurancePlan
from carecli.data.permissions import Permission
from carecli.data.records import Enrollment
from carecli.data.repositories.base import Repository
from carecli.data.rules import enrollment_problems, utc_now
from carecli.data.validation import append_line, check_columns, check_range, check_reason
from carecli.errors import ValidationError


class EnrollmentRepository(Repository[Enrollment]):
    table = MemberInsurancePlan.__table__
    record_type = Enrollment
    entity_type = "member_insurance_plan"
    read_permission = Permission.MEMBERS_READ
    write_permission = Permission.ENROLLMENTS_WRITE
    protected = Repository.protected | {"member_id", "insurance_plan_id", "is_primary"}

    def validate(self, values: Mapping[str, Any], current: Mapping[str, Any] | None) -> None:
        check_range("coverage_percentage", values.get("coverage_percentage"), 0, 100)
        plan = None
        if values.get("insurance_plan_id") is not None:
            plans = InsurancePlan.__table__
            found = self.connection.execute(select(plans.c.effective_date, plans.c.expiration_date)
                                            .where(plans.c.id == values["insurance_plan_id"])).first()
            plan = dict(found._mapping) if found is not None else None
        problems = enrollment_problems(values, plan, changed=self.changed(values, current))
        if problems:
            raise ValidationError.of(problems)

    def for_member(self, member_id: uuid.UUID, *, include_deleted: bool = False) -> list[Enrollment]:
        self.require(self.read_permission, "read enrollments", member_id)
        return self._list(self._select(include_deleted).where(self.table.c.member_id == member_id)
                          .order_by(self.table.c.is_primary.desc(), self.table.c.enrollment_date.desc()))

    def _live_primary(self, member_id: uuid.UUID, *, lock: bool = False) -> Any:
        statement = select(self.table).where(
            self.table.c.member_id == member_id, self.table.c.is_primary.is_(True),
            self.table.c.status == "active", self.table.c.deleted_at.is_(None))
        if lock:
            statement = statement.with_for_update()
        return self.connection.execute(statement).first()

    def enroll(self, member_id: uuid.UUID, plan_id: uuid.UUID, enrollment_date: date, *,
               is_primary: bool = False, coverage_percentage: Any = None, notes: str | None = None) -> Enrollment:
        """Enroll a member in a plan. As primary, it replaces the current primary plan."""
        self.require(self.write_permission, "enroll members")
        self.require_live(Member.__table__, member_id, "member_id")
        self.require_live(InsurancePlan.__table__, plan_id, "insurance_plan_id")
        values: dict[str, Any] = {"enrollment_date": enrollment_date, "notes": notes}
        if coverage_percentage is not None:
            values["coverage_percentage"] = coverage_percentage
        duplicate = self.connection.execute(select(self.table.c.id).where(
            self.table.c.member_id == member_id, self.table.c.insurance_plan_id == plan_id,
            self.table.c.enrollment_date == enrollment_date)).first()
        if duplicate:
            raise ValidationError("enrollment_date", "unique",
                                  "the member is already enrolled in this plan from this date")
        generated = {"member_id": member_id, "insurance_plan_id": plan_id, "is_primary": is_primary}
        if is_primary:
            # Validate the new row before demoting the old primary: a refused enrollment
            # must leave nothing behind, even if the caller goes on and commits.
            row_values = {**values, **generated}
            check_columns(self.table, row_values, creating=True, generated=frozenset({"id"}))
            self.validate(row_values, None)
            self._demote_primary(member_id)
        return self._insert(values, operation="enroll members", generated=generated)

    def _demote_primary(self, member_id: uuid.UUID, keep: uuid.UUID | None = None) -> None:
        current = self._live_primary(member_id, lock=True)
        if current is not None and current.id != keep:
            self._update(current.id, None, {}, operation="change the primary plan", internal={"is_primary": False})

    def set_primary(self, enrollment_id: uuid.UUID, expected_updated_at: datetime | None) -> Enrollment:
        """Make an active enrollment the member's primary plan (the previous one stops being primary)."""
        self.require(self.write_permission, "change the primary plan", enrollment_id)
        row = self._fetch(enrollment_id, lock=True)
        if row.status != "active":
            raise ValidationError("is_primary", "active_only", "only an active enrollment can be primary")
        if expected_updated_at is not None and row.updated_at != expected_updated_at:
            return self._update(enrollment_id, expected_updated_at, {}, operation="change the primary plan")
        self._demote_primary(row.member_id, keep=enrollment_id)
        return self._update(enrollment_id, expected_updated_at, {}, operation="change the primary plan",
                            internal={"is_primary": True})

    def terminate(self, enrollment_id: uuid.UUID, expected_updated_at: datetime | None,
                  termination_date: date, reason: str | None = None) -> Enrollment:
        """End an enrollment on ``termination_date``, saying why (the reason goes into its notes).

        A date that has passed (today included) terminates it now, and a terminated plan is no
        longer primary. A date still to come keeps it active (and primary) until then, with the
        termination date set: the app shows it as "ends <date>", and the status follows the dates.
        """
        self.require(self.write_permission, "terminate enrollments", enrollment_id)
        text = check_reason(reason, required=False)
        current = self._fetch(enrollment_id)
        if current.status == "terminated":
            raise ValidationError("status", "already_terminated", "This enrollment has ended already.")
        today = utc_now().date()
        changes: dict[str, Any] = {"termination_date": termination_date}
        if text:
            changes["notes"] = append_line(current.notes, f"[{today}] Terminated as of {termination_date}: {text}")
        internal: dict[str, Any] = {}
        if termination_date <= today:
            changes["status"] = "terminated"
            internal["is_primary"] = False
        return self._update(enrollment_id, expected_updated_at, changes, operation="terminate enrollments",
                            internal=internal)

    def overlapping(self, member_id: uuid.UUID, start: date, end: date | None = None, *,
                    exclude: uuid.UUID | None = None) -> list[Enrollment]:
        """The member's live active enrollments whose dates overlap [start, end] (end None: open-ended)."""
        self.require(self.read_permission, "read enrollments", member_id)
        t = self.table
        conditions = [t.c.member_id == member_id, t.c.status == "active", t.c.deleted_at.is_(None),
                      (t.c.termination_date.is_(None)) | (t.c.termination_date >= start)]
        if end is not None:
            conditions.append(t.c.enrollment_date <= end)
        if exclude is not None:
            conditions.append(t.c.id != exclude)
        return self._list(select(t).where(*conditions).order_by(t.c.enrollment_date))

    def update(self, enrollment_id: uuid.UUID, expected_updated_at: datetime | None,
               changes: Mapping[str, Any]) -> Enrollment:
        return self._update(enrollment_id, expected_updated_at, changes, operation="edit enrollments")
