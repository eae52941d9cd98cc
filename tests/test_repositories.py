"""The audited repositories on a real platform database: records, optimistic concurrency,
soft delete and restore, validation, and the rules of each entity."""

from __future__ import annotations

import dataclasses
import threading
import uuid
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from sqlalchemy.exc import IntegrityError

from carecli.data.crypto.phi import DateOfBirth, Ssn
from carecli.data.records import AuditEntry, Call, Enrollment, Member, MetadataEntry, Plan, RiskFlag, Specialist
from carecli.data.unit_of_work import PlatformUnitOfWork
from carecli.errors import CarecliError, ConflictError, NotFound, ValidationError
from tests.platform_fixtures import MEMBER_VALUES

# -- records ---------------------------------------------------------------------------------------


def test_records_are_frozen_dataclasses_not_orm_objects(platform):
    member = platform.member()
    specialist = platform.specialist()
    plan = platform.plan()
    call = platform.call(member, specialist)
    with platform.uow() as uow:
        flag = uow.risk_flags.raise_from_call(call.id, risk_type="medical", severity="low", description="d")
        enrollment = uow.enrollments.enroll(member.id, plan.id, date(2026, 1, 1))
        note = uow.metadata.put("member", member.id, "k", {"v": 1})
        entry = uow.audit_log.search(limit=1)[0]
        uow.commit()
    records = [(member, Member), (specialist, Specialist), (plan, Plan), (call, Call), (flag, RiskFlag),
               (enrollment, Enrollment), (note, MetadataEntry), (entry, AuditEntry)]
    for record, kind in records:
        assert type(record) is kind
        assert dataclasses.is_dataclass(record)
        assert not hasattr(record, "_sa_instance_state")
        first = dataclasses.fields(record)[0].name
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(record, first, None)


def test_a_member_record_holds_no_phi_and_its_repr_no_contact_details(platform):
    member = platform.member(address_line2="Flat 3")
    assert member.has_ssn and member.has_dob
    names = {f.name for f in dataclasses.fields(member)}
    assert not names & {"ssn", "dob", "encrypted_ssn", "encrypted_dob"}
    shown = repr(member) + str(member)
    assert shown == f"Member(id={member.id}, status='active')" * 2
    for value in MEMBER_VALUES.values():
        assert value not in shown
    without_phi = platform.member(ssn=None, dob=None)
    assert not without_phi.has_ssn and not without_phi.has_dob


def test_ssn_and_dob_are_stored_encrypted_and_reveal_round_trips(platform):
    member = platform.member()
    ssn, dob = platform.sql("SELECT encrypted_ssn, encrypted_dob FROM members")[0]
    assert b"123456789" not in bytes(ssn) and b"1961-04-02" not in bytes(dob)
    with platform.uow() as uow:
        revealed = uow.members.reveal(member.id, ["ssn", "dob"], "identity check")
    assert revealed.ssn == Ssn("123456789") and revealed.dob == DateOfBirth(date(1961, 4, 2))

    with platform.uow() as uow:
        uow.members.update(member.id, member.updated_at, {}, dob=DateOfBirth(date(1970, 1, 31)))
        uow.commit()
    with platform.uow() as uow:
        revealed = uow.members.reveal(member.id, ["dob", "ssn"], "identity check")
    assert revealed.dob.reveal() == date(1970, 1, 31) and revealed.ssn.reveal() == "123456789"


def test_reveal_of_a_member_without_phi_on_file_returns_none_and_is_still_audited(platform):
    member = platform.member(ssn=None, dob=None)
    with platform.uow() as uow:
        revealed = uow.members.reveal(member.id, ["ssn", "dob"], "identity check")
    assert (revealed.member_id, revealed.ssn, revealed.dob) == (member.id, None, None)
    assert len(platform.audit(member.id, action="read")) == 1


def test_members_get_takes_the_base_signature_and_is_an_audited_open(platform):
    # MemberRepository.get was ``open`` itself (parameter ``member_id``): a caller
    # written against Repository.get(entity_id=...) got a TypeError.
    member = platform.member()
    with platform.uow() as uow:
        assert uow.members.get(entity_id=member.id).id == member.id
        assert uow.members.get(member.id, include_deleted=True).id == member.id
    rows = platform.audit(member.id, action="read")
    assert len(rows) == 2


def test_protected_columns_cannot_be_given(platform):
    member = platform.member()
    with platform.uow() as uow:
        for values in ({"id": uuid.uuid4()}, {"created_at": datetime(2020, 1, 1)}, {"encrypted_ssn": b"x" * 60},
                       {"deleted_at": None}):
            with pytest.raises(ValidationError) as caught:
                uow.members.update(member.id, member.updated_at, values)
            assert (caught.value.field, caught.value.rule) == (next(iter(values)), "read_only")
        with pytest.raises(ValidationError) as caught:
            uow.members.create({**MEMBER_VALUES, "encrypted_dob": b"y" * 60})
        assert (caught.value.field, caught.value.rule) == ("encrypted_dob", "read_only")
    assert platform.audit_count() == 1


# -- optimistic concurrency --------------------------------------------------------------------------


def test_a_stale_update_conflicts_and_changes_nothing(platform):
    member = platform.member()
    with platform.uow() as uow:
        fresh = uow.members.update(member.id, member.updated_at, {"status": "inactive"})
        uow.commit()
    assert fresh.updated_at > member.updated_at
    audit_before = platform.audit_count()

    with platform.uow() as uow, pytest.raises(ConflictError) as caught:
        uow.members.update(member.id, member.updated_at, {"status": "suspended", "city": "Salem"})
    assert f"member {member.id} was changed by someone else since you read it" in str(caught.value)
    assert caught.value.hint == "reload it and apply your change again"
    row, = platform.sql("SELECT status, city, updated_at FROM members")
    assert (row.status, row.city, row.updated_at) == ("inactive", "Portland", fresh.updated_at)
    assert platform.audit_count() == audit_before

    with platform.uow() as uow, pytest.raises(ConflictError):
        uow.members.delete(member.id, member.updated_at)
    assert platform.scalar("SELECT deleted_at FROM members") is None
    assert platform.audit_count() == audit_before


def test_updates_in_one_transaction_get_distinct_updated_at(platform):
    plan = platform.plan()
    with platform.uow() as uow:
        first = uow.plans.update(plan.id, plan.updated_at, {"plan_name": "One"})
        second = uow.plans.update(plan.id, first.updated_at, {"plan_name": "Two"})
        assert second.updated_at > first.updated_at
        with pytest.raises(ConflictError):
            uow.plans.update(plan.id, first.updated_at, {"plan_name": "Three"})
    # The conflict ended the unit of work without a commit: nothing of it stays.
    assert platform.scalar("SELECT plan_name FROM insurance_plans") == "Plan PPO-1"
    assert [row.action for row in platform.audit(plan.id)] == ["create"]


def test_concurrent_editors_cannot_overwrite_each_other(platform):
    """Two units of work read the same row; the second to write waits for the first, then conflicts."""
    member = platform.member()
    outcome: dict[str, object] = {}

    def second_editor() -> None:
        try:
            with platform.uow() as uow:
                uow.members.update(member.id, member.updated_at, {"city": "Salem"})
                uow.commit()
            outcome["second"] = "saved"
        except ConflictError as exc:
            outcome["second"] = exc

    with platform.uow() as uow:
        uow.members.update(member.id, member.updated_at, {"city": "Eugene"})
        thread = threading.Thread(target=second_editor)
        thread.start()
        thread.join(timeout=1.0)
        assert thread.is_alive()  # blocked on the row lock, not writing over us
        uow.commit()
    thread.join(timeout=10)
    assert isinstance(outcome["second"], ConflictError)
    assert platform.scalar("SELECT city FROM members") == "Eugene"
    assert [row.action for row in platform.audit(member.id)] == ["create", "update"]


@pytest.mark.parametrize("operation", ["set_primary", "terminate", "update"])
def test_enrollment_operations_check_updated_at(platform, operation):
    member, plan = platform.member(), platform.plan()
    with platform.uow() as uow:
        enrollment = uow.enrollments.enroll(member.id, plan.id, date(2026, 1, 1))
        uow.commit()
    with platform.uow() as uow:
        uow.enrollments.update(enrollment.id, enrollment.updated_at, {"notes": "n"})
        uow.commit()
    audit_before = platform.audit_count()
    with platform.uow() as uow, pytest.raises(ConflictError):
        if operation == "set_primary":
            uow.enrollments.set_primary(enrollment.id, enrollment.updated_at)
        elif operation == "terminate":
            uow.enrollments.terminate(enrollment.id, enrollment.updated_at, date(2026, 5, 1))
        else:
            uow.enrollments.update(enrollment.id, enrollment.updated_at, {"coverage_percentage": 50})
    row, = platform.sql("SELECT status, is_primary, coverage_percentage FROM member_insurance_plans")
    assert (row.status, row.is_primary, row.coverage_percentage) == ("active", False, Decimal("100.00"))
    assert platform.audit_count() == audit_before


# -- soft delete and restore --------------------------------------------------------------------------


def test_soft_deleted_rows_are_hidden_unless_asked_for(platform):
    member = platform.member()
    specialist = platform.specialist()
    plan, kept_plan = platform.plan("PPO-1"), platform.plan("HMO-2")
    call = platform.call(member, specialist)
    with platform.uow() as uow:
        flag = uow.risk_flags.raise_from_call(call.id, risk_type="safety", severity="low", description="d")
        enrollment = uow.enrollments.enroll(member.id, plan.id, date(2026, 1, 1))
        note = uow.metadata.put("member", member.id, "k", 1)
        uow.commit()
    with platform.uow() as uow:
        for repository, record in ((uow.risk_flags, flag), (uow.calls, call), (uow.enrollments, enrollment),
                                   (uow.metadata, note), (uow.plans, plan), (uow.specialists, specialist),
                                   (uow.members, member)):
            repository.delete(record.id, record.updated_at)
        uow.commit()
    assert platform.scalar("SELECT count(*) FROM members WHERE deleted_at IS NOT NULL") == 1  # kept, not deleted

    with platform.uow() as uow:
        for repository, record in ((uow.members, member), (uow.calls, call), (uow.plans, plan),
                                   (uow.specialists, specialist), (uow.enrollments, enrollment),
                                   (uow.risk_flags, flag), (uow.metadata, note)):
            with pytest.raises(NotFound, match="does not exist or was deleted"):
                repository.get(record.id)
            assert repository.get(record.id, include_deleted=True).deleted_at is not None
        assert uow.members.open(member.id, include_deleted=True).id == member.id
        assert uow.calls.for_member(member.id) == []
        assert uow.risk_flags.for_member(member.id) == []
        assert uow.metadata.for_entity("member", member.id) == []
        assert uow.enrollments.for_member(member.id) == []
        assert [e.id for e in uow.enrollments.for_member(member.id, include_deleted=True)] == [enrollment.id]
        assert [p.id for p in uow.plans.list()] == [kept_plan.id]
        assert {p.id for p in uow.plans.list(include_deleted=True)} == {plan.id, kept_plan.id}
        with pytest.raises(NotFound):
            uow.plans.by_code("PPO-1")
        assert uow.specialists.list() == []
        assert [s.id for s in uow.specialists.list(include_deleted=True)] == [specialist.id]
        assert uow.specialists.for_user(specialist.user_id) is None
        with pytest.raises(NotFound):
            uow.members.reveal(member.id, ["ssn"], "identity check")
        with pytest.raises(NotFound):  # a deleted row is not edited until restored
            uow.members.update(member.id, None, {"status": "inactive"})


def test_restore_brings_a_row_back_and_is_audited(platform):
    specialist = platform.specialist()
    member = platform.member()
    call = platform.call(member, specialist)
    with platform.uow() as uow:
        deleted = uow.calls.delete(call.id, call.updated_at)
        uow.commit()
    with platform.uow() as uow:
        restored = uow.calls.restore(call.id)
        assert uow.calls.restore(call.id) == restored  # restoring a live row changes nothing
        uow.commit()
    assert restored.deleted_at is None and restored.updated_at > deleted.updated_at
    assert restored.call_notes == call.call_notes
    with platform.uow() as uow:
        assert [c.id for c in uow.calls.for_member(member.id)] == [call.id]
    actions = [(row.action, row.old_values, row.new_values) for row in platform.audit(call.id)]
    assert [a[0] for a in actions] == ["create", "delete", "restore"]
    assert actions[2][1:] == ({"deleted_at": deleted.deleted_at.isoformat()}, {"deleted_at": None})


def test_restore_of_a_missing_row_is_not_found(platform):
    with platform.uow() as uow, pytest.raises(NotFound):
        uow.members.restore(uuid.uuid4())


# -- validation: the field and the rule are named, and nothing is written --------------------------


def _refused(platform, attempt, field: str, rule: str) -> ValidationError:
    rows_before = platform.audit_count()
    with platform.uow() as uow, pytest.raises(ValidationError) as caught:
        attempt(uow)
    error = caught.value
    assert (error.field, error.rule) == (field, rule), str(error)
    assert str(error).startswith(f"{field}: ")
    assert platform.audit_count() == rows_before
    return error


@pytest.mark.parametrize(("changes", "field", "rule"), [
    ({"status": "deceased"}, "status", "enum"),
    ({"first_name": "x" * 101}, "first_name", "max_length"),
    ({"email": "a" * 250 + "@x.org"}, "email", "max_length"),
    ({"phone": "5" * 21}, "phone", "phone_format"),
    ({"phone": "555-0100"}, "phone", "phone_format"),
    ({"phone": "(５５５) 123-4567"}, "phone", "phone_format"),
    ({"state": "ORE"}, "state", "max_length"),
    ({"zip_code": "97201-12345"}, "zip_code", "max_length"),
    ({"first_name": None}, "first_name", "required"),
    ({"last_name": "   "}, "last_name", "required"),
    ({"state": "ZZ"}, "state", "us_state"),
    ({"state": "or"}, "state", "us_state"),
    ({"zip_code": "9720"}, "zip_code", "zip_format"),
    ({"zip_code": "97201-12"}, "zip_code", "zip_format"),
    ({"zip_code": "ABCDE"}, "zip_code", "zip_format"),
    ({"email": "not-an-email"}, "email", "email_format"),
    ({"status": 3}, "status", "type"),
    ({"favourite_colour": "blue"}, "favourite_colour", "unknown_field"),
])
def test_member_validation(platform, changes, field, rule):
    _refused(platform, lambda uow: uow.members.create({**MEMBER_VALUES, **changes}), field, rule)
    assert platform.scalar("SELECT count(*) FROM members") == 0


def test_member_validation_on_update_and_what_passes(platform):
    member = platform.member(zip_code="97201-1234", state="PR", email=None, phone=None)
    assert member.zip_code == "97201-1234"
    error = _refused(platform, lambda uow: uow.members.update(member.id, member.updated_at, {"zip_code": "1"}),
                     "zip_code", "zip_format")
    assert str(error) == "zip_code: must be 5 digits or ZIP+4 (12345-6789)"  # the value is not echoed
    assert platform.scalar("SELECT zip_code FROM members") == "97201-1234"


def test_member_without_a_last_name_is_refused(platform):
    values = {k: v for k, v in MEMBER_VALUES.items() if k != "last_name"}
    _refused(platform, lambda uow: uow.members.create(values), "last_name", "required")


@pytest.mark.parametrize(("dob", "rule"), [
    (date.today() + timedelta(days=1), "not_future"),
    (date(date.today().year - 131, 1, 1), "plausible_age"),
])
def test_date_of_birth_must_be_plausible(platform, dob, rule):
    _refused(platform, lambda uow: uow.members.create(MEMBER_VALUES, dob=DateOfBirth(dob)), "dob", rule)


@pytest.mark.parametrize(("changes", "field", "rule"), [
    ({"call_type": "survey"}, "call_type", "enum"),
    ({"call_status": "done"}, "call_status", "enum"),
    ({"call_type": None}, "call_type", "required"),
    ({"outcome": "o" * 51}, "outcome", "max_length"),
    ({"ended_at": datetime(2026, 3, 2, 13, 59)}, "ended_at", "date_order"),
    ({"follow_up_required": True, "follow_up_date": date(2026, 3, 1)}, "follow_up_date", "date_order"),
    ({"follow_up_required": True}, "follow_up_date", "required"),
    ({"started_at": None, "ended_at": None}, "started_at", "required"),
    ({"call_status": "scheduled", "started_at": None, "ended_at": None}, "scheduled_at", "required"),
    ({"duration_seconds": 30}, "duration_seconds", "read_only"),
    ({"member_id": uuid.uuid4()}, "member_id", "reference"),
    ({"specialist_id": None}, "specialist_id", "reference"),
])
def test_call_validation(platform, changes, field, rule):
    member, specialist = platform.member(), platform.specialist()
    values = {"member_id": member.id, "specialist_id": specialist.id, "call_type": "outreach",
              "call_status": "completed", "started_at": datetime(2026, 3, 2, 14, 0),
              "ended_at": datetime(2026, 3, 2, 14, 12), **changes}
    _refused(platform, lambda uow: uow.calls.create(values), field, rule)
    assert platform.scalar("SELECT count(*) FROM call_records") == 0


def test_calls_compute_their_duration_and_follow_ups_may_be_on_the_day(platform):
    member, specialist = platform.member(), platform.specialist()
    call = platform.call(member, specialist, follow_up_required=True, follow_up_date=date(2026, 3, 2))
    assert call.duration_seconds == 720
    with platform.uow() as uow:
        longer = uow.calls.update(call.id, call.updated_at, {"ended_at": datetime(2026, 3, 2, 14, 30)})
        uow.commit()
    assert longer.duration_seconds == 1800
    row, = platform.audit(call.id, action="update")
    assert row.old_values == {"ended_at": "2026-03-02T14:12:00", "duration_seconds": 720}
    assert row.new_values == {"ended_at": "2026-03-02T14:30:00", "duration_seconds": 1800}
    _refused(platform, lambda uow: uow.calls.update(call.id, longer.updated_at,
                                                    {"follow_up_date": date(2026, 3, 1)}),
             "follow_up_date", "date_order")
    soon = datetime.now(timezone.utc).replace(tzinfo=None, microsecond=0) + timedelta(days=30)
    scheduled = platform.call(member, specialist, call_status="scheduled", started_at=None, ended_at=None,
                              scheduled_at=soon, follow_up_required=True,
                              follow_up_date=soon.date() + timedelta(days=7))
    assert scheduled.duration_seconds is None
    _refused(platform, lambda uow: uow.calls.update(scheduled.id, scheduled.updated_at,
                                                    {"follow_up_date": soon.date() - timedelta(days=1)}),
             "follow_up_date", "date_order")


def test_a_call_on_a_deleted_member_is_refused(platform):
    member, specialist = platform.member(), platform.specialist()
    with platform.uow() as uow:
        uow.members.delete(member.id, member.updated_at)
        uow.commit()
    _refused(platform, lambda uow: uow.calls.create({
        "member_id": member.id, "specialist_id": specialist.id, "call_type": "outreach",
        "call_status": "no_answer"}), "member_id", "reference")


@pytest.mark.parametrize(("values", "field", "rule"), [
    ({"expiration_date": date(2025, 12, 31), "effective_date": date(2026, 1, 1)}, "expiration_date", "date_order"),
    ({"premium_amount": Decimal("-0.01")}, "premium_amount", "range"),
    ({"deductible_amount": -5}, "deductible_amount", "range"),
    ({"copay_amount": "lots"}, "copay_amount", "type"),
    ({"plan_code": "C" * 51}, "plan_code", "max_length"),
    ({"plan_name": "N" * 256}, "plan_name", "max_length"),
    ({"plan_name": None}, "plan_name", "required"),
    ({"is_active": "yes"}, "is_active", "type"),
    ({"premium_amount": Decimal("NaN")}, "premium_amount", "type"),
    ({"deductible_amount": float("inf")}, "deductible_amount", "type"),
    ({"copay_amount": "\u0661\u0662"}, "copay_amount", "type"),  # Arabic-Indic digits: Decimal() reads them
])
def test_plan_validation(platform, values, field, rule):
    _refused(platform, lambda uow: uow.plans.create({"plan_code": "P", "plan_name": "Plan", **values}), field, rule)
    assert platform.scalar("SELECT count(*) FROM insurance_plans") == 0


def test_plan_dates_are_checked_against_the_stored_row(platform):
    plan = platform.plan(effective_date=date(2026, 1, 1), expiration_date=date(2026, 12, 31),
                         premium_amount=Decimal("99.99"))
    same_day = platform.plan("SAME", effective_date=date(2026, 1, 1), expiration_date=date(2026, 1, 1))
    assert same_day.expiration_date == same_day.effective_date
    _refused(platform, lambda uow: uow.plans.update(plan.id, plan.updated_at, {"expiration_date": date(2025, 6, 1)}),
             "expiration_date", "date_order")
    _refused(platform, lambda uow: uow.plans.update(plan.id, plan.updated_at, {"effective_date": date(2027, 1, 1)}),
             "expiration_date", "date_order")
    assert plan.premium_amount == Decimal("99.99")


def test_plan_codes_are_unique(platform):
    platform.plan("PPO-1")
    with platform.uow() as uow, pytest.raises(IntegrityError):
        uow.plans.create({"plan_code": "PPO-1", "plan_name": "Again"})
    assert platform.scalar("SELECT count(*) FROM insurance_plans") == 1


@pytest.mark.parametrize(("changes", "field", "rule"), [
    ({"risk_type": "legal"}, "risk_type", "enum"),
    ({"severity": "extreme"}, "severity", "enum"),
    ({"description": ""}, "description", "required"),
    ({"risk_type": "r" * 51}, "risk_type", "max_length"),
])
def test_risk_flag_validation(platform, changes, field, rule):
    call = platform.call(platform.member(), platform.specialist())
    values = {"risk_type": "medical", "severity": "high", "description": "d", **changes}
    _refused(platform, lambda uow: uow.risk_flags.raise_from_call(call.id, **values), field, rule)
    assert platform.scalar("SELECT count(*) FROM risk_flags") == 0


def test_a_risk_flag_takes_member_and_specialist_from_its_call(platform):
    member, specialist = platform.member(), platform.specialist()
    call = platform.call(member, specialist)
    with platform.uow() as uow:
        flag = uow.risk_flags.raise_from_call(call.id, risk_type="financial", severity="medium",
                                              description="cannot afford medication")
        uow.commit()
    assert (flag.call_record_id, flag.member_id, flag.specialist_id) == (call.id, member.id, specialist.id)
    _refused(platform, lambda uow: uow.risk_flags.update(flag.id, flag.updated_at, {"member_id": uuid.uuid4()}),
             "member_id", "read_only")
    _refused(platform, lambda uow: uow.risk_flags.raise_from_call(uuid.uuid4(), risk_type="other", severity="low",
                                                                  description="d"),
             "call_record_id", "reference")
    with platform.uow() as uow:
        raised = uow.risk_flags.update(flag.id, flag.updated_at, {"severity": "critical"})
        uow.commit()
    assert raised.severity == "critical"
    row, = platform.audit(flag.id, action="update")
    assert (row.old_values, row.new_values) == ({"severity": "medium"}, {"severity": "critical"})


# -- enrollments: date order, coverage, one primary plan at a time ------------------------------------


@pytest.fixture
def enrolled(platform):
    member = platform.member()
    first, second = platform.plan("PPO-1"), platform.plan("HMO-2")
    with platform.uow() as uow:
        primary = uow.enrollments.enroll(member.id, first.id, date(2026, 1, 1), is_primary=True,
                                         coverage_percentage=Decimal("80"))
        uow.commit()
    return member, first, second, primary


@pytest.mark.parametrize(("coverage", "ok"), [
    (Decimal("0"), True), (Decimal("100"), True), (Decimal("55.5"), True),
    (Decimal("100.01"), False), (Decimal("-1"), False), (101, False),
])
def test_coverage_is_between_0_and_100(platform, enrolled, coverage, ok):
    member, _, second, _ = enrolled

    def attempt(uow):
        return uow.enrollments.enroll(member.id, second.id, date(2026, 2, 1), coverage_percentage=coverage)

    if ok:
        with platform.uow() as uow:
            assert attempt(uow).coverage_percentage == Decimal(str(coverage))
    else:
        _refused(platform, attempt, "coverage_percentage", "range")


@pytest.mark.parametrize("coverage", [Decimal("NaN"), Decimal("-Infinity"), float("nan")])
def test_coverage_that_is_not_a_number_is_refused_not_raised(platform, enrolled, coverage):
    member, _, second, _ = enrolled
    _refused(platform, lambda uow: uow.enrollments.enroll(member.id, second.id, date(2026, 2, 1),
                                                          coverage_percentage=coverage), "coverage_percentage", "type")


def test_termination_not_before_enrollment(platform, enrolled):
    _, _, _, primary = enrolled
    _refused(platform, lambda uow: uow.enrollments.terminate(primary.id, primary.updated_at, date(2025, 12, 31)),
             "termination_date", "date_order")
    _refused(platform, lambda uow: uow.enrollments.update(primary.id, primary.updated_at,
                                                          {"status": "terminated"}),
             "termination_date", "required")
    _refused(platform, lambda uow: uow.enrollments.update(primary.id, primary.updated_at, {"status": "lapsed"}),
             "status", "enum")
    _refused(platform, lambda uow: uow.enrollments.update(primary.id, primary.updated_at, {"is_primary": False}),
             "is_primary", "read_only")
    row, = platform.sql("SELECT status, termination_date, is_primary FROM member_insurance_plans")
    assert tuple(row) == ("active", None, True)


def test_enrolling_a_second_primary_demotes_the_first(platform, enrolled):
    member, _, second, primary = enrolled
    with platform.uow() as uow:
        new_primary = uow.enrollments.enroll(member.id, second.id, date(2026, 3, 1), is_primary=True)
        uow.commit()
    with platform.uow() as uow:
        by_id = {e.id: e for e in uow.enrollments.for_member(member.id)}
    assert by_id[new_primary.id].is_primary is True
    assert by_id[primary.id].is_primary is False and by_id[primary.id].status == "active"
    demoted, = platform.audit(primary.id, action="update")
    assert (demoted.old_values, demoted.new_values) == ({"is_primary": True}, {"is_primary": False})
    created, = platform.audit(new_primary.id, action="create")
    assert created.new_values["is_primary"] is True
    assert demoted.created_at <= created.created_at  # audit times follow the order of the writes
    assert platform.scalar("SELECT count(*) FROM member_insurance_plans WHERE is_primary") == 1


def test_a_non_primary_enrollment_leaves_the_primary_alone(platform, enrolled):
    member, _, second, primary = enrolled
    with platform.uow() as uow:
        extra = uow.enrollments.enroll(member.id, second.id, date(2026, 3, 1))
        uow.commit()
    assert extra.is_primary is False and extra.status == "active"
    assert platform.audit(primary.id, action="update") == []
    assert platform.scalar("SELECT id FROM member_insurance_plans WHERE is_primary") == primary.id


def test_set_primary_moves_the_primary_plan(platform, enrolled):
    member, _, second, primary = enrolled
    with platform.uow() as uow:
        other = uow.enrollments.enroll(member.id, second.id, date(2026, 3, 1))
        uow.commit()
    with platform.uow() as uow:
        promoted = uow.enrollments.set_primary(other.id, other.updated_at)
        uow.commit()
    assert promoted.is_primary is True
    assert platform.scalar("SELECT is_primary FROM member_insurance_plans WHERE id = :id", id=primary.id) is False
    assert [(r.old_values, r.new_values) for r in platform.audit(other.id, action="update")] == [
        ({"is_primary": False}, {"is_primary": True})]
    assert [(r.old_values, r.new_values) for r in platform.audit(primary.id, action="update")] == [
        ({"is_primary": True}, {"is_primary": False})]


def test_terminating_the_primary_plan_ends_its_primacy(platform, enrolled):
    member, _, second, primary = enrolled
    with platform.uow() as uow:
        ended = uow.enrollments.terminate(primary.id, primary.updated_at, date(2026, 6, 30))
        uow.commit()
    assert (ended.status, ended.is_primary, ended.termination_date) == ("terminated", False, date(2026, 6, 30))
    row, = platform.audit(primary.id, action="update")
    assert row.old_values == {"status": "active", "is_primary": True, "termination_date": None}
    assert row.new_values == {"status": "terminated", "is_primary": False, "termination_date": "2026-06-30"}
    _refused(platform, lambda uow: uow.enrollments.set_primary(primary.id, ended.updated_at),
             "is_primary", "active_only")
    # Terminated on the day it began is allowed (not before).
    with platform.uow() as uow:
        other = uow.enrollments.enroll(member.id, second.id, date(2026, 7, 1), is_primary=True)
        same_day = uow.enrollments.terminate(other.id, other.updated_at, date(2026, 7, 1))
        uow.commit()
    assert same_day.status == "terminated"


def test_enrollment_references_and_duplicates(platform, enrolled):
    member, first, second, _ = enrolled
    _refused(platform, lambda uow: uow.enrollments.enroll(member.id, first.id, date(2026, 1, 1)),
             "enrollment_date", "unique")
    _refused(platform, lambda uow: uow.enrollments.enroll(uuid.uuid4(), first.id, date(2026, 1, 1)),
             "member_id", "reference")
    with platform.uow() as uow:
        uow.plans.delete(second.id, second.updated_at)
        uow.commit()
    _refused(platform, lambda uow: uow.enrollments.enroll(member.id, second.id, date(2026, 1, 1)),
             "insurance_plan_id", "reference")


def test_the_database_holds_at_most_one_live_primary_plan(platform, enrolled):
    member, _, second, _ = enrolled
    with pytest.raises(IntegrityError, match="uq_member_insurance_plans_one_primary"):
        with platform.engine.begin() as connection:
            connection.exec_driver_sql(
                "INSERT INTO member_insurance_plans (member_id, insurance_plan_id, enrollment_date, is_primary) "
                "VALUES (%s, %s, '2026-02-01', true)", (member.id, second.id))


# -- specialists: user_id checked against the identity database -----------------------------------


def test_specialist_user_id_must_name_a_known_user(platform):
    stranger = uuid.uuid4()
    _refused(platform, lambda uow: uow.specialists.create({"user_id": stranger, "license_number": "L"}),
             "user_id", "reference")
    specialist = platform.specialist()
    _refused(platform, lambda uow: uow.specialists.update(specialist.id, specialist.updated_at,
                                                          {"user_id": stranger}),
             "user_id", "reference")
    colleague = uuid.uuid4()
    platform.known_users.add(colleague)
    with platform.uow() as uow:
        moved = uow.specialists.update(specialist.id, specialist.updated_at, {"user_id": colleague})
        uow.commit()
    assert moved.user_id == colleague
    # The lookup is asked only when user_id is set or changes.
    platform.known_users.discard(colleague)
    with platform.uow() as uow:
        renamed = uow.specialists.update(specialist.id, moved.updated_at, {"license_number": "LIC-2"})
        without_user = uow.specialists.create({"license_number": "LIC-3"})
        uow.commit()
    assert renamed.license_number == "LIC-2" and without_user.user_id is None


def test_specialist_user_id_cannot_be_checked_without_an_identity_lookup(platform):
    actor = platform.admin
    uow = PlatformUnitOfWork(platform.engine, actor, cipher=platform.cipher)  # no user_exists
    with uow, pytest.raises(CarecliError, match="no identity lookup"):
        uow.specialists.create({"user_id": actor.user_id, "license_number": "L"})
    assert platform.scalar("SELECT count(*) FROM specialists") == 0


def test_specialist_validation_of_columns(platform):
    _refused(platform, lambda uow: uow.specialists.create({"license_number": "L" * 51}), "license_number",
             "max_length")
    _refused(platform, lambda uow: uow.specialists.create({"phone": "5" * 21}), "phone", "max_length")


def test_deactivating_a_user_makes_their_specialist_inactive(platform):
    specialist = platform.specialist()
    with platform.uow() as uow:
        inactive = uow.specialists.deactivate_for_user(specialist.user_id)
        again = uow.specialists.deactivate_for_user(specialist.user_id)
        nobody = uow.specialists.deactivate_for_user(uuid.uuid4())
        uow.commit()
    assert inactive.is_active is False and again == inactive and nobody is None
    row, = platform.audit(specialist.id, action="update")
    assert (row.old_values, row.new_values) == ({"is_active": True}, {"is_active": False})


def test_specialist_plan_links_are_kept_once_and_revived(platform):
    specialist, plan = platform.specialist(), platform.plan()
    # One transaction each: audit rows of one transaction share created_at and have no order among them.
    with platform.uow() as uow:
        link = uow.specialist_plans.link(specialist.id, plan.id, notes="n")
        assert uow.specialist_plans.link(specialist.id, plan.id) == link
        uow.commit()
    with platform.uow() as uow:
        uow.specialist_plans.delete(link.id, link.updated_at)
        assert uow.specialist_plans.for_specialist(specialist.id) == []
        uow.commit()
    with platform.uow() as uow:
        revived = uow.specialist_plans.link(specialist.id, plan.id, notes="again")
        uow.commit()
    assert revived.id == link.id and revived.deleted_at is None
    assert [row.action for row in platform.audit(link.id)] == ["create", "delete", "restore"]
    _refused(platform, lambda uow: uow.specialist_plans.link(specialist.id, uuid.uuid4()),
             "insurance_plan_id", "reference")
    _refused(platform, lambda uow: uow.specialist_plans.link(uuid.uuid4(), plan.id), "specialist_id", "reference")


# -- metadata --------------------------------------------------------------------------------------------


def test_metadata_put_creates_updates_and_revives(platform):
    member = platform.member()
    with platform.uow() as uow:
        created = uow.metadata.put("member", member.id, "language", {"code": "yo"})
        uow.commit()
    with platform.uow() as uow:
        updated = uow.metadata.put("member", member.id, "language", {"code": "en"})
        uow.commit()
    with platform.uow() as uow:
        uow.metadata.delete(updated.id, updated.updated_at)
        uow.commit()
    with platform.uow() as uow:
        revived = uow.metadata.put("member", member.id, "language", ["fr"])
        uow.commit()
    assert created.id == updated.id == revived.id
    assert revived.metadata_value == ["fr"] and revived.deleted_at is None
    with platform.uow() as uow:
        assert uow.metadata.for_entity("member", member.id) == [revived]
    assert [row.action for row in platform.audit(created.id)] == ["create", "update", "delete", "restore"]
    _refused(platform, lambda uow: uow.metadata.put("member", member.id, "k" * 101, 1), "metadata_key", "max_length")
    _refused(platform, lambda uow: uow.metadata.put("x" * 51, member.id, "k", 1), "entity_type", "max_length")


def test_a_refused_primary_enrollment_does_not_demote_the_current_primary(platform, enrolled):
    """A batch job that catches the error and commits its other work must not lose the primary plan."""
    member, _, second, primary = enrolled
    with platform.uow() as uow:
        with pytest.raises(ValidationError) as caught:
            uow.enrollments.enroll(member.id, second.id, date(2026, 3, 1), is_primary=True,
                                   coverage_percentage=Decimal("120"))
        assert caught.value.field == "coverage_percentage"
        uow.commit()
    assert platform.scalar("SELECT is_primary FROM member_insurance_plans WHERE id = :id", id=primary.id) is True
    assert platform.audit(primary.id, action="update") == []
