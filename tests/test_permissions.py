"""Permission checks in the repositories: refusals are clear, audited, committed, and change nothing;
API-token scopes narrow a role's permissions."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from typing import Any

import pytest
from sqlalchemy.exc import IntegrityError

from carecli.data.actor import Actor
from carecli.data.crypto.phi import Ssn
from carecli.data.permissions import ALL_PERMISSIONS, DEFAULT_ROLES, Permission
from carecli.data.records import Call, Enrollment, Member, Plan, RiskFlag, Specialist
from carecli.data.unit_of_work import PlatformUnitOfWork
from carecli.errors import CarecliError, PermissionDenied
from tests.platform_fixtures import CLIENT_IP, MEMBER_VALUES

NIL = uuid.UUID(int=0)
DATA_TABLES = ("members", "specialists", "call_records", "insurance_plans", "member_insurance_plans",
               "specialist_insurance_plans", "metadata", "risk_flags", "data_keys")


@dataclass
class World:
    """A little committed data for the refused operations to aim at."""

    member: Member
    deleted_member: Member
    specialist: Specialist
    plan: Plan
    other_plan: Plan
    call: Call
    flag: RiskFlag
    enrollment: Enrollment


@pytest.fixture
def world(platform) -> World:
    member = platform.member()
    gone = platform.member(first_name="Gone")
    specialist = platform.specialist()
    plan, other_plan = platform.plan("PPO-1"), platform.plan("HMO-2")
    call = platform.call(member, specialist)
    with platform.uow() as uow:
        gone = uow.members.delete(gone.id, gone.updated_at)
        flag = uow.risk_flags.raise_from_call(call.id, risk_type="safety", severity="low", description="stairs")
        enrollment = uow.enrollments.enroll(member.id, plan.id, date(2026, 1, 1), is_primary=True)
        uow.specialist_plans.link(specialist.id, plan.id)
        uow.metadata.put("member", member.id, "language", "en")
        uow.commit()
    return World(member, gone, specialist, plan, other_plan, call, flag, enrollment)


def snapshot(platform) -> dict[str, tuple[int, str]]:
    """Row count and a digest of every row of every data table (audit_logs aside)."""
    return {
        table: tuple(platform.sql(f"SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) "
                                  f"FROM {table} t")[0])
        for table in DATA_TABLES
    }


Operation = Callable[[PlatformUnitOfWork, World], Any]

# (missing permission, what is tried, operation words in the message, entity type, entity id of the deny row)
REFUSALS: list[tuple[str, Operation, str, str, Callable[[World], uuid.UUID]]] = [
    ("members:read", lambda u, w: u.members.open(w.member.id), "open member records", "member",
     lambda w: w.member.id),
    ("members:read", lambda u, w: u.members.get(w.member.id), "open member records", "member",
     lambda w: w.member.id),
    ("members:read", lambda u, w: u.calls.for_member(w.member.id), "read call history", "call_record",
     lambda w: w.member.id),
    ("members:read", lambda u, w: u.calls.get(w.call.id), "read call_records", "call_record",
     lambda w: w.call.id),
    ("members:read", lambda u, w: u.enrollments.for_member(w.member.id), "read enrollments",
     "member_insurance_plan", lambda w: w.member.id),
    ("members:read", lambda u, w: u.risk_flags.for_member(w.member.id), "read risk flags", "risk_flag",
     lambda w: w.member.id),
    ("members:read", lambda u, w: u.metadata.for_entity("member", w.member.id), "read notes", "metadata",
     lambda w: w.member.id),
    ("members:read", lambda u, w: u.specialists.list(), "list specialists", "specialist", lambda w: NIL),
    ("members:write", lambda u, w: u.members.create(MEMBER_VALUES), "create members", "member", lambda w: NIL),
    ("members:write", lambda u, w: u.members.create(MEMBER_VALUES, ssn=Ssn("123456789")), "create members",
     "member", lambda w: NIL),
    ("members:write", lambda u, w: u.members.update(w.member.id, w.member.updated_at, {"status": "inactive"}),
     "edit members", "member", lambda w: w.member.id),
    ("members:write", lambda u, w: u.members.update(w.member.id, w.member.updated_at, {}, ssn=Ssn("111223333")),
     "edit members", "member", lambda w: w.member.id),
    ("members:write", lambda u, w: u.members.delete(w.member.id, w.member.updated_at), "delete members",
     "member", lambda w: w.member.id),
    ("members:write", lambda u, w: u.metadata.put("member", w.member.id, "language", "fr"), "write notes",
     "metadata", lambda w: w.member.id),
    ("phi:reveal", lambda u, w: u.members.reveal(w.member.id, ["ssn"], "identity check"),
     "reveal SSN or date of birth", "member", lambda w: w.member.id),
    ("calls:write", lambda u, w: u.calls.create({"member_id": w.member.id, "specialist_id": w.specialist.id,
                                                  "call_type": "support", "call_status": "no_answer"}),
     "log calls", "call_record", lambda w: NIL),
    ("calls:write", lambda u, w: u.calls.update(w.call.id, w.call.updated_at, {"outcome": "x"}), "edit calls",
     "call_record", lambda w: w.call.id),
    ("calls:write", lambda u, w: u.calls.delete(w.call.id, w.call.updated_at), "delete call_records",
     "call_record", lambda w: w.call.id),
    ("flags:write", lambda u, w: u.risk_flags.raise_from_call(w.call.id, risk_type="other", severity="low",
                                                              description="d"),
     "raise risk flags", "risk_flag", lambda w: NIL),
    ("flags:write", lambda u, w: u.risk_flags.update(w.flag.id, w.flag.updated_at, {"severity": "high"}),
     "edit risk flags", "risk_flag", lambda w: w.flag.id),
    ("enrollments:write", lambda u, w: u.enrollments.enroll(w.member.id, w.other_plan.id, date(2026, 2, 1)),
     "enroll members", "member_insurance_plan", lambda w: NIL),
    ("enrollments:write", lambda u, w: u.enrollments.set_primary(w.enrollment.id, w.enrollment.updated_at),
     "change the primary plan", "member_insurance_plan", lambda w: w.enrollment.id),
    ("enrollments:write", lambda u, w: u.enrollments.terminate(w.enrollment.id, w.enrollment.updated_at,
                                                               date(2026, 6, 30)),
     "terminate enrollments", "member_insurance_plan", lambda w: w.enrollment.id),
    ("plans:write", lambda u, w: u.plans.create({"plan_code": "NEW", "plan_name": "New"}), "add insurance plans",
     "insurance_plan", lambda w: NIL),
    ("plans:write", lambda u, w: u.plans.update(w.plan.id, w.plan.updated_at, {"plan_name": "Renamed"}),
     "edit insurance plans", "insurance_plan", lambda w: w.plan.id),
    ("specialists:write", lambda u, w: u.specialists.create({"license_number": "LIC-9"}), "add specialists",
     "specialist", lambda w: NIL),
    ("specialists:write", lambda u, w: u.specialists.update(w.specialist.id, w.specialist.updated_at,
                                                            {"phone": "(503) 555-0000"}),
     "edit specialists", "specialist", lambda w: w.specialist.id),
    ("specialists:write", lambda u, w: u.specialist_plans.link(w.specialist.id, w.other_plan.id),
     "link specialists to plans", "specialist_insurance_plan", lambda w: NIL),
    # The link already exists: still a write, still refused (not silently returned).
    ("specialists:write", lambda u, w: u.specialist_plans.link(w.specialist.id, w.plan.id),
     "link specialists to plans", "specialist_insurance_plan", lambda w: NIL),
    ("records:restore", lambda u, w: u.members.restore(w.deleted_member.id), "restore members", "member",
     lambda w: w.deleted_member.id),
    ("audit:read", lambda u, w: u.audit_log.search(), "read the audit log", "audit_log", lambda w: NIL),
    ("audit:read", lambda u, w: u.audit_log.for_entity("member", w.member.id), "read the audit log",
     "audit_log", lambda w: NIL),
]


@pytest.mark.parametrize(("permission", "attempt", "operation", "entity_type", "entity_id"), REFUSALS,
                         ids=[f"{r[0]}-{r[2].replace(' ', '_')}-{n}" for n, r in enumerate(REFUSALS)])
def test_refused_operation_is_clear_audited_and_changes_nothing(platform, world, permission, attempt,
                                                               operation, entity_type, entity_id):
    actor = platform.actor(*(ALL_PERMISSIONS - {permission}), role="specialist")
    before = snapshot(platform)
    audit_before = platform.audit_count()

    with platform.uow(actor) as uow, pytest.raises(PermissionDenied) as caught:
        attempt(uow, world)

    assert str(caught.value) == f"specialist may not {operation}: it needs the '{permission}' permission"
    assert snapshot(platform) == before
    assert platform.audit_count() == audit_before + 1
    row, = platform.audit(action="deny")
    assert (row.entity_type, row.entity_id, row.user_id) == (entity_type, entity_id(world), actor.user_id)
    assert row.new_values == {"operation": operation, "permission": permission}
    assert row.old_values is None
    assert str(row.ip_address) == CLIENT_IP
    assert row.user_agent == actor.user_agent


def test_a_denial_row_survives_the_rollback_and_other_work_still_commits(platform, world):
    actor = platform.actor(Permission.MEMBERS_READ, Permission.MEMBERS_WRITE, role="specialist")
    with platform.uow(actor) as uow:
        uow.members.update(world.member.id, world.member.updated_at, {"status": "suspended"})
        with pytest.raises(PermissionDenied):
            uow.members.restore(world.deleted_member.id)
        uow.commit()
    assert platform.scalar("SELECT status FROM members WHERE id = :id", id=world.member.id) == "suspended"
    assert platform.scalar("SELECT deleted_at FROM members WHERE id = :id", id=world.deleted_member.id) is not None
    assert sorted(row.action for row in platform.audit(user_id=actor.user_id)) == ["deny", "update"]


def test_the_permission_check_comes_before_validation(platform, world):
    """An actor who may not write learns nothing about the data's rules, and nothing is written."""
    reader = platform.actor(Permission.MEMBERS_READ, role="auditor")
    with platform.uow(reader) as uow, pytest.raises(PermissionDenied):
        uow.members.create({"first_name": "x" * 500, "status": "bogus"})
    with platform.uow(reader) as uow, pytest.raises(PermissionDenied):
        uow.members.reveal(world.member.id, ["ssn"], "")


def test_message_without_a_role_names_the_user(platform, world):
    actor = platform.actor(role=None)
    with platform.uow(actor) as uow, pytest.raises(PermissionDenied) as caught:
        uow.members.open(world.member.id)
    assert str(caught.value) == "this user may not open member records: it needs the 'members:read' permission"


def test_restore_needs_records_restore_even_with_every_write_permission(platform, world):
    writer = platform.actor(*(ALL_PERMISSIONS - {Permission.RECORDS_RESTORE}), role="supervisor")
    with platform.uow(writer) as uow, pytest.raises(PermissionDenied, match="records:restore"):
        uow.members.restore(world.deleted_member.id)
    restorer = platform.actor(Permission.RECORDS_RESTORE, role="admin")
    with platform.uow(restorer) as uow:
        restored = uow.members.restore(world.deleted_member.id)
        uow.commit()
    assert restored.deleted_at is None
    row, = platform.audit(world.deleted_member.id, action="restore")
    assert row.user_id == restorer.user_id


def test_the_plan_catalog_needs_no_permission(platform, world):
    nobody = platform.actor(role="guest")
    with platform.uow(nobody) as uow:
        assert [plan.plan_code for plan in uow.plans.list()] == ["HMO-2", "PPO-1"]
        assert uow.plans.get(world.plan.id).plan_code == "PPO-1"
        assert uow.plans.by_code("HMO-2").id == world.other_plan.id
    assert platform.audit(action="deny") == []


# -- API-token scopes ----------------------------------------------------------------------------


def test_actor_can_needs_the_permission_and_the_scope():
    user = uuid.uuid4()
    session = Actor.create(user, ["members:read", "members:write"], channel="cli")
    assert session.can(Permission.MEMBERS_READ) and session.can("members:write")
    assert not session.can(Permission.PHI_REVEAL)

    token = Actor.create(user, ["members:read", "members:write"], channel="cli", scopes=["members:read"])
    assert token.can(Permission.MEMBERS_READ)
    assert not token.can(Permission.MEMBERS_WRITE)

    # A scope never grants what the role does not have.
    widened = Actor.create(user, ["members:read"], channel="cli", scopes=["members:read", "phi:reveal"])
    assert not widened.can(Permission.PHI_REVEAL)

    nothing = Actor.create(user, ["members:read"], channel="cli", scopes=[])
    assert not nothing.can(Permission.MEMBERS_READ)


def test_token_scopes_narrow_what_the_repositories_allow(platform, world):
    token = platform.actor(*DEFAULT_ROLES["supervisor"][1], role="supervisor", scopes=["members:read"])
    with platform.uow(token) as uow:
        assert uow.members.open(world.member.id).id == world.member.id
        with pytest.raises(PermissionDenied) as caught:
            uow.members.update(world.member.id, world.member.updated_at, {"status": "inactive"})
        with pytest.raises(PermissionDenied):
            uow.members.reveal(world.member.id, ["ssn"], "identity check")
    assert "'members:write'" in str(caught.value)
    assert platform.scalar("SELECT status FROM members WHERE id = :id", id=world.member.id) == "active"
    denials = platform.audit(action="deny", user_id=token.user_id)
    assert sorted(row.new_values["permission"] for row in denials) == ["members:write", "phi:reveal"]


def test_a_scope_outside_the_role_grants_nothing(platform, world):
    token = platform.actor(*DEFAULT_ROLES["auditor"][1], role="auditor", scopes=["members:read", "phi:reveal"])
    with platform.uow(token) as uow, pytest.raises(PermissionDenied, match="phi:reveal"):
        uow.members.reveal(world.member.id, ["ssn"], "identity check")


# -- the default roles ----------------------------------------------------------------------------


def test_default_roles_use_only_the_vocabulary():
    assert set(DEFAULT_ROLES) == {"specialist", "supervisor", "admin", "auditor", "importer"}
    for name, (description, permissions) in DEFAULT_ROLES.items():
        assert description
        assert set(permissions) <= ALL_PERMISSIONS, name
        assert permissions == sorted(set(permissions)), name
    assert set(DEFAULT_ROLES["admin"][1]) == ALL_PERMISSIONS


def test_default_roles_in_practice(platform, world):
    def actor(role: str) -> Actor:
        return platform.actor(*DEFAULT_ROLES[role][1], role=role)

    auditor, specialist, supervisor = actor("auditor"), actor("specialist"), actor("supervisor")
    with platform.uow(auditor) as uow:
        uow.members.open(world.member.id)
        assert uow.audit_log.for_entity("member", world.member.id)
        with pytest.raises(PermissionDenied, match="phi:reveal"):
            uow.members.reveal(world.member.id, ["dob"], "curious")
        with pytest.raises(PermissionDenied, match="members:write"):
            uow.members.update(world.member.id, world.member.updated_at, {"status": "inactive"})
    with platform.uow(specialist) as uow:
        assert uow.members.reveal(world.member.id, ["ssn"], "identity check").ssn.reveal() == "123456789"
        with pytest.raises(PermissionDenied, match="audit:read"):
            uow.audit_log.search()
        with pytest.raises(PermissionDenied, match="enrollments:write"):
            uow.enrollments.terminate(world.enrollment.id, world.enrollment.updated_at, date(2026, 6, 30))
        with pytest.raises(PermissionDenied, match="records:restore"):
            uow.members.restore(world.deleted_member.id)
    with platform.uow(supervisor) as uow:
        uow.enrollments.terminate(world.enrollment.id, world.enrollment.updated_at, date(2026, 6, 30))
        assert uow.audit_log.search(action="deny")
        with pytest.raises(PermissionDenied, match="plans:write"):
            uow.plans.create({"plan_code": "X", "plan_name": "X"})


def test_a_unit_of_work_needs_an_actor(platform):
    with pytest.raises(CarecliError, match="no actor"):
        PlatformUnitOfWork(platform.engine, None)  # type: ignore[arg-type]
    uow = platform.uow()
    with pytest.raises(CarecliError, match="not open"):
        uow.members.open(uuid.uuid4())


def test_a_refusal_that_cannot_be_audited_still_refuses(platform, world):
    platform.block_audit_inserts()
    reader = platform.actor(Permission.MEMBERS_READ, role="auditor")
    before = snapshot(platform)
    with platform.uow(reader) as uow, pytest.raises((PermissionDenied, IntegrityError)):
        uow.members.delete(world.member.id, world.member.updated_at)
    assert snapshot(platform) == before
