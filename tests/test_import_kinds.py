"""``carecli import`` of enrollments, specialists, calls and flags, on a real PostgreSQL.

Writes run on a fresh database per test. Validation rules run as dry runs
(nothing written) against one database per module (``world``), seeded once
with members, plans, specialists (and their identity users), calls, flags
and enrollments, some of them soft-deleted.
"""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import Engine, text

from carecli.config import load_settings
from carecli.data.bulk.loader import run_import
from carecli.data.bulk.readers import Columns, RecordProblem, read_records
from carecli.data.bulk.registry import kind_for
from carecli.data.databases import create_database_engine
from carecli.data.rules import utc_now
from tests.import_fixtures import Importer, Outcome, csv_text
from tests.platform_fixtures import Platform


def in_days(days: int) -> str:
    """A time ``days`` from now (naive UTC, ISO), for calls that must still be to come."""
    return (utc_now() + timedelta(days=days)).replace(microsecond=0, second=0).isoformat()


PHI_AND_FREE_TEXT = ("Ada", "Okafor", "chest pain", "talked about", "call back", "prefers mornings", "M-A", "X-1")


# -- running imports with (or without) the identity database -------------------------------------


@dataclass
class Runner:
    platform: Platform
    identity: Engine | None

    def run(self, kind: str, data: str, *, fmt: str = "csv", dry_run: bool = False, batch_rows: int = 100,
            identity: bool = True, all_or_nothing: bool = False) -> Outcome:
        importer_ = kind_for(kind)
        records = read_records(io.BytesIO(data.encode()), fmt, Columns(importer_.columns, {}),
                               required=importer_.required_columns)
        problems: list[RecordProblem] = []
        summary = run_import(importer_, records, engine=self.platform.engine, actor=self.platform.admin,
                             cipher=self.platform.cipher, blind_index=lambda: None, on_problem=problems.append,
                             dry_run=dry_run, all_or_nothing=all_or_nothing, batch_rows=batch_rows,
                             identity=self.identity if identity else None)
        return Outcome(summary, problems)

    # -- building data -------------------------------------------------------------------

    def execute(self, statement: str, **params: Any) -> None:
        with self.platform.engine.begin() as connection:
            connection.execute(text(statement), params)

    def user(self, email: str, *, active: bool = True, deleted: bool = False) -> uuid.UUID:
        assert self.identity is not None
        user_id = uuid.uuid4()
        with self.identity.begin() as connection:
            connection.execute(text(
                "INSERT INTO users (id, external_user_id, email, is_active, deleted_at) "
                "VALUES (:id, :ext, :email, :active, CASE WHEN :deleted THEN now() END)"),
                {"id": user_id, "ext": f"auth0|{user_id}", "email": email, "active": active, "deleted": deleted})
        self.platform.known_users.add(user_id)
        return user_id

    def natural_key(self, entity_type: str, entity_id: uuid.UUID, key: str, value: str) -> None:
        self.execute("INSERT INTO metadata (id, entity_type, entity_id, metadata_key, metadata_value) "
                     "VALUES (gen_random_uuid(), :type, :id, :key, to_jsonb(CAST(:value AS text)))",
                     type=entity_type, id=entity_id, key=key, value=value)

    def delete(self, repository: str, entity_id: uuid.UUID) -> None:
        with self.platform.uow() as uow:
            getattr(uow, repository).delete(entity_id, None)
            uow.commit()


def rows_csv(*rows: Mapping[str, Any]) -> str:
    """A CSV of dict rows; the header is the first row's keys (every row has the same keys)."""
    header = list(rows[0])
    return csv_text(header, *([row.get(name) for name in header] for row in rows))


def audit_text(platform: Platform, **filters: Any) -> str:
    return json.dumps([[row.old_values, row.new_values] for row in platform.audit(**filters)])


def assert_no_free_text(platform: Platform) -> None:
    everything = json.dumps([[row.old_values, row.new_values] for row in platform.audit()])
    for value in PHI_AND_FREE_TEXT:
        assert value not in everything


@pytest.fixture
def both(migrated_engines: Any) -> Iterator[Runner]:
    """A runner on fresh identity and platform databases (specialists need both)."""
    yield Runner(Platform(migrated_engines.platform), migrated_engines.identity)


@pytest.fixture
def runner(importer: Importer) -> Runner:
    """A runner on a fresh platform database only."""
    return Runner(importer.platform, None)


# -- the world the rule tests run against (dry runs only) ------------------------------------------


@dataclass
class World:
    runner: Runner
    ids: dict[str, uuid.UUID] = field(default_factory=dict)

    def fill(self, value: Any) -> Any:
        return value.format(**self.ids) if isinstance(value, str) else value

    def check(self, kind: str, *rows: Mapping[str, Any], identity: bool = True) -> Outcome:
        filled = [{name: self.fill(value) for name, value in row.items()} for row in rows]
        outcome = self.runner.run(kind, rows_csv(*filled), dry_run=True, identity=identity)
        assert outcome.summary.committed is False
        return outcome


def seed_world(runner: Runner) -> dict[str, uuid.UUID]:
    platform = runner.platform
    ids: dict[str, uuid.UUID] = {}
    for name, email, active, deleted in (("U1", "ana@example.org", True, False), ("U2", "ben@example.org", True, False),
                                         ("UOLD", "old@example.org", False, False),
                                         ("UNEW", "new@example.org", True, False),
                                         ("UGONE", "gone@example.org", True, True),
                                         ("UDS", "dspec@example.org", True, False)):
        ids[name] = runner.user(email, active=active, deleted=deleted)
    a, b, d = platform.member(), platform.member(first_name="Bo"), platform.member(first_name="Di")
    ids.update(A=a.id, B=b.id, D=d.id)
    for name, member in (("M-A", a), ("M-B", b), ("M-D", d)):
        runner.natural_key("member", member.id, "external_member_number", name)
    p1, p2, px = platform.plan("P1"), platform.plan("P2"), platform.plan("PX")
    ids.update(P1=p1.id, P2=p2.id, PX=px.id)
    s1 = platform.specialist(user_id=ids["U1"], phone="+15550000001")
    s2 = platform.specialist(user_id=ids["U2"], phone="+15550000002")
    sd = platform.specialist(user_id=ids["UDS"])
    ids.update(S1=s1.id, S2=s2.id, SD=sd.id)
    c1, c2, cd = platform.call(a, s1), platform.call(b, s2), platform.call(a, s1)
    ids.update(C1=c1.id, C2=c2.id, CD=cd.id)
    for name, call in (("C-1", c1), ("C-2", c2), ("C-D", cd)):
        runner.natural_key("call_record", call.id, "external_id", name)
    with platform.uow() as uow:
        f1 = uow.risk_flags.raise_from_call(c1.id, risk_type="medical", severity="high", description="chest pain")
        f2 = uow.risk_flags.raise_from_call(c2.id, risk_type="safety", severity="low", description="stairs")
        fd = uow.risk_flags.raise_from_call(c1.id, risk_type="other", severity="low", description="old")
        e1 = uow.enrollments.enroll(a.id, p1.id, date(2024, 1, 1), is_primary=True)
        e2 = uow.enrollments.enroll(a.id, p2.id, date(2024, 1, 1))
        ed = uow.enrollments.enroll(b.id, p1.id, date(2023, 1, 1))
        uow.specialist_plans.link(s1.id, p1.id)
        uow.commit()
    ids.update(F1=f1.id, F2=f2.id, FD=fd.id, E1=e1.id, E2=e2.id, ED=ed.id)
    for name, flag in (("F-1", f1), ("F-2", f2), ("F-D", fd)):
        runner.natural_key("risk_flag", flag.id, "external_id", name)
    for repository, name in (("members", "D"), ("plans", "PX"), ("specialists", "SD"), ("calls", "CD"),
                             ("risk_flags", "FD"), ("enrollments", "ED")):
        runner.delete(repository, ids[name])
    return ids


@pytest.fixture(scope="module")
def world(pg_server: Any, template_pair: Any) -> Iterator[World]:
    identity_name = pg_server.create_database("identity", template=template_pair.identity)
    platform_name = pg_server.create_database("platform", template=template_pair.platform)
    settings = load_settings({})
    identity = create_database_engine(pg_server.url(identity_name), settings)
    engine = create_database_engine(pg_server.url(platform_name), settings)
    try:
        runner = Runner(Platform(engine), identity)
        yield World(runner, seed_world(runner))
    finally:
        identity.dispose()
        engine.dispose()
        pg_server.drop_database(identity_name)
        pg_server.drop_database(platform_name)


# -- validation rules: one case per rule, as (row, field, rule) ------------------------------------

ENROLL = {"member_id": "{B}", "plan_code": "P2", "enrollment_date": "2025-02-01"}
SPECIALIST = {"user_email": "new@example.org", "phone": "(555) 123-4567", "license_number": "LIC-9",
              "is_active": "true", "plan_codes": "P1;P2"}
CALL = {"external_id": "X-1", "member_id": "{A}", "specialist_id": "{S1}", "call_type": "outreach",
        "call_status": "completed", "started_at": "2026-03-02T14:00:00", "ended_at": "2026-03-02T14:10:00"}
FLAG = {"external_id": "FX-1", "call_external_id": "C-1", "risk_type": "medical", "severity": "high",
        "description": "chest pain"}


def case(kind: str, rows: Sequence[Mapping[str, Any]], expected: tuple[int, str, str], *,
         identity: bool = True, name: str | None = None) -> Any:
    return pytest.param(kind, rows, expected, identity, id=name or f"{kind}-{expected[1]}-{expected[2]}")


def without(row: Mapping[str, Any], *names: str) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in names}


RULE_CASES = [
    # enrollments
    case("enrollments", [{**ENROLL, "enrollment_date": ""}], (1, "enrollment_date", "required"), name="enr-date-blank"),
    case("enrollments", [without(ENROLL, "enrollment_date")], (1, "enrollment_date", "required"),
         name="enr-date-missing"),
    case("enrollments", [{**ENROLL, "plan_code": ""}], (1, "plan_code", "required")),
    case("enrollments", [without(ENROLL, "member_id")], (1, "member_id", "required")),
    case("enrollments", [{**ENROLL, "termination_date": "2025-01-31"}], (1, "termination_date", "date_order")),
    case("enrollments", [{"id": "{E1}", "termination_date": "2023-12-31"}], (1, "termination_date", "date_order"),
         name="enr-date-order-with-stored-date"),
    case("enrollments", [{**ENROLL, "enrollment_date": "2025-02-30"}], (1, "enrollment_date", "date")),
    case("enrollments", [{**ENROLL, "enrollment_date": "Feb 1"}], (1, "enrollment_date", "date_format")),
    case("enrollments", [{**ENROLL, "status": "closed"}], (1, "status", "enum")),
    case("enrollments", [{**ENROLL, "coverage_percentage": "100.01"}], (1, "coverage_percentage", "range")),
    case("enrollments", [{**ENROLL, "coverage_percentage": "-1"}], (1, "coverage_percentage", "range"),
         name="enr-coverage-negative"),
    case("enrollments", [{**ENROLL, "coverage_percentage": "lots"}], (1, "coverage_percentage", "number")),
    case("enrollments", [{**ENROLL, "is_primary": "maybe"}], (1, "is_primary", "boolean")),
    case("enrollments", [{**ENROLL, "member_id": "nope"}], (1, "member_id", "uuid")),
    case("enrollments", [{**ENROLL, "status": "terminated"}], (1, "termination_date", "required"),
         name="enr-terminated-needs-date"),
    case("enrollments", [{**ENROLL, "status": "suspended", "is_primary": "yes"}], (1, "is_primary", "active_only")),
    case("enrollments", [{**ENROLL, "member_id": str(uuid.UUID(int=7))}], (1, "member_id", "reference")),
    case("enrollments", [{**without(ENROLL, "member_id"), "external_member_number": "M-ZZ"}],
         (1, "external_member_number", "reference")),
    case("enrollments", [{**ENROLL, "member_id": "{D}"}], (1, "member_id", "reference"), name="enr-deleted-member"),
    case("enrollments", [{**ENROLL, "plan_code": "NOPE"}], (1, "plan_code", "reference")),
    case("enrollments", [{**ENROLL, "plan_code": "PX"}], (1, "plan_code", "reference"), name="enr-deleted-plan"),
    case("enrollments", [{**ENROLL, "external_member_number": "M-A"}],
         (1, "external_member_number", "identity_conflict"), name="enr-member-id-vs-number"),
    case("enrollments", [{"id": "{E2}", "member_id": "{A}", "plan_code": "P1", "enrollment_date": "2025-05-01"}],
         (1, "plan_code", "read_only")),
    case("enrollments", [{"id": "{E2}", "member_id": "{A}", "plan_code": "P1", "enrollment_date": "2024-01-01"}],
         (1, "id", "identity_conflict"), name="enr-id-vs-natural-key"),
    case("enrollments", [{"id": "{E2}", "member_id": "{B}"}], (1, "member_id", "read_only")),
    case("enrollments", [{"id": "{ED}", "notes": "x"}], (1, "id", "deleted")),
    case("enrollments", [{"member_id": "{B}", "plan_code": "P1", "enrollment_date": "2023-01-01"}],
         (1, "enrollment_date", "deleted"), name="enr-deleted-by-natural-key"),
    case("enrollments", [{**ENROLL, "notes": "a"}, {**ENROLL, "notes": "b"}],
         (2, "enrollment_date", "duplicate_in_file")),
    case("enrollments", [{"member_id": "{A}", "plan_code": "P2", "enrollment_date": "2024-01-01",
                          "is_primary": "true"}], (1, "is_primary", "one_primary"), name="enr-one-primary-in-database"),
    case("enrollments", [{**ENROLL, "is_primary": "true"}, {**ENROLL, "plan_code": "P1", "is_primary": "true"}],
         (2, "is_primary", "one_primary"), name="enr-one-primary-in-file"),
    # specialists
    case("specialists", [without(SPECIALIST, "user_email")], (1, "user_email", "identity_required")),
    case("specialists", [{**SPECIALIST, "user_email": "not-an-address"}], (1, "user_email", "email_format")),
    case("specialists", [{**SPECIALIST, "phone": "555-12"}], (1, "phone", "phone_format")),
    case("specialists", [{**SPECIALIST, "license_number": "L" * 51}], (1, "license_number", "max_length")),
    case("specialists", [{**SPECIALIST, "is_active": "sometimes"}], (1, "is_active", "boolean")),
    case("specialists", [{**SPECIALIST, "id": "nope"}], (1, "id", "uuid")),
    case("specialists", [{**SPECIALIST, "user_email": "nobody@example.org"}], (1, "user_email", "reference")),
    case("specialists", [{**SPECIALIST, "user_email": "gone@example.org"}], (1, "user_email", "reference"),
         name="spec-deleted-user"),
    case("specialists", [{**SPECIALIST, "user_email": "old@example.org"}], (1, "user_email", "reference"),
         name="spec-inactive-user"),
    case("specialists", [{**SPECIALIST, "plan_codes": "P1;NOPE"}], (1, "plan_codes", "reference")),
    case("specialists", [{**SPECIALIST, "plan_codes": "PX"}], (1, "plan_codes", "reference"),
         name="spec-deleted-plan"),
    case("specialists", [{**SPECIALIST, "id": "{S1}", "user_email": "ben@example.org"}],
         (1, "user_email", "identity_conflict")),
    case("specialists", [{**SPECIALIST, "user_email": "DSPEC@example.org"}], (1, "user_email", "deleted")),
    case("specialists", [{**SPECIALIST, "id": "{SD}", "user_email": ""}], (1, "id", "deleted"),
         name="spec-deleted-by-id"),
    case("specialists", [SPECIALIST, {**SPECIALIST, "user_email": "New@Example.org"}],
         (2, "user_email", "duplicate_in_file")),
    case("specialists", [SPECIALIST], (1, "user_email", "identity_unavailable"), identity=False),
    # calls
    case("calls", [{**CALL, "external_id": ""}], (1, "external_id", "identity_required")),
    case("calls", [{**CALL, "call_type": "visit"}], (1, "call_type", "enum")),
    case("calls", [{**CALL, "call_status": "done"}], (1, "call_status", "enum")),
    case("calls", [{**CALL, "call_type": ""}], (1, "call_type", "required")),
    case("calls", [without(CALL, "call_status")], (1, "call_status", "required"), name="calls-status-missing"),
    case("calls", [{**CALL, "started_at": "yesterday"}], (1, "started_at", "datetime_format")),
    case("calls", [{**CALL, "ended_at": "2026-03-02T13:59:00"}], (1, "ended_at", "date_order")),
    case("calls", [{"id": "{C1}", "ended_at": "2026-03-02T13:00:00"}], (1, "ended_at", "date_order"),
         name="calls-date-order-with-stored-start"),
    case("calls", [{**CALL, "call_status": "no_answer", "started_at": ""}], (1, "started_at", "required"),
         name="calls-ended-needs-started"),
    case("calls", [{**CALL, "started_at": "", "ended_at": ""}], (1, "started_at", "required"),
         name="calls-completed-needs-started"),
    case("calls", [{**CALL, "call_status": "scheduled"}], (1, "scheduled_at", "required")),
    case("calls", [{**CALL, "follow_up_required": "yes"}], (1, "follow_up_date", "required")),
    case("calls", [{**CALL, "follow_up_date": "2026-03-01"}], (1, "follow_up_date", "date_order")),
    case("calls", [{**CALL, "duration_seconds": "30"}], (1, "duration_seconds", "duration_mismatch")),
    case("calls", [{**CALL, "duration_seconds": "-5"}], (1, "duration_seconds", "range")),
    case("calls", [{**CALL, "duration_seconds": "ten"}], (1, "duration_seconds", "integer")),
    case("calls", [{**CALL, "member_id": str(uuid.UUID(int=7))}], (1, "member_id", "reference")),
    case("calls", [{**CALL, "member_id": "", "external_member_number": "M-ZZ"}],
         (1, "external_member_number", "reference"), name="calls-unknown-member-number"),
    case("calls", [{**CALL, "member_id": "{D}"}], (1, "member_id", "reference"), name="calls-deleted-member"),
    case("calls", [{**CALL, "member_id": ""}], (1, "member_id", "required")),
    case("calls", [{**CALL, "external_member_number": "M-B"}], (1, "external_member_number", "identity_conflict"),
         name="calls-member-id-vs-number"),
    case("calls", [{**CALL, "specialist_id": str(uuid.UUID(int=8))}], (1, "specialist_id", "reference")),
    case("calls", [{**CALL, "specialist_id": "{SD}"}], (1, "specialist_id", "reference"),
         name="calls-deleted-specialist"),
    case("calls", [without(CALL, "specialist_id")], (1, "specialist_id", "required")),
    case("calls", [{**without(CALL, "specialist_id"), "specialist_email": "nobody@example.org"}],
         (1, "specialist_email", "reference"), name="calls-unknown-specialist-email"),
    case("calls", [{**without(CALL, "specialist_id"), "specialist_email": "new@example.org"}],
         (1, "specialist_email", "reference"), name="calls-user-not-a-specialist"),
    case("calls", [{**without(CALL, "specialist_id"), "specialist_email": "ana@example.org"}],
         (1, "specialist_email", "identity_unavailable"), identity=False),
    case("calls", [{**CALL, "specialist_email": "ben@example.org"}], (1, "specialist_email", "identity_conflict"),
         name="calls-specialist-id-vs-email"),
    case("calls", [{**CALL, "id": "{C1}", "external_id": "C-2"}], (1, "external_id", "identity_conflict")),
    case("calls", [{**CALL, "external_id": "C-D"}], (1, "external_id", "deleted")),
    case("calls", [CALL, CALL], (2, "external_id", "duplicate_in_file")),
    # flags
    case("flags", [{**FLAG, "external_id": ""}], (1, "external_id", "identity_required")),
    case("flags", [{**FLAG, "risk_type": "weather"}], (1, "risk_type", "enum")),
    case("flags", [{**FLAG, "severity": "urgent"}], (1, "severity", "enum")),
    case("flags", [{**FLAG, "description": ""}], (1, "description", "required")),
    case("flags", [without(FLAG, "severity")], (1, "severity", "required"), name="flags-severity-missing"),
    case("flags", [{**FLAG, "call_external_id": "C-ZZ"}], (1, "call_external_id", "reference")),
    case("flags", [{**without(FLAG, "call_external_id"), "call_record_id": str(uuid.UUID(int=9))}],
         (1, "call_record_id", "reference"), name="flags-unknown-call-id"),
    case("flags", [{**FLAG, "call_external_id": "C-D"}], (1, "call_external_id", "reference"),
         name="flags-deleted-call"),
    case("flags", [{**FLAG, "call_external_id": ""}], (1, "call_external_id", "required")),
    case("flags", [without(FLAG, "call_external_id")], (1, "call_record_id", "required"),
         name="flags-call-missing"),
    case("flags", [{**FLAG, "call_record_id": "{C1}", "call_external_id": "C-2"}],
         (1, "call_external_id", "identity_conflict"), name="flags-call-id-vs-external-id"),
    case("flags", [{**FLAG, "member_id": "{B}"}], (1, "member_id", "call_mismatch")),
    case("flags", [{**FLAG, "external_member_number": "M-B"}], (1, "external_member_number", "call_mismatch")),
    case("flags", [{**FLAG, "specialist_id": "{S2}"}], (1, "specialist_id", "call_mismatch")),
    case("flags", [{**FLAG, "specialist_email": "ben@example.org"}], (1, "specialist_email", "call_mismatch")),
    case("flags", [{**FLAG, "id": "{F1}", "external_id": "F-1", "call_external_id": "C-2"}],
         (1, "call_external_id", "read_only")),
    case("flags", [{**FLAG, "id": "{F1}", "external_id": "F-2"}], (1, "external_id", "identity_conflict")),
    case("flags", [{**FLAG, "external_id": "F-D"}], (1, "external_id", "deleted")),
    case("flags", [FLAG, FLAG], (2, "external_id", "duplicate_in_file")),
]


@pytest.mark.parametrize(("kind", "rows", "expected", "identity"), RULE_CASES)
def test_rule(world: World, kind: str, rows: list[dict[str, Any]], expected: tuple[int, str, str],
              identity: bool) -> None:
    outcome = world.check(kind, *rows, identity=identity)
    assert expected in outcome.rules(), outcome.rules()
    assert outcome.summary.rejected == 1
    assert outcome.summary.created + outcome.summary.updated + outcome.summary.unchanged == len(rows) - 1
    for problem in outcome.problems:  # messages name fields and rules, never the values
        for value in (v for row in rows for v in row.values() if isinstance(v, str) and len(v) > 3):
            if not value.replace("_", "").isalpha():  # enum words and field names may appear
                assert world.fill(value) not in problem.message


def test_rules_accept_the_valid_rows(world: World) -> None:
    """The base rows the rule cases break are themselves accepted (the cases fail for their one reason)."""
    for kind, row in (("enrollments", ENROLL), ("specialists", SPECIALIST), ("calls", CALL), ("flags", FLAG)):
        outcome = world.check(kind, row)
        assert outcome.problems == [] and outcome.summary.created == 1, (kind, outcome.rules())


TABLE_COUNTS = ("SELECT (SELECT count(*) FROM member_insurance_plans), (SELECT count(*) FROM specialists), "
                "(SELECT count(*) FROM specialist_insurance_plans), (SELECT count(*) FROM call_records), "
                "(SELECT count(*) FROM risk_flags), (SELECT count(*) FROM metadata), "
                "(SELECT count(*) FROM audit_logs), "
                "(SELECT max(updated_at) FROM specialists), (SELECT max(updated_at) FROM call_records)")


@pytest.mark.parametrize(("kind", "rows"), [
    ("enrollments", [{**ENROLL, "notes": "a"}, {**ENROLL, "plan_code": "NOPE", "notes": "a"},
                     {"member_id": "{A}", "plan_code": "P2", "enrollment_date": "2024-01-01", "notes": "call back"}]),
    ("specialists", [SPECIALIST, {**SPECIALIST, "user_email": "nobody@example.org"},
                     {**SPECIALIST, "user_email": "ana@example.org", "phone": "+15550000001", "license_number": "LIC-1",
                      "plan_codes": "P2"}]),
    ("calls", [CALL, {**CALL, "external_id": "X-2", "call_type": ""}, {**CALL, "external_id": "C-1"}]),
    ("flags", [FLAG, {**FLAG, "external_id": "FX-2", "description": ""},
               {**FLAG, "external_id": "F-1", "severity": "low"}]),
])
def test_dry_run_counts_and_writes_nothing(world: World, kind: str, rows: list[dict[str, Any]]) -> None:
    platform = world.runner.platform
    before = platform.sql(TABLE_COUNTS)
    outcome = world.check(kind, *rows)
    summary = outcome.summary
    assert (summary.created, summary.updated, summary.rejected, summary.dry_run) == (1, 1, 1, True), outcome.rules()
    assert platform.sql(TABLE_COUNTS) == before


@pytest.mark.parametrize("kind", ["enrollments", "specialists", "calls", "flags"])
def test_an_export_imports_back_unchanged(world: World, kind: str) -> None:
    from carecli.data.bulk.export import run_export

    out = io.StringIO()
    with world.runner.platform.uow() as uow:
        result = run_export(uow, kind, out, "csv", identity=world.runner.identity)
    outcome = world.runner.run(kind, out.getvalue(), dry_run=True)
    assert outcome.problems == []
    assert (outcome.summary.created, outcome.summary.updated, outcome.summary.unchanged) == (0, 0, result.rows)
    assert result.rows >= 1


# -- enrollments -------------------------------------------------------------------------------------


def test_enrollments_create_rerun_update_and_audit(runner: Runner) -> None:
    platform = runner.platform
    ada, bo = platform.member(), platform.member(first_name="Bo")
    runner.natural_key("member", bo.id, "external_member_number", "M-B")
    ppo, hmo = platform.plan("PPO"), platform.plan("HMO")
    data = csv_text(("member_id", "external_member_number", "plan_code", "enrollment_date", "is_primary", "notes"),
                    (ada.id, None, "PPO", "2025-01-01", "true", "prefers mornings"),
                    (None, "M-B", "HMO", "01/15/2025", None, None))
    first = runner.run("enrollments", data)
    assert first.problems == []
    assert (first.summary.created, first.summary.rejected) == (2, 0)
    rows = {row.member_id: row for row in platform.sql("SELECT * FROM member_insurance_plans")}
    assert rows[ada.id].insurance_plan_id == ppo.id and rows[ada.id].is_primary is True
    assert rows[ada.id].status == "active" and rows[ada.id].coverage_percentage == Decimal("100.00")
    assert rows[bo.id].insurance_plan_id == hmo.id and rows[bo.id].enrollment_date == date(2025, 1, 15)
    # An empty cell on a new row takes the schema's default, or NULL where there is none.
    assert rows[bo.id].is_primary is False and rows[bo.id].notes is None
    for row in rows.values():
        [entry] = platform.audit(row.id, action="create")
        assert entry.entity_type == "member_insurance_plan" and entry.user_id == platform.admin.user_id
    assert platform.audit(rows[ada.id].id)[0].new_values["notes"] == "[redacted]"

    again = runner.run("enrollments", data)
    assert (again.summary.created, again.summary.updated, again.summary.unchanged) == (0, 0, 2)

    # One column: the rest stay as they are; an empty cell clears.
    change = csv_text(("member_id", "plan_code", "enrollment_date", "coverage_percentage", "notes"),
                      (ada.id, "PPO", "2025-01-01", "80", None))
    updated = runner.run("enrollments", change)
    assert (updated.summary.updated, updated.problems) == (1, [])
    [row] = platform.sql("SELECT * FROM member_insurance_plans WHERE member_id = :m", m=ada.id)
    assert (row.coverage_percentage, row.notes, row.is_primary) == (Decimal("80.00"), None, True)
    [entry] = platform.audit(row.id, action="update")
    assert set(entry.new_values) == {"coverage_percentage", "notes"}
    assert entry.old_values["notes"] == "[redacted]" and entry.new_values["notes"] is None
    assert_no_free_text(platform)


def test_enrollments_by_id_move_the_date_and_ending_clears_the_primary(runner: Runner) -> None:
    platform = runner.platform
    ada, ppo = platform.member(), platform.plan("PPO")
    with platform.uow() as uow:
        enrollment = uow.enrollments.enroll(ada.id, ppo.id, date(2025, 1, 1), is_primary=True)
        uow.commit()
    moved = runner.run("enrollments", csv_text(("id", "enrollment_date"), (enrollment.id, "2025-02-01")))
    assert (moved.summary.updated, moved.problems) == (1, [])
    ended = runner.run("enrollments", csv_text(("id", "status", "termination_date"),
                                               (enrollment.id, "terminated", "2025-06-30")))
    assert (ended.summary.updated, ended.problems) == (1, [])
    [row] = platform.sql("SELECT * FROM member_insurance_plans")
    assert (row.enrollment_date, row.status, row.is_primary) == (date(2025, 2, 1), "terminated", False)
    # Now another enrollment may be the primary one.
    platform.plan("HMO")
    primary = runner.run("enrollments", csv_text(("member_id", "plan_code", "enrollment_date", "is_primary"),
                                                 (ada.id, "HMO", "2025-07-01", "yes")))
    assert (primary.summary.created, primary.problems) == (1, [])


def test_enrollments_one_primary_across_batches_never_fails_a_batch(runner: Runner) -> None:
    platform = runner.platform
    ada = platform.member()
    for code in ("P1", "P2", "P3"):
        platform.plan(code)
    header = ("member_id", "plan_code", "enrollment_date", "is_primary")
    outcome = runner.run("enrollments", csv_text(header, (ada.id, "P1", "2025-01-01", "true"),
                                                 (ada.id, "P2", "2025-01-01", "true"),
                                                 (ada.id, "P3", "2025-01-01", "false")), batch_rows=1)
    assert outcome.rules() == [(2, "is_primary", "one_primary")]
    assert (outcome.summary.created, outcome.summary.committed) == (2, True)
    # The file again, with the primary moved: refused until the old one is cleared (by an earlier import).
    moved = csv_text(header, (ada.id, "P1", "2025-01-01", "false"), (ada.id, "P3", "2025-01-01", "true"))
    first = runner.run("enrollments", moved, batch_rows=1)
    assert first.summary.updated >= 1 and set(first.rules()) <= {(2, "is_primary", "one_primary")}
    second = runner.run("enrollments", moved, batch_rows=1)
    assert second.problems == []
    primary = platform.sql("SELECT p.plan_code FROM member_insurance_plans e JOIN insurance_plans p "
                           "ON p.id = e.insurance_plan_id WHERE e.is_primary")
    assert [row.plan_code for row in primary] == ["P3"]


def test_enrollments_a_file_cut_short_and_run_again_ends_with_its_rows(runner: Runner) -> None:
    platform = runner.platform
    plan = platform.plan("PPO")
    members = [platform.member(first_name=f"M{i}") for i in range(5)]
    rows = [(m.id, "PPO", f"2025-0{i + 1}-01", "true" if i == 0 else "false") for i, m in enumerate(members)]
    header = ("member_id", "plan_code", "enrollment_date", "is_primary")
    first = runner.run("enrollments", csv_text(header, *rows[:2]), batch_rows=2)
    assert first.summary.created == 2
    whole = runner.run("enrollments", csv_text(header, *rows), batch_rows=2)
    assert (whole.summary.created, whole.summary.unchanged, whole.problems) == (3, 2, [])
    assert platform.scalar("SELECT count(*) FROM member_insurance_plans WHERE insurance_plan_id = :p", p=plan.id) == 5
    assert runner.run("enrollments", csv_text(header, *rows), batch_rows=2).summary.unchanged == 5




# -- specialists --------------------------------------------------------------------------------------


def test_specialists_create_rerun_update_links_and_audit(both: Runner) -> None:
    platform = both.platform
    ana = both.user("Ana@Example.org")
    p1, p2, p3 = platform.plan("P1"), platform.plan("P2"), platform.plan("P3")
    header = ("user_email", "phone", "license_number", "plan_codes")
    first = both.run("specialists", csv_text(header, ("ana@example.org", "555.123.4567", "LIC-1", "P2;P1")))
    assert (first.summary.created, first.problems) == (1, [])
    [specialist] = platform.sql("SELECT * FROM specialists")
    assert (specialist.user_id, specialist.phone, specialist.is_active) == (ana, "+15551234567", True)
    links = platform.sql("SELECT * FROM specialist_insurance_plans WHERE specialist_id = :s", s=specialist.id)
    assert {link.insurance_plan_id for link in links} == {p1.id, p2.id}
    [created] = platform.audit(specialist.id, action="create")
    assert created.new_values["plan_codes"] == "P1;P2" and created.new_values["phone"] == "[redacted]"
    for link in links:
        assert len(platform.audit(link.id, entity_type="specialist_insurance_plan", action="create")) == 1

    again = both.run("specialists", csv_text(header, ("ANA@example.org", "(555) 123-4567", "LIC-1", "P1;P2")))
    assert (again.summary.unchanged, again.problems) == (1, [])

    # One column only: the links stay.
    license_only = both.run("specialists", csv_text(("id", "license_number"), (specialist.id, "LIC-2")))
    assert (license_only.summary.updated, license_only.problems) == (1, [])
    assert platform.scalar("SELECT count(*) FROM specialist_insurance_plans WHERE deleted_at IS NULL") == 2

    # The links follow the file: P1 dropped (soft-deleted), P3 added; then P1 comes back (restored).
    moved = both.run("specialists", csv_text(("user_email", "plan_codes"), ("ana@example.org", "P2;P3")))
    assert (moved.summary.updated, moved.problems) == (1, [])
    live = platform.sql("SELECT insurance_plan_id FROM specialist_insurance_plans WHERE deleted_at IS NULL")
    assert {row.insurance_plan_id for row in live} == {p2.id, p3.id}
    [dropped] = platform.sql("SELECT * FROM specialist_insurance_plans WHERE deleted_at IS NOT NULL")
    assert dropped.insurance_plan_id == p1.id
    assert [row.action for row in platform.audit(dropped.id)] == ["create", "delete"]
    [update] = [row for row in platform.audit(specialist.id, action="update")
                if "plan_codes" in (row.new_values or {})]
    assert (update.old_values["plan_codes"], update.new_values["plan_codes"]) == ("P1;P2", "P2;P3")
    back = both.run("specialists", csv_text(("user_email", "plan_codes"), ("ana@example.org", "P1;P2;P3")))
    assert (back.summary.updated, back.problems) == (1, [])
    assert platform.scalar("SELECT count(*) FROM specialist_insurance_plans") == 3
    assert [row.action for row in platform.audit(dropped.id)] == ["create", "delete", "restore"]
    assert both.run("specialists", csv_text(("user_email", "plan_codes"),
                                            ("ana@example.org", "P3;P2;P1"))).summary.unchanged == 1
    # A link to a deleted plan cannot be named in a file, so the file leaves it alone.
    both.delete("plans", p3.id)
    assert both.run("specialists", csv_text(("user_email", "plan_codes"),
                                            ("ana@example.org", "P2;P1"))).summary.unchanged == 1
    # An empty plan_codes cell removes every (other) link.
    none = both.run("specialists", csv_text(("user_email", "plan_codes"), ("ana@example.org", "")))
    assert (none.summary.updated, none.problems) == (1, [])
    live = platform.sql("SELECT insurance_plan_id FROM specialist_insurance_plans WHERE deleted_at IS NULL")
    assert [row.insurance_plan_id for row in live] == [p3.id]


def test_specialists_of_deactivated_users_still_match_and_calls_find_them_by_email(both: Runner) -> None:
    platform = both.platform
    ana = both.user("ana@example.org")
    specialist = platform.specialist(user_id=ana, phone="+15551234567", license_number="L-1")
    assert both.identity is not None
    with both.identity.begin() as connection:
        connection.execute(text("UPDATE users SET is_active = false WHERE id = :id"), {"id": ana})
    outcome = both.run("specialists", csv_text(("user_email", "license_number"), ("ana@example.org", "L-1")))
    assert (outcome.summary.unchanged, outcome.problems) == (1, [])
    member = platform.member()
    calls = both.run("calls", csv_text(("external_id", "member_id", "specialist_email", "call_type", "call_status",
                                        "scheduled_at"),
                                       ("X-1", member.id, "ANA@example.org", "outreach", "scheduled",
                                        in_days(7))))
    assert (calls.summary.created, calls.problems) == (1, [])
    assert platform.scalar("SELECT specialist_id FROM call_records") == specialist.id




# -- calls --------------------------------------------------------------------------------------------

CALL_HEADER = ("external_id", "external_member_number", "specialist_id", "call_type", "call_status", "started_at",
               "ended_at", "call_notes", "outcome", "follow_up_required", "follow_up_date")


def test_calls_create_rerun_update_and_audit(runner: Runner) -> None:
    platform = runner.platform
    ada = platform.member()
    runner.natural_key("member", ada.id, "external_member_number", "M-A")
    specialist = platform.specialist()
    data = csv_text(CALL_HEADER, ("X-1", "M-A", specialist.id, "Outreach", "completed", "2026-03-02T14:00:00Z",
                                  "2026-03-02T14:12:30Z", "talked about diabetes", "reached", "yes", "2026-03-09"),
                    ("X-2", "M-A", specialist.id, "support", "no_answer", "2026-03-03T10:00:00Z", None, None, None,
                     None, None))
    first = runner.run("calls", data)
    assert (first.summary.created, first.problems) == (2, [])
    calls = {row.call_status: row for row in platform.sql("SELECT * FROM call_records")}
    done = calls["completed"]
    assert (done.member_id, done.specialist_id, done.call_type) == (ada.id, specialist.id, "outreach")
    assert (done.duration_seconds, done.follow_up_required) == (750, True)
    assert calls["no_answer"].duration_seconds is None and calls["no_answer"].follow_up_required is False
    number = platform.scalar("SELECT metadata_value FROM metadata WHERE entity_type = 'call_record' "
                             "AND entity_id = :id AND metadata_key = 'external_id'", id=done.id)
    assert number == "X-1"
    [created] = platform.audit(done.id, action="create")
    assert created.new_values["call_notes"] == "[redacted]" and created.new_values["external_id"] == "[redacted]"

    again = runner.run("calls", data)
    assert (again.summary.unchanged, again.problems) == (2, [])

    # One column by external_id; then a new end time recomputes the duration.
    outcome = runner.run("calls", csv_text(("external_id", "outcome"), ("X-1", "left message")))
    assert (outcome.summary.updated, outcome.problems) == (1, [])
    later = runner.run("calls", csv_text(("id", "ended_at"), (done.id, "2026-03-02T14:20:00")))
    assert (later.summary.updated, later.problems) == (1, [])
    [row] = platform.sql("SELECT * FROM call_records WHERE id = :id", id=done.id)
    assert (row.outcome, row.duration_seconds, row.call_notes) == ("left message", 1200, "talked about diabetes")
    updates = platform.audit(done.id, action="update")
    assert [set(entry.new_values) for entry in updates] == [{"outcome"}, {"ended_at", "duration_seconds"}]
    # A new external_id for a call found by id moves its natural key.
    renamed = runner.run("calls", csv_text(("id", "external_id"), (done.id, "X-9")))
    assert (renamed.summary.updated, renamed.problems) == (1, [])
    assert runner.run("calls", csv_text(("external_id", "outcome"), ("X-9", "left message"))).summary.unchanged == 1
    assert_no_free_text(platform)


def test_calls_jsonl_in_small_batches(runner: Runner) -> None:
    platform = runner.platform
    ada, specialist = platform.member(), platform.specialist()
    lines = [json.dumps({"external_id": f"J-{i}", "member_id": str(ada.id), "specialist_id": str(specialist.id),
                         "call_type": "follow_up", "call_status": "completed", "started_at": "2026-03-02T14:00:00",
                         "duration_seconds": 60, "follow_up_required": False}) for i in range(5)]
    lines.append(lines[0])
    outcome = runner.run("calls", "\n".join(lines) + "\n", fmt="jsonl", batch_rows=2)
    assert outcome.summary.created == 5
    assert outcome.rules() == [(6, "external_id", "duplicate_in_file")]
    assert platform.scalar("SELECT sum(duration_seconds) FROM call_records") == 300




# -- flags --------------------------------------------------------------------------------------------


def test_flags_create_rerun_update_and_audit(runner: Runner) -> None:
    platform = runner.platform
    ada, specialist = platform.member(), platform.specialist()
    call = platform.call(ada, specialist)
    runner.natural_key("call_record", call.id, "external_id", "C-1")
    header = ("external_id", "call_external_id", "call_record_id", "member_id", "risk_type", "severity", "description")
    data = csv_text(header, ("F-1", "C-1", None, None, "medical", "High", "chest pain"),
                    ("F-2", None, call.id, ada.id, "safety", "low", "loose rug"))
    first = runner.run("flags", data)
    assert (first.summary.created, first.problems) == (2, [])
    flags = {row.severity: row for row in platform.sql("SELECT * FROM risk_flags")}
    for flag in flags.values():
        assert (flag.call_record_id, flag.member_id, flag.specialist_id) == (call.id, ada.id, specialist.id)
        [created] = platform.audit(flag.id, action="create")
        assert created.new_values["description"] == "[redacted]"
    assert runner.run("flags", data).summary.unchanged == 2

    outcome = runner.run("flags", csv_text(("external_id", "severity"), ("F-1", "critical")))
    assert (outcome.summary.updated, outcome.problems) == (1, [])
    [row] = platform.sql("SELECT * FROM risk_flags WHERE id = :id", id=flags["high"].id)
    assert (row.severity, row.description) == ("critical", "chest pain")
    [update] = platform.audit(row.id, action="update")
    assert update.old_values == {"severity": "high"} and update.new_values == {"severity": "critical"}
    assert_no_free_text(platform)




def test_a_batch_plans_with_a_handful_of_queries(world: World) -> None:
    """References are resolved per batch, not per row: the query count does not grow with the rows."""
    from sqlalchemy import event

    counts: dict[int, int] = {}
    engine = world.runner.platform.engine
    for size in (2, 40):
        seen: list[str] = []

        def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            seen.append(statement)

        rows = [{**CALL, "external_id": f"Q-{i}", "member_id": "", "external_member_number": "M-A"}
                for i in range(size)]
        flag_rows = [{**FLAG, "external_id": f"QF-{i}"} for i in range(size)]
        event.listen(engine, "before_cursor_execute", count)
        try:
            assert world.check("calls", *rows).summary.created == size
            assert world.check("flags", *flag_rows).summary.created == size
        finally:
            event.remove(engine, "before_cursor_execute", count)
        counts[size] = len(seen)
    assert counts[40] == counts[2]
