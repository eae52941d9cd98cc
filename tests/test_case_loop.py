"""The case loop in the data layer: a call's steps, a flag's resolution, the worklist, ending an
enrollment and member phones, on a real PostgreSQL (a fresh database per test).

Every step is one audited update with optimistic concurrency: a stale
``updated_at`` is a :class:`ConflictError`, and a step on a call that is no
longer scheduled is refused with the rule ``not_scheduled``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

import pytest

from carecli.data.permissions import DEFAULT_ROLES
from carecli.data.rules import utc_now
from carecli.errors import ConflictError, PermissionDenied, ValidationError
from tests.platform_fixtures import Platform

SPECIALIST_PERMISSIONS = DEFAULT_ROLES["specialist"][1]


def soon(**delta: float) -> datetime:
    return (utc_now() + timedelta(**delta)).replace(microsecond=0)


@dataclass
class Desk:
    """A specialist (with their own actor) and a member with a call scheduled tomorrow."""

    platform: Platform
    actor: Any
    specialist: Any
    member: Any
    call: Any

    def uow(self) -> Any:
        return self.platform.uow(self.actor)

    def step(self, name: str, *args: Any, expected: datetime | None | str = "current", **kwargs: Any) -> Any:
        """Run a CallRepository step on the desk's call as the specialist, committed."""
        with self.uow() as uow:
            when = uow.calls.get(self.call.id).updated_at if expected == "current" else expected
            result = getattr(uow.calls, name)(self.call.id, when, *args, **kwargs)
            uow.commit()
        return result


def desk(platform: Platform) -> Desk:
    actor = platform.actor(*SPECIALIST_PERMISSIONS, role="specialist")
    specialist = platform.specialist(user_id=actor.user_id)
    member = platform.member()
    with platform.uow(actor) as uow:
        call = uow.calls.schedule(member.id, specialist.id, when=soon(days=1), notes="first contact")
        uow.commit()
    return Desk(platform, actor, specialist, member, call)


STEPS: dict[str, Callable[[], tuple[tuple[Any, ...], dict[str, Any]]]] = {
    "complete": lambda: ((), {"started_at": soon(minutes=-20), "ended_at": soon(minutes=-5), "outcome": "reached",
                              "notes": "talked about meds", "follow_up_required": True,
                              "follow_up_date": date.today() + timedelta(days=7)}),
    "reschedule": lambda: ((), {"when": soon(days=3), "reason": "member at work"}),
    "cancel": lambda: ((), {"reason": "member moved away"}),
    "mark_no_answer": lambda: ((), {"attempted_at": soon(minutes=-1), "notes": "rang out"}),
}
AFTER = {"complete": "completed", "reschedule": "scheduled", "cancel": "cancelled", "mark_no_answer": "no_answer"}


@pytest.mark.parametrize("step", list(STEPS))
def test_each_step_is_one_audited_update(platform: Platform, step: str) -> None:
    d = desk(platform)
    args, kwargs = STEPS[step]()
    call = d.step(step, *args, **kwargs)
    assert call.call_status == AFTER[step] and call.updated_at > d.call.updated_at
    [update] = platform.audit(d.call.id, action="update")
    assert update.user_id == d.actor.user_id and update.entity_type == "call_record"
    if step != "reschedule":
        assert update.new_values["call_status"] == AFTER[step]
    if "call_notes" in update.new_values:
        assert update.new_values["call_notes"] == "[redacted]"
    if step == "complete":
        assert call.duration_seconds == 15 * 60 and call.follow_up_required is True
    if step == "reschedule":
        assert call.scheduled_at == kwargs["when"] and "Rescheduled from" in (call.call_notes or "")
        assert call.outcome == "rescheduled"
    if step == "cancel":
        assert "Cancelled: member moved away" in (call.call_notes or "") and call.follow_up_required is False


@pytest.mark.parametrize("step", list(STEPS))
def test_each_step_refuses_a_stale_read(platform: Platform, step: str) -> None:
    d = desk(platform)
    with d.uow() as uow:  # someone else edits the call after we read it
        uow.calls.edit_notes(d.call.id, d.call.updated_at, "moved to the afternoon")
        uow.commit()
    args, kwargs = STEPS[step]()
    with pytest.raises(ConflictError) as raised:
        d.step(step, *args, expected=d.call.updated_at, **kwargs)
    assert raised.value.changed_by == d.actor.user_id
    assert len(platform.audit(d.call.id, action="update")) == 1


@pytest.mark.parametrize("step", list(STEPS))
@pytest.mark.parametrize("first", ["complete", "cancel", "mark_no_answer"])
def test_each_step_needs_a_scheduled_call(platform: Platform, step: str, first: str) -> None:
    d = desk(platform)
    args, kwargs = STEPS[first]()
    d.step(first, *args, **kwargs)
    args, kwargs = STEPS[step]()
    with pytest.raises(ValidationError) as raised:
        d.step(step, *args, **kwargs)
    assert (raised.value.field, raised.value.rule) == ("call_status", "not_scheduled")
    assert len(platform.audit(d.call.id, action="update")) == 1


def test_steps_keep_the_rules(platform: Platform) -> None:
    d = desk(platform)
    with pytest.raises(ValidationError) as raised:
        d.step("complete", started_at=soon(days=1), ended_at=None, outcome=None, notes=None)
    assert raised.value.rule == "not_future"
    with pytest.raises(ValidationError) as raised:
        d.step("reschedule", when=soon(days=-1))
    assert raised.value.rule == "scheduled_past"
    with pytest.raises(ValidationError) as raised:
        d.step("cancel", reason="  ")
    assert (raised.value.field, raised.value.rule) == ("reason", "required")
    assert platform.audit(d.call.id, action="update") == []


def test_schedule_is_an_audited_create_of_a_call_to_come(platform: Platform) -> None:
    d = desk(platform)
    [created] = platform.audit(d.call.id, action="create")
    assert created.user_id == d.actor.user_id and created.new_values["call_status"] == "scheduled"
    assert created.new_values["call_notes"] == "[redacted]"
    with d.uow() as uow, pytest.raises(ValidationError) as raised:
        uow.calls.schedule(d.member.id, d.specialist.id, when=soon(hours=-2))
    assert raised.value.rule == "scheduled_past"


def test_edit_notes_own_call_or_an_audited_refusal(platform: Platform) -> None:
    d = desk(platform)
    d.step("complete", started_at=soon(minutes=-10), ended_at=None, outcome=None, notes=None)
    call = d.step("edit_notes", "called back, all fine")  # a completed call's notes may still be edited
    assert call.call_notes == "called back, all fine"
    [*_, update] = platform.audit(d.call.id, action="update")
    assert update.new_values == {"call_notes": "[redacted]"}

    colleague = platform.actor(*SPECIALIST_PERMISSIONS, role="specialist")
    platform.specialist(user_id=colleague.user_id)
    with platform.uow(colleague) as uow, pytest.raises(PermissionDenied):
        uow.calls.edit_notes(d.call.id, call.updated_at, "not mine to write")
    [denied] = platform.audit(d.call.id, action="deny")
    assert denied.user_id == colleague.user_id
    assert denied.new_values["operation"] == "edit the notes of someone else's call"
    with platform.uow() as uow:
        assert uow.calls.get(d.call.id).call_notes == "called back, all fine"
    with pytest.raises(ConflictError):
        d.step("edit_notes", "stale", expected=d.call.updated_at)


# -- risk flags: resolve and re-open ----------------------------------------------------------------------


def _flag(d: Desk, severity: str = "high") -> Any:
    d.step("complete", started_at=soon(minutes=-10), ended_at=None, outcome=None, notes=None)
    with d.uow() as uow:
        flag = uow.risk_flags.raise_from_call(d.call.id, risk_type="medical", severity=severity,
                                              description="dizzy spells")
        uow.commit()
    return flag


def _resolution_row(platform: Platform, flag_id: uuid.UUID) -> Any:
    rows = platform.sql("SELECT * FROM metadata WHERE entity_type = 'risk_flag' AND entity_id = :id "
                        "AND metadata_key = 'resolution'", id=flag_id)
    assert len(rows) <= 1
    return rows[0] if rows else None


def test_resolve_and_reopen_write_metadata_and_audit_and_bump_the_flag(platform: Platform) -> None:
    d = desk(platform)
    flag = _flag(d)
    with d.uow() as uow:
        resolved = uow.risk_flags.resolve(flag.id, flag.updated_at, "Seen by the nurse")
        uow.commit()
    assert resolved.updated_at > flag.updated_at
    row = _resolution_row(platform, flag.id)
    assert row.deleted_at is None and row.metadata_value["note"] == "Seen by the nurse"
    assert row.metadata_value["by"] == str(d.actor.user_id)
    [update] = platform.audit(flag.id, action="update")
    assert (update.old_values, update.new_values) == ({"resolution": "open"}, {"resolution": "resolved"})
    [meta] = platform.audit(row.id, action="create")
    assert meta.new_values["metadata_value"] == "[redacted]"
    with d.uow() as uow:
        assert uow.risk_flags.resolution(flag.id).note == "Seen by the nurse"

    with d.uow() as uow, pytest.raises(ValidationError) as raised:
        uow.risk_flags.resolve(flag.id, resolved.updated_at, "again")
    assert raised.value.rule == "already_resolved"

    with d.uow() as uow:
        reopened = uow.risk_flags.reopen(flag.id, resolved.updated_at, "Fell again")
        uow.commit()
    assert reopened.updated_at > resolved.updated_at
    row = _resolution_row(platform, flag.id)
    assert row.deleted_at is not None and row.metadata_value["reopened_because"] == "Fell again"
    assert [entry.new_values for entry in platform.audit(flag.id, action="update")][-1] == {"resolution": "open"}
    assert platform.audit(row.id, action="delete")
    with d.uow() as uow, pytest.raises(ValidationError) as raised:
        uow.risk_flags.reopen(flag.id, reopened.updated_at, "twice")
    assert raised.value.rule == "not_resolved"
    with d.uow() as uow:  # resolving again revives the one metadata row
        uow.risk_flags.resolve(flag.id, reopened.updated_at, "Physio booked")
        uow.commit()
    row = _resolution_row(platform, flag.id)
    assert row.deleted_at is None and row.metadata_value["note"] == "Physio booked"


def test_resolving_a_flag_read_before_someone_else_changed_it_is_a_conflict(platform: Platform) -> None:
    d = desk(platform)
    flag = _flag(d)
    with d.uow() as uow:
        uow.risk_flags.update(flag.id, flag.updated_at, {"severity": "critical"})
        uow.commit()
    with d.uow() as uow, pytest.raises(ConflictError):
        uow.risk_flags.resolve(flag.id, flag.updated_at, "Seen by the nurse")
    assert _resolution_row(platform, flag.id) is None
    with d.uow() as uow, pytest.raises(ValidationError) as raised:
        uow.risk_flags.resolve(flag.id, None, "   ")
    assert raised.value.rule == "required"


def test_a_flag_needs_a_held_call(platform: Platform) -> None:
    d = desk(platform)
    with d.uow() as uow, pytest.raises(ValidationError) as raised:
        uow.risk_flags.raise_from_call(d.call.id, risk_type="medical", severity="high", description="x")
    assert raised.value.rule == "call_not_held"


# -- the worklist ---------------------------------------------------------------------------------------------


def _worklist(d: Desk) -> Any:
    now = utc_now()
    start = datetime(now.year, now.month, now.day)
    with d.uow() as uow:
        return uow.worklist.build(now.date(), start, start + timedelta(days=1))


def test_a_done_call_leaves_today_and_a_resolved_flag_leaves_urgent_flags(platform: Platform) -> None:
    actor = platform.actor(*SPECIALIST_PERMISSIONS, role="specialist")
    specialist = platform.specialist(user_id=actor.user_id)
    member = platform.member()
    now = utc_now()
    end_of_day = datetime(now.year, now.month, now.day) + timedelta(days=1)
    if end_of_day - now < timedelta(minutes=20):
        pytest.skip("too close to midnight UTC for a call still to come today")
    with platform.uow(actor) as uow:
        call = uow.calls.schedule(member.id, specialist.id, when=now + timedelta(minutes=10))
        uow.commit()
    d = Desk(platform, actor, specialist, member, call)
    assert [item.call_id for item in _worklist(d).calls_today] == [call.id]
    d.step("complete", started_at=soon(minutes=-1), ended_at=None, outcome="reached", notes=None)
    assert _worklist(d).calls_today == []

    with d.uow() as uow:
        flag = uow.risk_flags.raise_from_call(call.id, risk_type="safety", severity="critical",
                                              description="lives alone")
        uow.commit()
    assert [item.flag_id for item in _worklist(d).urgent_flags] == [flag.id]
    with d.uow() as uow:
        resolved = uow.risk_flags.resolve(flag.id, flag.updated_at, "Neighbour checks daily")
        uow.commit()
    assert _worklist(d).urgent_flags == []
    with d.uow() as uow:
        uow.risk_flags.reopen(flag.id, resolved.updated_at, "Neighbour moved")
        uow.commit()
    assert [item.flag_id for item in _worklist(d).urgent_flags] == [flag.id]


# -- enrollments and member phones --------------------------------------------------------------------------


def test_terminating_with_a_future_date_keeps_the_enrollment_active(platform: Platform) -> None:
    member, plan = platform.member(), platform.plan("PPO")
    today = utc_now().date()
    with platform.uow() as uow:
        first = uow.enrollments.enroll(member.id, plan.id, date(2024, 1, 1), is_primary=True)
        ending = uow.enrollments.terminate(first.id, first.updated_at, today + timedelta(days=30), "moving states")
        uow.commit()
    assert (ending.status, ending.is_primary, ending.termination_date) == ("active", True, today + timedelta(days=30))
    assert "moving states" in (ending.notes or "")
    [update] = platform.audit(first.id, action="update")
    assert set(update.new_values) == {"termination_date", "notes"}
    with platform.uow() as uow, pytest.raises(ValidationError) as raised:
        uow.enrollments.update(first.id, ending.updated_at, {"status": "terminated"})
    assert raised.value.rule == "status_dates"
    with platform.uow() as uow:
        ended = uow.enrollments.terminate(first.id, ending.updated_at, today, "moved")
        uow.commit()
    assert (ended.status, ended.is_primary) == ("terminated", False)
    with platform.uow() as uow, pytest.raises(ValidationError) as raised:
        uow.enrollments.terminate(first.id, ended.updated_at, today)
    assert raised.value.rule == "already_terminated"


def test_termination_follows_the_plan_s_dates(platform: Platform) -> None:
    member = platform.member()
    plan = platform.plan("Y", effective_date=date(2024, 1, 1), expiration_date=date(2030, 12, 31))
    with platform.uow() as uow:
        with pytest.raises(ValidationError) as raised:
            uow.enrollments.enroll(member.id, plan.id, date(2023, 6, 1))
        assert raised.value.rule == "plan_dates"
        enrollment = uow.enrollments.enroll(member.id, plan.id, date(2024, 6, 1))
        with pytest.raises(ValidationError) as raised:
            uow.enrollments.terminate(enrollment.id, enrollment.updated_at, date(2031, 1, 1))
        assert (raised.value.field, raised.value.rule) == ("termination_date", "plan_dates")


def test_member_phones_are_normalised_and_checked(platform: Platform) -> None:
    member = platform.member(phone="503.555.0142")
    assert member.phone == "+15035550142"
    with platform.uow() as uow:
        changed = uow.members.update(member.id, None, {"phone": "(503) 555-0143"})
        uow.commit()
    assert changed.phone == "+15035550143"
    with platform.uow() as uow, pytest.raises(ValidationError) as raised:
        uow.members.update(member.id, None, {"phone": "555-12"})
    assert raised.value.field == "phone"
    with platform.uow() as uow:
        cleared = uow.members.update(member.id, None, {"phone": " "})
        uow.commit()
    assert cleared.phone is None


def test_a_legacy_phone_does_not_block_other_edits(platform: Platform) -> None:
    """A number stored before the rule stays until someone changes it, even when a form sends it back unchanged."""
    member = platform.member()
    with platform.engine.begin() as connection:
        from sqlalchemy import text

        connection.execute(text("UPDATE members SET phone = 'ext. 12' WHERE id = :id"), {"id": member.id})
    with platform.uow() as uow:
        edited = uow.members.update(member.id, None, {"city": "Salem"})
        again = uow.members.update(member.id, None, {"city": "Bend", "phone": "ext. 12"})
        uow.commit()
    assert (edited.city, again.city, again.phone) == ("Salem", "Bend", "ext. 12")
