"""Audit rows: written with the change, PHI reduced to the fact it changed, reads committed first,
fail closed, append-only, and readable through the audit log repository."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import uuid
from datetime import date, timedelta

import psycopg
import pytest
from sqlalchemy.exc import IntegrityError

from carecli.data.actor import Actor, client_ip, user_agent
from carecli.data.crypto.phi import MASK, DateOfBirth, Ssn
from carecli.data.permissions import Permission
from carecli.data.records import AuditEntry
from carecli.errors import CarecliError, PermissionDenied, ValidationError
from tests.platform_fixtures import CLIENT_IP, MEMBER_VALUES

REDACTED = "[redacted]"
PLAINTEXT = ("Ada", "Okafor", "ada.okafor", "555-0100", "Harbour", "Portland", "97201", "123456789",
             "123-45-6789", "1961-04-02", "diabetes")


def _no_plaintext(row) -> None:
    """Neither PHI nor contact details nor free text appear anywhere in an audit row."""
    dumped = json.dumps([row.old_values, row.new_values])
    for value in PLAINTEXT:
        assert value not in dumped


def _who(row, actor: Actor) -> None:
    assert row.user_id == actor.user_id
    assert row.ip_address == ipaddress.ip_address(CLIENT_IP)
    assert row.user_agent == user_agent("ssh")


# -- create / update / delete / restore: one row each, same transaction ---------------------


def test_create_writes_one_row_in_the_same_transaction(platform):
    with platform.uow() as uow:
        member = uow.members.create(MEMBER_VALUES, ssn=Ssn("123-45-6789"), dob=DateOfBirth(date(1961, 4, 2)))
        # Seen from another connection, neither the member nor its audit row exists yet.
        assert platform.scalar("SELECT count(*) FROM members") == 0
        assert platform.audit_count() == 0
        uow.commit()

    rows = platform.audit()
    assert len(rows) == 1
    row = rows[0]
    assert (row.entity_type, row.entity_id, row.action) == ("member", member.id, "create")
    _who(row, platform.admin)
    assert row.old_values is None
    assert row.new_values == {
        "first_name": REDACTED, "last_name": REDACTED, "email": REDACTED, "phone": REDACTED,
        "address_line1": REDACTED, "address_line2": None, "city": REDACTED, "state": REDACTED,
        "zip_code": REDACTED, "encrypted_ssn": REDACTED, "encrypted_dob": REDACTED,
        "status": "active", "deleted_at": None,
    }
    _no_plaintext(row)


def test_a_rolled_back_change_leaves_no_audit_row(platform):
    with platform.uow() as uow:
        uow.members.create(MEMBER_VALUES)
        # no commit
    assert platform.scalar("SELECT count(*) FROM members") == 0
    assert platform.audit_count() == 0


def test_update_records_only_what_changed_with_contact_details_reduced(platform):
    member = platform.member()
    with platform.uow() as uow:
        updated = uow.members.update(member.id, member.updated_at,
                                     {"email": "ada@example.net", "status": "inactive", "city": "Portland"})
        uow.commit()
    assert updated.status == "inactive" and updated.email == "ada@example.net"

    rows = platform.audit(member.id, action="update")
    assert len(rows) == 1
    row = rows[0]
    _who(row, platform.admin)
    # city did not change, so it is not listed; email did, and shows only that it changed.
    assert row.old_values == {"email": REDACTED, "status": "active"}
    assert row.new_values == {"email": REDACTED, "status": "inactive"}
    _no_plaintext(row)


def test_changing_ssn_or_dob_is_recorded_as_a_change_without_values(platform):
    member = platform.member()
    with platform.uow() as uow:
        uow.members.update(member.id, member.updated_at, {}, ssn=Ssn("987-65-4321"))
        uow.commit()
    row, = platform.audit(member.id, action="update")
    assert row.old_values == {"encrypted_ssn": REDACTED}
    assert row.new_values == {"encrypted_ssn": REDACTED}
    assert "987654321" not in json.dumps(row.new_values)


def test_clearing_a_contact_field_shows_it_was_cleared(platform):
    member = platform.member()
    with platform.uow() as uow:
        uow.members.update(member.id, member.updated_at, {"phone": None})
        uow.commit()
    row, = platform.audit(member.id, action="update")
    assert row.old_values == {"phone": REDACTED}
    assert row.new_values == {"phone": None}


def test_soft_delete_and_restore_write_one_row_each(platform):
    member = platform.member()
    with platform.uow() as uow:
        deleted = uow.members.delete(member.id, member.updated_at)
        uow.commit()
    with platform.uow() as uow:
        restored = uow.members.restore(member.id)
        uow.commit()
    assert deleted.deleted_at is not None and restored.deleted_at is None

    actions = [(row.action, row.old_values, row.new_values) for row in platform.audit(member.id)]
    assert actions == [
        ("create", None, actions[0][2]),
        ("delete", {"deleted_at": None}, {"deleted_at": deleted.deleted_at.isoformat()}),
        ("restore", {"deleted_at": deleted.deleted_at.isoformat()}, {"deleted_at": None}),
    ]
    for row in platform.audit(member.id):
        _who(row, platform.admin)
        assert (row.entity_type, row.entity_id) == ("member", member.id)


def test_every_entity_redacts_its_free_text(platform):
    member = platform.member()
    specialist = platform.specialist(phone="555-0142")
    plan = platform.plan(premium_amount="120.50")
    call = platform.call(member, specialist)
    with platform.uow() as uow:
        flag = uow.risk_flags.raise_from_call(call.id, risk_type="medical", severity="high",
                                              description="missed insulin for a week")
        enrollment = uow.enrollments.enroll(member.id, plan.id, date(2026, 1, 1), is_primary=True,
                                            notes="member mentioned a heart condition")
        link = uow.specialist_plans.link(specialist.id, plan.id, notes="covers cardiology cases")
        note = uow.metadata.put("member", member.id, "preferred_language", {"text": "Yoruba, hard of hearing"})
        uow.commit()

    def created(entity_id):
        row, = platform.audit(entity_id, action="create")
        return row.entity_type, row.new_values

    entity, values = created(specialist.id)
    assert entity == "specialist"
    assert values["phone"] == REDACTED and values["license_number"] == "LIC-1"
    assert values["user_id"] == str(specialist.user_id)

    entity, values = created(call.id)
    assert entity == "call_record"
    assert values["call_notes"] == REDACTED
    assert (values["call_type"], values["call_status"], values["duration_seconds"]) == ("outreach", "completed", 720)
    assert values["member_id"] == str(member.id) and values["started_at"] == "2026-03-02T14:00:00"

    entity, values = created(flag.id)
    assert entity == "risk_flag"
    assert values["description"] == REDACTED and values["severity"] == "high"

    entity, values = created(enrollment.id)
    assert entity == "member_insurance_plan"
    assert values["notes"] == REDACTED and values["is_primary"] is True
    assert values["enrollment_date"] == "2026-01-01" and values["coverage_percentage"] == "100.00"

    entity, values = created(link.id)
    assert entity == "specialist_insurance_plan" and values["notes"] == REDACTED

    entity, values = created(note.id)
    assert entity == "metadata"
    assert values["metadata_value"] == REDACTED and values["metadata_key"] == "preferred_language"

    entity, values = created(plan.id)  # the plan catalog is not PHI: values in the clear
    assert entity == "insurance_plan"
    assert values["plan_code"] == "PPO-1" and values["premium_amount"] == "120.50"

    for row in platform.audit():
        assert "insulin" not in json.dumps(row.new_values) and "Yoruba" not in json.dumps(row.new_values)
        assert "heart" not in json.dumps(row.new_values) and "cardiology" not in json.dumps(row.new_values)
        _no_plaintext(row)


# -- PHI reads: audited and committed before the value is returned ---------------------------


def test_open_commits_a_read_row_before_returning(platform):
    member = platform.member()
    reader = platform.actor(Permission.MEMBERS_READ, role="auditor")
    before = platform.audit_count()
    with platform.uow(reader) as uow:
        opened = uow.members.open(member.id)
        # Already committed when the value is in our hands: another connection sees it.
        rows = platform.audit(member.id, action="read")
        assert len(rows) == 1
        # The caller leaves without committing; the read row must survive.
    assert opened.first_name == "Ada"
    assert platform.audit_count() == before + 1
    row, = platform.audit(member.id, action="read")
    assert row.entity_type == "member"
    assert row.old_values is None
    assert row.new_values == {"purpose": "open", "fields": ["contact"]}
    _who(row, reader)


def test_get_of_a_member_is_an_audited_open(platform):
    member = platform.member()
    with platform.uow() as uow:
        uow.members.get(member.id)
    assert len(platform.audit(member.id, action="read")) == 1


def test_reveal_commits_a_read_row_naming_fields_and_reason(platform):
    member = platform.member()
    with platform.uow() as uow:
        revealed = uow.members.reveal(member.id, ["ssn"], "  verifying identity on inbound call ")
        rows = platform.audit(member.id, action="read")
        assert len(rows) == 1
    row = rows[0]
    assert row.new_values == {"purpose": "reveal", "fields": ["ssn"], "reason": "verifying identity on inbound call"}
    _who(row, platform.admin)
    _no_plaintext(row)
    assert repr(revealed.ssn) == f"Ssn({MASK})" and str(revealed.ssn) == MASK
    assert revealed.ssn.reveal() == "123456789"
    assert revealed.dob is None  # not asked for


def test_reveal_of_both_fields(platform):
    member = platform.member()
    with platform.uow() as uow:
        revealed = uow.members.reveal(member.id, ["dob", "ssn", "dob"], "annual eligibility check")
    assert revealed.dob.reveal() == date(1961, 4, 2)
    assert revealed.ssn.formatted() == "123-45-6789"
    row, = platform.audit(member.id, action="read")
    assert row.new_values["fields"] == ["dob", "ssn"]


@pytest.mark.parametrize(("fields", "reason", "field", "rule"), [
    (["ssn"], "", "reason", "required"),
    (["ssn"], " ok ", "reason", "required"),
    (["ssn"], "x" * 501, "reason", "max_length"),
    ([], "a good reason", "fields", "enum"),
    (["ssn", "email"], "a good reason", "fields", "enum"),
])
def test_a_refused_reveal_writes_no_read_row(platform, fields, reason, field, rule):
    member = platform.member()
    before = platform.audit_count()
    with platform.uow() as uow, pytest.raises(ValidationError) as caught:
        uow.members.reveal(member.id, fields, reason)
    assert (caught.value.field, caught.value.rule) == (field, rule)
    assert platform.audit_count() == before


# -- a failing audit insert blocks the change or the read ----------------------------------


def test_failing_audit_insert_blocks_a_create(platform):
    platform.block_audit_inserts()
    with platform.uow() as uow, pytest.raises(IntegrityError, match="test_block"):
        uow.members.create(MEMBER_VALUES, ssn=Ssn("123456789"))
    assert platform.scalar("SELECT count(*) FROM members") == 0
    assert platform.audit_count() == 0


def test_failing_audit_insert_blocks_an_update_and_a_delete(platform):
    member = platform.member()
    platform.block_audit_inserts()
    with platform.uow() as uow, pytest.raises(IntegrityError, match="test_block"):
        uow.members.update(member.id, member.updated_at, {"status": "suspended"})
    with platform.uow() as uow, pytest.raises(IntegrityError, match="test_block"):
        uow.members.delete(member.id, member.updated_at)
    row, = platform.sql("SELECT status, deleted_at, updated_at FROM members")
    assert (row.status, row.deleted_at, row.updated_at) == ("active", None, member.updated_at)
    assert platform.audit_count() == 1  # only the create from before the block


def test_failing_audit_insert_blocks_a_create_even_if_the_caller_commits_anyway(platform):
    platform.block_audit_inserts()
    with platform.uow() as uow:
        with pytest.raises(IntegrityError):
            uow.plans.create({"plan_code": "HMO-9", "plan_name": "HMO nine"})
        with contextlib.suppress(Exception):  # the transaction is aborted: a commit cannot save the plan
            uow.commit()
    assert platform.scalar("SELECT count(*) FROM insurance_plans") == 0


def test_failing_audit_insert_blocks_a_reveal_and_an_open(platform):
    member = platform.member()
    platform.block_audit_inserts()
    result = None
    with platform.uow() as uow:
        with pytest.raises(IntegrityError, match="test_block"):
            result = uow.members.reveal(member.id, ["ssn", "dob"], "verifying identity")
        with pytest.raises(IntegrityError, match="test_block"):
            result = uow.members.open(member.id)
    assert result is None
    assert platform.audit(member.id, action="read") == []


# -- audit_logs is append-only ---------------------------------------------------------------


def _owner_connection(platform) -> psycopg.Connection:
    url = platform.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    return psycopg.connect(url, autocommit=True)


@pytest.mark.parametrize("statement", [
    "UPDATE audit_logs SET action = 'nothing'",
    "DELETE FROM audit_logs",
    "TRUNCATE audit_logs",
])
def test_audit_logs_reject_update_delete_and_truncate_even_by_the_owner(platform, statement):
    platform.member()
    with _owner_connection(platform) as conn:
        [(owner, me)] = conn.execute("SELECT pg_get_userbyid(relowner), current_user FROM pg_class "
                                     "WHERE relname = 'audit_logs'").fetchall()
        assert owner == me
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="audit_logs is append-only"):
            conn.execute(statement)
    assert platform.audit_count() == 1
    row, = platform.audit()
    assert row.action == "create"


# -- where the actor is ------------------------------------------------------------------------


@pytest.mark.parametrize(("environ", "expected"), [
    ({"SSH_CONNECTION": "203.0.113.7 52311 10.0.0.5 22"}, "203.0.113.7"),
    ({"SSH_CONNECTION": "2001:db8::17 40000 2001:db8::1 22"}, "2001:db8::17"),
    ({"SSH_CONNECTION": "not-an-address 1 2 3"}, None),
    ({"SSH_CONNECTION": ""}, None),
    ({}, None),
])
def test_client_ip_comes_from_ssh_connection(environ, expected):
    assert client_ip(environ) == expected


def test_client_ip_reads_the_process_environment(monkeypatch):
    monkeypatch.setenv("SSH_CONNECTION", "198.51.100.23 2222 10.1.1.1 22")
    assert client_ip() == "198.51.100.23"
    assert Actor.create(uuid.uuid4(), [], channel="ssh").ip_address == "198.51.100.23"
    monkeypatch.delenv("SSH_CONNECTION")
    assert Actor.create(uuid.uuid4(), [], channel="tui").ip_address is None


def test_audit_rows_carry_the_ssh_client_address_or_none(platform):
    remote = platform.actor(*Permission, environ={"SSH_CONNECTION": "2001:db8::17 40000 2001:db8::1 22"})
    local = platform.actor(*Permission, environ={})
    with platform.uow(remote) as uow:
        far = uow.plans.create({"plan_code": "A", "plan_name": "A"})
        uow.commit()
    with platform.uow(local) as uow:
        near = uow.plans.create({"plan_code": "B", "plan_name": "B"})
        uow.commit()
    far_row, = platform.audit(far.id)
    near_row, = platform.audit(near.id)
    assert far_row.ip_address == ipaddress.ip_address("2001:db8::17")
    assert far_row.user_id == remote.user_id
    assert near_row.ip_address is None
    assert near_row.user_agent == user_agent("ssh")


# -- reading the audit log -----------------------------------------------------------------------


def test_audit_log_reader_filters_by_entity_user_action_and_time(platform):
    member = platform.member()
    other = platform.member(first_name="Ben")
    reader = platform.actor(Permission.MEMBERS_READ, Permission.AUDIT_READ, role="auditor")
    with platform.uow(reader) as uow:
        uow.members.open(member.id)
    with platform.uow() as uow:
        uow.members.update(member.id, member.updated_at, {"status": "inactive"})
        uow.commit()

    with platform.uow(reader) as uow:
        log = uow.audit_log
        history = log.for_entity("member", member.id)
        assert [e.action for e in history] == ["update", "read", "create"]  # newest first
        assert all(isinstance(e, AuditEntry) and e.entity_id == member.id for e in history)
        assert history[0].ip_address == CLIENT_IP
        assert history[0].old_values == {"status": "active"}

        by_reader = log.search(user_id=reader.user_id)
        assert [(e.action, e.entity_id) for e in by_reader] == [("read", member.id)]
        assert [e.entity_id for e in log.search(entity_type="member", action="create")] == [other.id, member.id]
        assert log.search(entity_type="insurance_plan") == []

        everything = log.search(entity_type="member")
        assert len(everything) == 4
        oldest, newest = everything[-1].created_at, everything[0].created_at
        assert [e.action for e in log.search(since=newest)] == ["update"]
        assert [e.entity_id for e in log.search(entity_type="member", until=everything[-2].created_at)] == [member.id]
        assert log.search(since=oldest, until=oldest + timedelta(microseconds=1)) == [everything[-1]]
        assert log.search(since=newest + timedelta(seconds=1)) == []


def test_audit_log_keyset_paging_visits_every_row_once(platform):
    # Rows written in one transaction share created_at: paging must break ties by id.
    member = platform.member()
    with platform.uow() as uow:
        for n in range(6):
            uow.metadata.put("member", member.id, f"key{n}", n)
        uow.commit()
    with platform.uow() as uow:
        uow.metadata.put("member", member.id, "key0", "changed")
        uow.commit()

    with platform.uow() as uow:
        everything = uow.audit_log.search(entity_type="metadata", limit=1000)
        assert len(everything) == 7
        keys = [(e.created_at, e.id) for e in everything]
        assert keys == sorted(keys, reverse=True)
        pages, cursor = [], None
        while True:
            page = uow.audit_log.search(entity_type="metadata", before_id=cursor, limit=3)
            if not page:
                break
            pages.append(page)
            cursor = (page[-1].created_at, page[-1].id)
    assert [len(page) for page in pages] == [3, 3, 1]
    assert [e.id for page in pages for e in page] == [e.id for e in everything]


def test_audit_log_reader_needs_audit_read(platform):
    specialist = platform.actor(Permission.MEMBERS_READ, Permission.MEMBERS_WRITE, role="specialist")
    with platform.uow(specialist) as uow, pytest.raises(PermissionDenied) as caught:
        uow.audit_log.search()
    assert str(caught.value) == "specialist may not read the audit log: it needs the 'audit:read' permission"
    row, = platform.audit(action="deny")
    assert (row.entity_type, row.user_id) == ("audit_log", specialist.user_id)
    assert row.new_values == {"operation": "read the audit log", "permission": "audit:read"}


def test_audit_log_rows_can_be_fetched_but_not_deleted_through_the_repository(platform):
    member = platform.member()
    row, = platform.audit(member.id)
    with platform.uow() as uow:
        entry = uow.audit_log.get(row.id)
        assert (entry.action, entry.entity_id, entry.ip_address) == ("create", member.id, CLIENT_IP)
        with pytest.raises(CarecliError, match="append-only"):
            uow.audit_log.delete(row.id, None)
        with pytest.raises(CarecliError, match="append-only"):
            uow.audit_log.restore(row.id)
    assert platform.audit_count() == 1
