"""A specialist's worklist: today's calls, follow-ups, urgent flags, and the members of their plans.

Read-only queries over several tables, each bounded (``LIMIT``) and served
by an index: the specialist's calls by ``(specialist_id, scheduled_at)``,
follow-ups by the partial follow-up index, flags by the partial urgent
index, plan members by ``(insurance_plan_id, member_id)``.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import and_, exists, func, select, true

from carecli.data.models.platform import (
    CallRecord,
    InsurancePlan,
    Member,
    MemberInsurancePlan,
    Metadata,
    RiskFlag,
    SpecialistInsurancePlan,
)
from carecli.data.models.platform import Specialist as SpecialistTable
from carecli.data.permissions import Permission
from carecli.data.records import Specialist
from carecli.data.repositories.base import Repository
from carecli.data.repositories.risk_flags import RESOLUTION_KEY

WorkKind = Literal["call_today", "overdue", "follow_up", "urgent_flag", "plan_member"]
UPCOMING_DAYS = 14
SECTION_LIMIT = 100
HANDLED_STATUSES = ("scheduled", "completed")


@dataclass(frozen=True)
class WorkItem:
    """One worklist row: what it is, whose, when, and the ids to open it."""

    kind: WorkKind
    member_id: uuid.UUID
    member_name: str
    when: datetime | date | None
    detail: str
    call_id: uuid.UUID | None = None
    flag_id: uuid.UUID | None = None

    def __repr__(self) -> str:  # the member's name is PHI
        return f"WorkItem(kind={self.kind!r}, member_id={self.member_id})"


@dataclass(frozen=True)
class Worklist:
    specialist: Specialist | None
    calls_today: list[WorkItem]
    overdue: list[WorkItem]
    upcoming: list[WorkItem]
    urgent_flags: list[WorkItem]
    plan_members: list[WorkItem]
    plan_names: list[str]

    @property
    def sections(self) -> list[tuple[str, list[WorkItem]]]:
        return [("Calls today", self.calls_today), ("Overdue follow-ups", self.overdue),
                ("Upcoming follow-ups", self.upcoming), ("Urgent risk flags", self.urgent_flags),
                ("Members in my plans", self.plan_members)]


def _name(row: Any) -> str:
    return f"{row.last_name}, {row.first_name}"


class WorklistRepository(Repository[WorkItem]):
    table = CallRecord.__table__
    record_type = WorkItem
    entity_type = "worklist"
    read_permission = Permission.MEMBERS_READ

    def specialist_for_user(self, user_id: uuid.UUID | None) -> Specialist | None:
        """The live specialist record of a user (None for users who are not specialists)."""
        if user_id is None:
            return None
        table = SpecialistTable.__table__
        row = self.connection.execute(select(table).where(
            table.c.user_id == user_id, table.c.deleted_at.is_(None)).order_by(table.c.created_at)).first()
        if row is None:
            return None
        from carecli.data.repositories.specialists import SpecialistRepository

        return SpecialistRepository(self.uow).to_record(row)

    def build(self, today: date, day_start: datetime, day_end: datetime) -> Worklist:
        """The acting user's worklist; ``day_start``/``day_end`` bound their local today in UTC."""
        self.require(self.read_permission, "read the worklist")
        specialist = self.specialist_for_user(self.uow.actor.user_id)
        if specialist is None:
            return Worklist(None, [], [], [], [], [], [])
        sid = specialist.id
        return Worklist(
            specialist=specialist,
            calls_today=self._calls_today(sid, day_start, day_end),
            overdue=self._follow_ups(sid, None, today - timedelta(days=1), "overdue"),
            upcoming=self._follow_ups(sid, today, today + timedelta(days=UPCOMING_DAYS), "follow_up"),
            urgent_flags=self._urgent_flags(sid),
            plan_members=self._plan_members(sid, today),
            plan_names=self._plan_names(sid),
        )

    def _calls_today(self, sid: uuid.UUID, start: datetime, end: datetime) -> list[WorkItem]:
        c, m = CallRecord.__table__.c, Member.__table__.c
        rows = self.connection.execute(
            select(c.id, c.member_id, c.scheduled_at, c.call_type, c.call_status, m.first_name, m.last_name)
            .join(Member.__table__, m.id == c.member_id)
            .where(c.specialist_id == sid, c.scheduled_at >= start, c.scheduled_at < end,
                   c.call_status == "scheduled", c.deleted_at.is_(None), m.deleted_at.is_(None))
            .order_by(c.scheduled_at, c.id).limit(SECTION_LIMIT))
        return [WorkItem("call_today", r.member_id, _name(r), r.scheduled_at,
                         f"{r.call_type.replace('_', ' ')} · {r.call_status.replace('_', ' ')}", call_id=r.id)
                for r in rows]

    def _follow_ups(self, sid: uuid.UUID, first: date | None, last: date, kind: WorkKind) -> list[WorkItem]:
        """Follow-ups due in [first, last] that no later call has taken care of yet."""
        calls = CallRecord.__table__
        c, m = calls.c, Member.__table__.c
        later = calls.alias()
        when = func.coalesce(c.started_at, c.scheduled_at)
        handled = exists().where(
            later.c.member_id == c.member_id, later.c.id != c.id, later.c.deleted_at.is_(None),
            later.c.call_status.in_(HANDLED_STATUSES),
            func.coalesce(later.c.started_at, later.c.scheduled_at) > when)
        conditions = [c.specialist_id == sid, c.follow_up_required.is_(True), c.deleted_at.is_(None),
                      c.follow_up_date <= last, m.deleted_at.is_(None), ~handled]
        if first is not None:
            conditions.append(c.follow_up_date >= first)
        rows = self.connection.execute(
            select(c.id, c.member_id, c.follow_up_date, c.outcome, m.first_name, m.last_name)
            .join(Member.__table__, m.id == c.member_id).where(and_(*conditions))
            .order_by(c.follow_up_date, c.id).limit(SECTION_LIMIT))
        return [WorkItem(kind, r.member_id, _name(r), r.follow_up_date, r.outcome or "follow-up due", call_id=r.id)
                for r in rows]

    def _urgent_flags(self, sid: uuid.UUID) -> list[WorkItem]:
        """Open high and critical flags (not deleted, not resolved) on members this specialist has called."""
        f, m, c = RiskFlag.__table__.c, Member.__table__.c, CallRecord.__table__.c
        md = Metadata.__table__.c
        my_members = select(c.member_id).where(c.specialist_id == sid, c.deleted_at.is_(None))
        resolved = exists().where(md.entity_type == "risk_flag", md.entity_id == f.id,
                                  md.metadata_key == RESOLUTION_KEY, md.deleted_at.is_(None))
        rows = self.connection.execute(
            select(f.id, f.member_id, f.call_record_id, f.created_at, f.severity, f.risk_type,
                   m.first_name, m.last_name)
            .join(Member.__table__, m.id == f.member_id)
            .where(f.severity.in_(("high", "critical")), f.deleted_at.is_(None), m.deleted_at.is_(None),
                   f.member_id.in_(my_members), ~resolved)
            .order_by((f.severity == "critical").desc(), f.created_at.desc(), f.id).limit(SECTION_LIMIT))
        return [WorkItem("urgent_flag", r.member_id, _name(r), r.created_at,
                         f"{r.severity} · {r.risk_type.replace('_', ' ')}", call_id=r.call_record_id, flag_id=r.id)
                for r in rows]

    def _plan_members(self, sid: uuid.UUID, today: date) -> list[WorkItem]:
        """The newest live enrollments in the specialist's plans.

        The newest SECTION_LIMIT of *each* plan come from the per-plan index
        (a LATERAL top-N), then the newest of those overall: no sort of every
        active enrollment of the plans (which on 1M members is ~140k rows).
        """
        enrollments, sp_table = MemberInsurancePlan.__table__, SpecialistInsurancePlan.__table__
        e, m, p, sp = enrollments.c, Member.__table__.c, InsurancePlan.__table__.c, sp_table.c
        newest = (select(e.id, e.member_id, e.enrollment_date, e.insurance_plan_id)
                  .join(Member.__table__, m.id == e.member_id)
                  .where(e.insurance_plan_id == sp.insurance_plan_id, e.status == "active", e.deleted_at.is_(None),
                         (e.termination_date.is_(None)) | (e.termination_date >= today), m.deleted_at.is_(None))
                  .order_by(e.enrollment_date.desc(), e.id).limit(SECTION_LIMIT).lateral("newest"))
        per_plan = (select(newest).select_from(sp_table).join(newest, true())
                    .where(sp.specialist_id == sid, sp.deleted_at.is_(None)).subquery("per_plan"))
        rows = self.connection.execute(
            select(per_plan.c.member_id, per_plan.c.enrollment_date, p.plan_code, m.first_name, m.last_name)
            .join(Member.__table__, m.id == per_plan.c.member_id)
            .join(InsurancePlan.__table__, p.id == per_plan.c.insurance_plan_id)
            .order_by(per_plan.c.enrollment_date.desc(), per_plan.c.id).limit(SECTION_LIMIT))
        return [WorkItem("plan_member", r.member_id, _name(r), r.enrollment_date, f"enrolled in {r.plan_code}")
                for r in rows]

    def _plan_names(self, sid: uuid.UUID) -> list[str]:
        p, sp = InsurancePlan.__table__.c, SpecialistInsurancePlan.__table__.c
        return list(self.connection.execute(
            select(p.plan_code).join(SpecialistInsurancePlan.__table__, sp.insurance_plan_id == p.id)
            .where(sp.specialist_id == sid, sp.deleted_at.is_(None), p.deleted_at.is_(None))
            .order_by(p.plan_code)).scalars())
