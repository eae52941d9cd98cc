"""Stored rows that break a rule are counted, not rewritten: ``carecli check data`` and the doctor's warning.

The violating rows are written with raw SQL, as legacy data (or an old
version of carecli) would have left them.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, text

from carecli.config import load_settings
from carecli.data.actor import Actor
from carecli.data.databases import Databases, create_database_engine
from carecli.data.integrity import RULES, count_violations, total
from carecli.data.permissions import ALL_PERMISSIONS, DEFAULT_ROLES
from carecli.data.repositories.identity import IdentityUnitOfWork
from carecli.data.rules import utc_now
from carecli.errors import EXIT_FAILURE, PermissionDenied
from carecli.services import doctor as doc
from carecli.services.auth.tokens import create_api_token
from carecli.services.integrity import check_data
from tests.cli import Result, run_carecli
from tests.platform_fixtures import Platform, make_actor

NOW = utc_now()


def counts_of(engine: Engine) -> dict[str, int]:
    with engine.connect() as connection:
        return {count.name: count.count for count in count_violations(connection)}


def realistic(platform: Platform) -> dict[str, Any]:
    """Rows that keep every rule, made through the repositories."""
    member, specialist = platform.member(), platform.specialist()
    plan = platform.plan("Y", effective_date=date(2020, 1, 1), expiration_date=date(2030, 12, 31))
    call = platform.call(member, specialist)
    scheduled = platform.call(member, specialist, call_status="scheduled", started_at=None, ended_at=None,
                              scheduled_at=NOW + timedelta(days=2))
    with platform.uow() as uow:
        uow.risk_flags.raise_from_call(call.id, risk_type="medical", severity="high", description="dizzy")
        uow.enrollments.enroll(member.id, plan.id, date(2024, 1, 1))
        uow.commit()
    return {"member": member, "specialist": specialist, "plan": plan, "call": call, "scheduled": scheduled}


def break_every_rule(platform: Platform, rows: dict[str, Any]) -> None:
    """One live row per rule (and one deleted row that must not count), with raw SQL."""
    member, specialist, plan = rows["member"].id, rows["specialist"].id, rows["plan"].id
    open_plan = platform.plan("OPEN")
    newcomer = platform.member(first_name="Nia", created_at=NOW)
    other = platform.member(first_name="Oz")
    with platform.engine.begin() as connection:
        def run(statement: str, **params: Any) -> None:
            connection.execute(text(statement), params)

        call_sql = ("INSERT INTO call_records (id, member_id, specialist_id, call_type, call_status, started_at, "
                    "ended_at, deleted_at) VALUES (gen_random_uuid(), :m, :s, 'outreach', 'completed', :start, :end, "
                    ":deleted)")
        run(call_sql, m=member, s=specialist, start=NOW + timedelta(days=2), end=None, deleted=None)  # not_future
        run(call_sql, m=member, s=specialist, start=NOW + timedelta(days=2), end=None, deleted=NOW)  # deleted
        # The schema's CHECK refuses this one; a database restored from before it (or altered by hand) has them.
        run("ALTER TABLE call_records DROP CONSTRAINT call_records_ended_after_started_check")
        run(call_sql, m=member, s=specialist, start=datetime(2024, 1, 1, 10), end=datetime(2024, 1, 1, 9),
            deleted=None)  # date_order
        run(call_sql, m=newcomer.id, s=specialist, start=datetime(2021, 1, 1, 10), end=None,
            deleted=None)  # before_member
        flag_sql = ("INSERT INTO risk_flags (id, call_record_id, member_id, specialist_id, risk_type, severity, "
                    "description) VALUES (gen_random_uuid(), :c, :m, :s, 'medical', 'high', 'x')")
        run(flag_sql, c=rows["scheduled"].id, m=member, s=specialist)  # call_not_held
        run(flag_sql, c=rows["call"].id, m=other.id, s=specialist)  # call_mismatch
        enroll_sql = ("INSERT INTO member_insurance_plans (id, member_id, insurance_plan_id, enrollment_date, "
                      "termination_date, status) VALUES (gen_random_uuid(), :m, :p, :start, :end, :status)")
        run(enroll_sql, m=other.id, p=open_plan.id, start=date(1850, 1, 1), end=None, status="active")
        run(enroll_sql, m=other.id, p=plan, start=date(2019, 1, 1), end=None, status="active")  # plan_dates
        run(enroll_sql, m=other.id, p=plan, start=date(2021, 1, 1), end=date(2031, 1, 1), status="active")
        run(enroll_sql, m=other.id, p=open_plan.id, start=date(2022, 1, 1), end=NOW.date() + timedelta(days=30),
            status="terminated")  # status_dates
        run("UPDATE members SET phone = '(503) 555-0100' WHERE id = :m", m=other.id)  # phone_format
        run("INSERT INTO member_name_prefixes VALUES ('x', 'x', 'x', :m, NULL)", m=other.id)  # stale


@pytest.fixture
def world(migrated_engines: Any) -> Iterator[tuple[Platform, Databases]]:
    yield Platform(migrated_engines.platform), Databases(identity=migrated_engines.identity,
                                                         platform=migrated_engines.platform)


def test_realistic_data_breaks_no_rule(world: tuple[Platform, Databases]) -> None:
    platform, _ = world
    realistic(platform)
    assert counts_of(platform.engine) == {rule.name: 0 for rule in RULES}


def test_each_rule_counts_its_own_live_rows(world: tuple[Platform, Databases]) -> None:
    platform, _ = world
    break_every_rule(platform, realistic(platform))
    assert counts_of(platform.engine) == {rule.name: 1 for rule in RULES}


def test_the_check_needs_audit_read_and_a_refusal_is_audited(world: tuple[Platform, Databases]) -> None:
    platform, databases = world
    break_every_rule(platform, realistic(platform))
    auditor = make_actor(DEFAULT_ROLES["auditor"][1], role="auditor")
    assert total(check_data(databases, auditor)) == len(RULES)
    specialist = make_actor(DEFAULT_ROLES["specialist"][1], role="specialist")
    with pytest.raises(PermissionDenied, match="audit:read"):
        check_data(databases, specialist)
    [denied] = platform.sql("SELECT * FROM audit_logs WHERE action = 'deny' AND user_id = :u", u=specialist.user_id)
    assert denied.entity_type == "data_check" and denied.new_values["permission"] == "audit:read"


def test_the_doctor_warns_with_the_total_and_names_the_command(world: tuple[Platform, Databases]) -> None:
    platform, databases = world
    rows = realistic(platform)
    doctor = doc.Doctor(load_settings({}), databases, environ={})
    checks = [doc.check_reachable, doc.check_migrations, doc.check_stored_data]
    [clean] = [r for r in doc.run_checks(doctor, checks) if r.name == "stored data"]
    assert clean.status == "pass"
    break_every_rule(platform, rows)
    doctor = doc.Doctor(load_settings({}), databases, environ={})
    [found] = [r for r in doc.run_checks(doctor, checks) if r.name == "stored data"]
    assert found.status == "warn" and f"{len(RULES)} live rows" in found.detail
    assert "carecli check data" in found.action and "calls.not_future 1" in found.detail


# -- the command, as scripts run it ---------------------------------------------------------------------------

ROLES = {"auditor": DEFAULT_ROLES["auditor"][1], "specialist": DEFAULT_ROLES["specialist"][1]}
SCOPES = {"auditor": ["audit:read"], "specialist": ["members:read"]}


@dataclass
class Install:
    platform: Platform
    env: dict[str, str]
    tokens: dict[str, str] = field(default_factory=dict)

    def cli(self, *args: str, token: str = "auditor") -> Result:
        return run_carecli(*args, env={**self.env, "CARECLI_TOKEN": self.tokens[token]})


@pytest.fixture
def inst(pg_server: Any, template_pair: Any, tmp_path: Any) -> Iterator[Install]:
    names = (pg_server.create_database("identity", template=template_pair.identity),
             pg_server.create_database("platform", template=template_pair.platform))
    settings = load_settings({})
    identity = create_database_engine(pg_server.url(names[0]), settings)
    platform = create_database_engine(pg_server.url(names[1]), settings)
    env = {**pg_server.env_for(*names), "PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring",
           "XDG_STATE_HOME": str(tmp_path / "state")}
    install = Install(Platform(platform), env)
    databases = Databases(identity=identity, platform=platform)
    bootstrap = Actor.create(uuid.uuid4(), ALL_PERMISSIONS, channel="cli", role="admin")
    with IdentityUnitOfWork(identity, platform, bootstrap) as uow:
        users = {}
        for name, permissions in ROLES.items():
            role = uow.roles.create(f"{name}-check", list(permissions), f"{name} (check data tests)")
            users[name] = uow.users.create({"external_user_id": f"auth0|{name}", "email": f"{name}@example.org",
                                            "role_id": role.id})
        uow.commit()
    for name, permissions in ROLES.items():
        actor = Actor.create(users[name].id, permissions, channel="cli", role=name)
        install.tokens[name] = create_api_token(databases, actor, name=f"{name} check",
                                                scopes=SCOPES[name]).secret
    try:
        yield install
    finally:
        identity.dispose()
        platform.dispose()
        for name in names:
            pg_server.drop_database(name)


def test_check_data_prints_each_rule_and_exits_1_when_any_row_breaks_one(inst: Install) -> None:
    rows = realistic(inst.platform)
    clean = inst.cli("check", "data")
    assert clean.code == 0, clean.err
    assert "No stored row breaks a rule." in clean.out and all(rule.name in clean.out for rule in RULES)
    break_every_rule(inst.platform, rows)
    found = inst.cli("check", "data", "--json")
    assert found.code == EXIT_FAILURE, found.err
    report = json.loads(found.out)
    assert report["total"] == len(RULES)
    assert {entry["rule"]: entry["count"] for entry in report["rules"]} == {rule.name: 1 for rule in RULES}
    table = inst.cli("check", "data")
    assert table.code == EXIT_FAILURE and f"{len(RULES)} stored rows break a rule" in table.out
    assert "Okafor" not in table.out + found.out and "555" not in table.out + found.out


def test_check_data_refuses_a_user_without_audit_read(inst: Install) -> None:
    out = inst.cli("check", "data", token="specialist")
    assert out.code != 0 and "audit:read" in out.err
