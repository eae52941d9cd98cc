"""Call records: outreach, follow-up and support calls, and the steps of a call's life.

A call is logged after the fact (completed, no answer), or scheduled and
later completed, rescheduled, cancelled or marked unanswered. Each step is
one audited update with optimistic concurrency; the rules of
:mod:`carecli.data.rules` hold on the call as it will be.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import func, select

from carecli.data import audit
from carecli.data.models.platform import CallRecord, Member, Specialist
from carecli.data.permissions import Permission
from carecli.data.records import Call
from carecli.data.repositories.base import Repository
from carecli.data.rules import call_problems, utc_now
from carecli.data.validation import append_line, check_reason
from carecli.errors import PermissionDenied, ValidationError

#: the outcome a step records when the caller gives none
OUTCOME_RESCHEDULED = "rescheduled"
OUTCOME_CANCELLED = "cancelled"
OUTCOME_NO_ANSWER = "no answer"
def _stamp(now: datetime) -> str:
    return now.strftime("%Y-%m-%d %H:%M UTC")


class CallRepository(Repository[Call]):
    table = CallRecord.__table__
    record_type = Call
    entity_type = "call_record"
    read_permission = Permission.MEMBERS_READ
    write_permission = Permission.CALLS_WRITE
    protected = Repository.protected | {"duration_seconds"}

    def validate(self, values: Mapping[str, Any], current: Mapping[str, Any] | None) -> None:
        member_created = None
        if values.get("member_id") is not None:
            members = Member.__table__
            member_created = self.connection.execute(
                select(members.c.created_at).where(members.c.id == values["member_id"])).scalar_one_or_none()
        problems = call_problems(values, changed=self.changed(values, current), member_created_at=member_created)
        if problems:
            raise ValidationError.of(problems)

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
        """Log a call (or schedule one); the duration is computed from its start and end."""
        self.require(self.write_permission, "log calls")
        self.require_live(Member.__table__, values.get("member_id"), "member_id")
        self.require_live(Specialist.__table__, values.get("specialist_id"), "specialist_id")
        return self._insert(values, operation="log calls", generated=self._with_duration(values))

    def schedule(self, member_id: uuid.UUID, specialist_id: uuid.UUID | None, *, when: datetime,
                 call_type: str = "follow_up", notes: str | None = None) -> Call:
        """Schedule a call with a member for a time still to come."""
        return self.create({"member_id": member_id, "specialist_id": specialist_id, "call_type": call_type,
                            "call_status": "scheduled", "scheduled_at": when,
                            "call_notes": (notes or "").strip() or None})

    def update(self, call_id: uuid.UUID, expected_updated_at: datetime | None, changes: Mapping[str, Any]) -> Call:
        self.require(self.write_permission, "edit calls", call_id)
        current = dict(self._fetch(call_id)._mapping)
        merged = {**current, **changes}
        return self._update(call_id, expected_updated_at, changes, operation="edit calls",
                            internal=self._with_duration(merged))

    # -- the steps of a scheduled call ------------------------------------------------------

    def _scheduled(self, call_id: uuid.UUID, expected_updated_at: datetime | None, step: str,
                   done: str) -> dict[str, Any]:
        """The call, which must still be scheduled for ``step`` ("complete"; ``done``: "completed").

        A call changed since it was read is left to :meth:`_update`, which refuses it as a conflict
        naming who changed it (that says more than "it is not scheduled any more").
        """
        self.require(self.write_permission, f"{step} calls", call_id)
        current = dict(self._fetch(call_id)._mapping)
        stale = expected_updated_at is not None and current["updated_at"] != expected_updated_at
        if current["call_status"] != "scheduled" and not stale:
            status = current["call_status"].replace("_", " ")
            raise ValidationError("call_status", "not_scheduled",
                                  f"Only a scheduled call can be {done}; this call is {status} already.")
        return current

    def complete(self, call_id: uuid.UUID, expected_updated_at: datetime | None, *, started_at: datetime,
                 ended_at: datetime | None, outcome: str | None, notes: str | None,
                 follow_up_required: bool = False, follow_up_date: Any = None) -> Call:
        """A scheduled call took place: when, how it went, and whether a follow-up is due."""
        current = self._scheduled(call_id, expected_updated_at, "complete", "completed")
        changes = {"call_status": "completed", "started_at": started_at, "ended_at": ended_at,
                   "outcome": (outcome or "").strip() or None, "call_notes": (notes or "").strip() or None,
                   "follow_up_required": bool(follow_up_required), "follow_up_date": follow_up_date}
        return self._update(call_id, expected_updated_at, changes, operation="complete calls",
                            internal=self._with_duration({**current, **changes}))

    def reschedule(self, call_id: uuid.UUID, expected_updated_at: datetime | None, *, when: datetime,
                   reason: str | None = None) -> Call:
        """Move a scheduled call to a new time; its outcome and notes record the move."""
        current = self._scheduled(call_id, expected_updated_at, "reschedule", "rescheduled")
        reason = check_reason(reason, required=False)
        old = current["scheduled_at"]
        line = (f"[{_stamp(utc_now())}] Rescheduled from {_stamp(old) if old else 'no time'} to {_stamp(when)}"
                + (f": {reason}" if reason else "."))
        changes = {"scheduled_at": when, "outcome": OUTCOME_RESCHEDULED,
                   "call_notes": append_line(current["call_notes"], line)}
        return self._update(call_id, expected_updated_at, changes, operation="reschedule calls")

    def cancel(self, call_id: uuid.UUID, expected_updated_at: datetime | None, *, reason: str) -> Call:
        """Cancel a scheduled call, saying why (kept in the call's notes)."""
        current = self._scheduled(call_id, expected_updated_at, "cancel", "cancelled")
        reason = check_reason(reason)
        changes = {"call_status": "cancelled", "outcome": OUTCOME_CANCELLED,
                   "follow_up_required": False, "follow_up_date": None,
                   "call_notes": append_line(current["call_notes"], f"[{_stamp(utc_now())}] Cancelled: {reason}")}
        return self._update(call_id, expected_updated_at, changes, operation="cancel calls")

    def mark_no_answer(self, call_id: uuid.UUID, expected_updated_at: datetime | None, *,
                       attempted_at: datetime, notes: str | None = None) -> Call:
        """The member did not answer a scheduled call (tried at ``attempted_at``)."""
        current = self._scheduled(call_id, expected_updated_at, "mark unanswered", "marked unanswered")
        notes = check_reason(notes, field="call_notes", required=False)
        changes: dict[str, Any] = {"call_status": "no_answer", "started_at": attempted_at, "ended_at": None,
                                   "outcome": OUTCOME_NO_ANSWER}
        if notes:
            changes["call_notes"] = append_line(current["call_notes"], notes)
        return self._update(call_id, expected_updated_at, changes, operation="mark calls unanswered",
                            internal={"duration_seconds": None})

    # -- notes ---------------------------------------------------------------------------------

    def logged_by(self, call_id: uuid.UUID) -> tuple[uuid.UUID | None, datetime | None]:
        """Who logged (created) the call and when, from its 'create' audit row (None when imported without one)."""
        log = audit.AUDIT
        row = self.connection.execute(
            select(log.c.user_id, log.c.created_at).where(log.c.entity_type == self.entity_type,
                                                          log.c.entity_id == call_id, log.c.action == "create")
            .order_by(log.c.created_at).limit(1)).first()
        return (row.user_id, row.created_at) if row is not None else (None, None)

    def is_own(self, call: Mapping[str, Any] | Call) -> bool:
        """Whether the acting user logged this call or is its specialist."""
        user_id = self.uow.actor.user_id
        if user_id is None:
            return False
        get: Callable[[str], Any] = call.get if isinstance(call, Mapping) else lambda name: getattr(call, name)
        specialists = Specialist.__table__
        if get("specialist_id") is not None and self.connection.execute(
                select(specialists.c.id).where(specialists.c.id == get("specialist_id"),
                                               specialists.c.user_id == user_id)).first() is not None:
            return True
        return self.logged_by(get("id"))[0] == user_id

    def edit_notes(self, call_id: uuid.UUID, expected_updated_at: datetime | None, notes: str | None) -> Call:
        """Change a call's notes: only the specialist of the call, or whoever logged it, may."""
        self.require(self.write_permission, "edit call notes", call_id)
        current = dict(self._fetch(call_id)._mapping)
        if not self.is_own(current):
            self.uow.audit_denial(self.entity_type, call_id, "edit the notes of someone else's call",
                                  self.write_permission)
            raise PermissionDenied("only the specialist who logged a call can edit its notes",
                                   hint="add what you know as a note on the member, or log a call of your own")
        text = (notes or "").strip() or None
        return self._update(call_id, expected_updated_at, {"call_notes": text}, operation="edit call notes")
