"""Retention purge and legal holds, on real databases (fresh migrated pair per test).

Time is simulated by moving ``deleted_at`` (and audit rows' ``created_at``)
back in the database; the purge itself runs exactly as the CLI runs it.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from carecli.config import load_settings
from carecli.data import audit_seal
from carecli.data import retention as sql
from carecli.data.crypto.master import LocalMasterKey, encode_key, generate_master_key
from carecli.data.databases import Databases, create_database_engine
from carecli.data.permissions import ALL_PERMISSIONS, Permission
from carecli.data.repositories.identity import IdentityUnitOfWork
from carecli.errors import ConfigError, NotFound, PermissionDenied, ValidationError
from carecli.services import retention
from tests.platform_fixtures import MEMBER_VALUES, Platform

PLATFORM_TABLES = [spec.name for spec in sql.PLATFORM_TABLES]


@dataclass
class World:
    platform: Platform
    databases: Databases

    def age(self, table: str, row_id: uuid.UUID, years: float, database: str = "platform") -> None:
        """Soft-delete a row as if it had happened ``years`` ago."""
        engine = self.databases.engine(database)
        with engine.begin() as connection:
            connection.execute(text(f"UPDATE {table} SET deleted_at = (now() AT TIME ZONE 'UTC') "
                                    "- make_interval(days => :days) WHERE id = :id"),
                               {"days": int(years * 365.25), "id": row_id})

    def exists(self, table: str, row_id: uuid.UUID, database: str = "platform") -> bool:
        with self.databases.engine(database).connect() as connection:
            return connection.execute(text(f"SELECT count(*) FROM {table} WHERE id = :id"),
                                      {"id": row_id}).scalar_one() == 1

    def counts(self) -> dict[str, int]:
        result = {}
        for spec in sql.ALL_TABLES:
            with self.databases.engine(spec.database).connect() as connection:
                result[spec.name] = connection.execute(text(f"SELECT count(*) FROM {spec.name}")).scalar_one()
        result["audit_logs"] = self.platform.scalar("SELECT count(*) FROM audit_logs")
        return result

    def purge_rows(self) -> list[Any]:
        return self.platform.sql("SELECT * FROM audit_logs WHERE action = 'purge' ORDER BY created_at, id")

    def purge(self, actor: Any = None, **kwargs: Any) -> retention.PurgeReport:
        settings = kwargs.pop("settings", None) or load_settings({})
        return retention.purge(self.databases, actor or self.platform.admin, settings, **kwargs)


@pytest.fixture
def world(migrated_engines: Any) -> Iterator[World]:
    yield World(Platform(migrated_engines.platform),
                Databases(identity=migrated_engines.identity, platform=migrated_engines.platform))


@dataclass
class Family:
    """A member with one of everything hanging off them."""

    member: Any
    call: Any
    flag: Any
    enrollment: Any
    note: Any
    specialist: Any
    plan: Any


def family(world: World, *, code: str = "PPO-1", specialist: Any = None, plan: Any = None) -> Family:
    p = world.platform
    plan = plan or p.plan(code)
    specialist = specialist or p.specialist()
    member = p.member()
    call = p.call(member, specialist)
    with p.uow() as uow:
        flag = uow.risk_flags.raise_from_call(call.id, risk_type="medical", severity="high",
                                              description="fell at home")
        enrollment = uow.enrollments.enroll(member.id, plan.id, date(2020, 1, 1))
        note = uow.metadata.put("member", member.id, "note", {"text": "prefers mornings"})
        uow.commit()
    return Family(member, call, flag, enrollment, note, specialist, plan)


def delete_family(world: World, f: Family, years: float = 7) -> None:
    """Soft-delete the member and all their rows, ``years`` ago."""
    for table, row in (("risk_flags", f.flag), ("call_records", f.call), ("member_insurance_plans", f.enrollment),
                       ("metadata", f.note), ("members", f.member)):
        world.age(table, row.id, years)


def by_table(report: retention.PurgeReport) -> dict[str, retention.TableReport]:
    return {table.table: table for table in report.tables}


# -- the purge ------------------------------------------------------------------------------------


def test_old_deleted_member_and_children_are_purged_children_first_with_one_audit_row_each(world):
    f = family(world)
    with world.platform.uow() as uow:  # an importer's fact about the member, still live
        uow.metadata.put("member", f.member.id, "external_member_number", "EXT-1")
        uow.commit()
    delete_family(world, f)
    report = world.purge()
    for table, row in (("risk_flags", f.flag), ("call_records", f.call), ("member_insurance_plans", f.enrollment),
                       ("metadata", f.note), ("members", f.member)):
        assert not world.exists(table, row.id), table
    assert world.platform.scalar("SELECT count(*) FROM metadata WHERE entity_id = :id", id=f.member.id) == 0
    # the live specialist and plan are untouched
    assert world.exists("specialists", f.specialist.id) and world.exists("insurance_plans", f.plan.id)
    counts = {t.table: t.purged for t in report.tables if t.purged}
    assert counts == {"risk_flags": 1, "call_records": 1, "member_insurance_plans": 1, "metadata": 2, "members": 1}
    rows = world.purge_rows()
    order = [row.entity_type for row in rows]
    assert order.index("risk_flag") < order.index("call_record") < order.index("member")
    assert {(row.entity_type, row.entity_id) for row in rows} >= {
        ("risk_flag", f.flag.id), ("call_record", f.call.id), ("member_insurance_plan", f.enrollment.id),
        ("metadata", f.note.id), ("member", f.member.id)}
    deleted_on = (date.today() - timedelta(days=int(7 * 365.25))).isoformat()
    for row in rows:
        assert row.user_id == world.platform.admin.user_id and row.action == "purge" and row.old_values is None
        assert set(row.new_values) <= {"table", "deleted_at", "with"}
        assert row.new_values["table"] in PLATFORM_TABLES
    member_row = next(row for row in rows if row.entity_type == "member")
    assert member_row.new_values == {"table": "members", "deleted_at": member_row.new_values["deleted_at"]}
    assert abs(date.fromisoformat(member_row.new_values["deleted_at"]) - date.fromisoformat(deleted_on)).days <= 1
    fact_row = next(row for row in rows if row.entity_type == "metadata" and row.new_values.get("with"))
    assert fact_row.new_values == {"table": "metadata", "deleted_at": None, "with": "member"}
    everything = " ".join(str(row._mapping) for row in rows)
    for value in (*MEMBER_VALUES.values(), "fell at home", "prefers mornings", "EXT-1", "diabetes"):
        assert value not in everything


def test_a_purged_member_leaves_no_words_in_the_search_side_table(world):
    p = world.platform
    gone, kept = p.member(first_name="Ann", last_name="Murphy-Lane"), p.member(first_name="Jo", last_name="De la Cruz")
    assert world.platform.scalar("SELECT count(*) FROM member_name_prefixes WHERE member_id = :id", id=gone.id) == 4
    world.age("members", gone.id, 7)
    with p.engine.begin() as connection:  # as if the words had been left behind by a soft delete
        connection.execute(text("INSERT INTO member_name_prefixes VALUES ('lane', 'murphy-lane', 'ann', :id, NULL)"),
                           {"id": gone.id})
    assert world.purge().purged >= 1
    assert not world.exists("members", gone.id)
    assert p.scalar("SELECT count(*) FROM member_name_prefixes WHERE member_id = :id", id=gone.id) == 0
    assert p.scalar("SELECT count(*) FROM member_name_prefixes WHERE member_id = :id", id=kept.id) == 6


def test_recent_deletions_and_live_rows_are_kept(world):
    recent, live = family(world), family(world, code="HMO-2")
    delete_family(world, recent, years=5)
    before = world.counts()
    report = world.purge()
    assert report.purged == 0
    assert world.counts() == before
    assert world.purge_rows() == []
    assert all(table.blocked == 0 and table.held == 0 for table in report.tables)
    assert world.exists("members", live.member.id) and world.exists("members", recent.member.id)


def test_a_parent_with_a_live_child_is_kept_and_reported_as_blocked(world):
    f = family(world)
    delete_family(world, f)
    with world.platform.engine.begin() as connection:  # the call stays live
        connection.execute(text("UPDATE call_records SET deleted_at = NULL WHERE id = :id"), {"id": f.call.id})
    report = by_table(world.purge())
    assert world.exists("members", f.member.id) and world.exists("call_records", f.call.id)
    assert report["members"].blocked == 1 and report["members"].blocked_ids == [f.member.id]
    assert report["members"].purged == 0
    # the flag on the live call was deleted on its own and goes; so does the enrollment
    assert not world.exists("risk_flags", f.flag.id) and not world.exists("member_insurance_plans", f.enrollment.id)


def test_deleted_specialists_and_plans_go_once_nothing_refers_to_them(world):
    f = family(world)
    delete_family(world, f)
    world.age("specialists", f.specialist.id, 8)
    world.age("insurance_plans", f.plan.id, 8)
    report = by_table(world.purge())
    assert report["specialists"].purged == 1 and report["insurance_plans"].purged == 1
    assert not world.exists("specialists", f.specialist.id)


def test_a_held_member_and_everything_of_theirs_is_exempt_until_released(world):
    f = family(world)
    delete_family(world, f)
    retention.place_hold(world.databases, world.platform.admin, f.member.id, "Matter 2026-114")
    report = by_table(world.purge())
    assert all(world.exists(t, r.id) for t, r in (("members", f.member), ("call_records", f.call),
                                                   ("risk_flags", f.flag), ("member_insurance_plans", f.enrollment),
                                                   ("metadata", f.note)))
    assert {name: t.held for name, t in report.items() if t.held} == {
        "risk_flags": 1, "call_records": 1, "member_insurance_plans": 1, "metadata": 1, "members": 1}
    assert all(t.purged == 0 and t.blocked == 0 for t in report.values())
    assert [h.member_id for h in retention.holds(world.databases, world.platform.admin)] == [f.member.id]

    retention.release_hold(world.databases, world.platform.admin, f.member.id)
    assert retention.holds(world.databases, world.platform.admin) == []
    world.purge()
    assert not world.exists("members", f.member.id) and not world.exists("risk_flags", f.flag.id)


def _resolution_rows(world: World, flag_id: uuid.UUID) -> int:
    return world.platform.scalar("SELECT count(*) FROM metadata WHERE entity_type = 'risk_flag' "
                                 "AND entity_id = :id AND metadata_key = 'resolution'", id=flag_id)


def test_a_purged_flag_takes_its_resolution_with_it_and_a_held_one_keeps_it(world):
    resolved, held = family(world), family(world, code="PPO-2")
    with world.platform.uow() as uow:
        for f in (resolved, held):
            flag = uow.risk_flags.resolve(f.flag.id, f.flag.updated_at, "Called back, fell at home again")
            # re-opened and resolved again: still one metadata row (revived), live
            flag = uow.risk_flags.reopen(f.flag.id, flag.updated_at, "Second fall reported")
            uow.risk_flags.resolve(f.flag.id, flag.updated_at, "Seen by the nurse")
        uow.commit()
    assert _resolution_rows(world, resolved.flag.id) == _resolution_rows(world, held.flag.id) == 1
    delete_family(world, resolved)
    delete_family(world, held)
    retention.place_hold(world.databases, world.platform.admin, held.member.id, "Matter 2026-115")
    world.purge()
    assert not world.exists("risk_flags", resolved.flag.id) and _resolution_rows(world, resolved.flag.id) == 0
    assert world.exists("risk_flags", held.flag.id) and _resolution_rows(world, held.flag.id) == 1
    fact_rows = [row for row in world.purge_rows() if row.entity_type == "metadata"
                 and (row.new_values or {}).get("with") == "risk_flag"]
    assert len(fact_rows) >= 1  # the resolution (and the flag's other facts), audited as purged with the flag
    everything = " ".join(str(row._mapping) for row in world.purge_rows())
    for value in ("Called back", "Second fall", "Seen by the nurse"):
        assert value not in everything


def test_holds_and_releases_are_audited_without_the_reason(world):
    f = family(world)
    admin = world.platform.admin
    hold = retention.place_hold(world.databases, admin, f.member.id, "Subpoena re: knee surgery")
    assert hold.reason == "Subpoena re: knee surgery" and hold.set_by == str(admin.user_id)
    with pytest.raises(Exception, match="already under legal hold"):
        retention.place_hold(world.databases, admin, f.member.id, "again")
    retention.release_hold(world.databases, admin, f.member.id)
    with pytest.raises(NotFound, match="not under legal hold"):
        retention.release_hold(world.databases, admin, f.member.id)
    retention.place_hold(world.databases, admin, f.member.id, "Matter 7")  # revives the released row
    actions = [row.action for row in world.platform.audit(f.member.id)]
    assert actions[-3:] == ["legal_hold", "legal_hold_release", "legal_hold"]
    trail = " ".join(str(row._mapping) for row in world.platform.audit())
    assert "knee" not in trail and "Matter 7" not in trail
    assert [h.reason for h in retention.holds(world.databases, admin)] == ["Matter 7"]


def test_hold_input_is_checked(world):
    with pytest.raises(NotFound, match="does not exist"):
        retention.place_hold(world.databases, world.platform.admin, uuid.uuid4(), "Matter 1")
    member = world.platform.member()
    with pytest.raises(ValidationError, match="reason"):
        retention.place_hold(world.databases, world.platform.admin, member.id, "   ")
    with pytest.raises(ValidationError, match="longer than"):
        retention.place_hold(world.databases, world.platform.admin, member.id, "x" * 501)


def test_before_only_narrows_the_retention_period(world):
    f = family(world)
    delete_family(world, f, years=8)
    nine_years_ago = date.today() - timedelta(days=9 * 366)
    assert world.purge(before=nine_years_ago).purged == 0
    report = world.purge(before=date.today())  # later than the 6-year cutoff: the cutoff wins
    assert by_table(report)["members"].cutoff.date() < date.today() - timedelta(days=5 * 365)
    assert not world.exists("members", f.member.id)


def test_per_table_retention_from_the_config_file(world, tmp_path):
    f = family(world)
    delete_family(world, f, years=7)
    config = tmp_path / "config.toml"
    config.write_text("[retention]\nyears = 6\n\n[retention.tables]\ncall_records = 10\n")
    settings = load_settings({"CARECLI_CONFIG": str(config)})
    assert settings.retention_years_for("call_records") == 10 and settings.retention_years_for("members") == 6
    report = by_table(world.purge(settings=settings))
    assert report["call_records"].years == 10 and report["call_records"].purged == 0
    assert world.exists("call_records", f.call.id)
    assert report["members"].blocked_ids == [f.member.id]  # its call is still there
    assert not world.exists("risk_flags", f.flag.id)


def test_dry_run_counts_what_a_purge_does_and_writes_nothing(world):
    doomed, held = family(world), family(world, code="HMO-2")
    delete_family(world, doomed)
    delete_family(world, held)
    retention.place_hold(world.databases, world.platform.admin, held.member.id, "Matter 9")
    before = world.counts()
    dry = world.purge(dry_run=True, batch_size=1)
    assert world.counts() == before
    assert dry.dry_run
    real = world.purge(batch_size=1)
    strip = [dataclasses.replace(t, cutoff=None) for t in dry.tables]
    assert strip == [dataclasses.replace(t, cutoff=None) for t in real.tables]
    assert by_table(real)["members"].purged == 1 and by_table(real)["members"].held == 1


def test_small_batches_purge_everything_and_a_rerun_finds_nothing(world):
    plan, specialist = world.platform.plan("PPO-9"), world.platform.specialist()
    families = [family(world, plan=plan, specialist=specialist) for _ in range(3)]
    for f in families:
        delete_family(world, f)
    first = world.purge(batch_size=2)
    assert by_table(first)["members"].purged == 3 and by_table(first)["metadata"].purged == 3
    assert world.purge().purged == 0


def test_a_purge_stopped_part_way_keeps_its_batches_and_a_rerun_finishes(world):
    plan, specialist = world.platform.plan("PPO-9"), world.platform.specialist()
    families = [family(world, plan=plan, specialist=specialist) for _ in range(2)]
    for f in families:
        delete_family(world, f)

    def stop_after_calls(table: retention.TableReport) -> None:
        if table.table == "call_records":
            raise KeyboardInterrupt  # what Ctrl-C does between two batches

    with pytest.raises(KeyboardInterrupt):
        world.purge(batch_size=1, on_table=stop_after_calls)
    assert not any(world.exists("call_records", f.call.id) for f in families)
    assert all(world.exists("members", f.member.id) for f in families)
    rerun = by_table(world.purge())
    assert rerun["call_records"].purged == 0 and rerun["members"].purged == 2
    assert len([row for row in world.purge_rows() if row.entity_type == "call_record"]) == 2


def test_identity_rows_are_purged_children_first_and_users_with_specialists_kept(world):
    admin = world.platform.admin
    with IdentityUnitOfWork(world.databases.identity, world.databases.platform, admin) as uow:
        role = uow.roles.create("temp", ["members:read"], "temporary")
        gone = uow.users.create({"external_user_id": "auth0|gone", "email": "gone@example.org", "role_id": role.id})
        kept = uow.users.create({"external_user_id": "auth0|kept", "email": "kept@example.org", "role_id": role.id})
        uow.commit()
    specialist = world.platform.specialist(user_id=kept.id)
    with world.databases.identity.begin() as connection:
        session_id = connection.execute(text(
            "INSERT INTO sessions (user_id, session_token, expires_at) VALUES (:u, 'x', now()) RETURNING id"),
            {"u": gone.id}).scalar_one()
    for table, row_id in (("sessions", session_id), ("users", gone.id), ("users", kept.id), ("roles", role.id)):
        world.age(table, row_id, 7, database="identity")
    report = by_table(world.purge())
    assert report["sessions"].purged == 1 and report["users"].purged == 1
    assert not world.exists("users", gone.id, "identity") and world.exists("users", kept.id, "identity")
    assert report["users"].blocked_ids == [kept.id]
    assert report["roles"].blocked == 1  # the kept user still has the role
    assert world.exists("specialists", specialist.id)
    audited = {(row.entity_type, row.entity_id) for row in world.purge_rows()}
    assert {("session", session_id), ("user", gone.id)} <= audited


def test_purge_needs_retention_admin_and_the_refusal_is_audited(world):
    f = family(world)
    delete_family(world, f)
    actor = world.platform.actor(*(ALL_PERMISSIONS - {Permission.RETENTION_ADMIN}), role="supervisor")
    with pytest.raises(PermissionDenied, match="retention:admin"):
        world.purge(actor)
    with pytest.raises(PermissionDenied):
        retention.place_hold(world.databases, actor, f.member.id, "Matter 1")
    with pytest.raises(PermissionDenied):
        retention.holds(world.databases, actor)
    assert world.exists("members", f.member.id)
    denials = world.platform.audit(action="deny", entity_type="retention")
    assert [(row.entity_id, row.new_values) for row in denials] == [
        (retention.NIL, {"operation": "purge deleted records", "permission": "retention:admin"}),
        (f.member.id, {"operation": "place legal holds", "permission": "retention:admin"}),
        (retention.NIL, {"operation": "list legal holds", "permission": "retention:admin"})]
    assert world.purge_rows() == []


def test_a_role_without_delete_is_told_to_use_the_owner(world):
    """Connected as a role that may read and write but not DELETE (like the app role), nothing is purged."""
    f = family(world)
    delete_family(world, f)
    role = f"retention_test_{uuid.uuid4().hex[:8]}"
    with world.databases.platform.begin() as connection:
        connection.execute(text(f"CREATE ROLE {role} NOLOGIN"))
        connection.execute(text(f"GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA public TO {role}"))
    url = world.databases.platform.url.update_query_dict({"options": f"-c role={role}"})
    engine = create_database_engine(url, load_settings({}))
    try:
        limited = Databases(identity=world.databases.identity, platform=engine)
        with pytest.raises(ConfigError, match="may not DELETE from risk_flags, call_records") as caught:
            retention.purge(limited, world.platform.admin, load_settings({}))
        assert "owner" in str(caught.value)
        with engine.connect() as connection:
            assert not sql.owns_audit_logs(connection)
    finally:
        engine.dispose()
        with world.databases.platform.begin() as connection:
            connection.execute(text(f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {role}"))
            connection.execute(text(f"DROP ROLE {role}"))
    assert world.exists("members", f.member.id)


# -- audit rows -----------------------------------------------------------------------------------


def _audit_row(world: World, years_ago: float) -> uuid.UUID:
    row_id = uuid.uuid4()
    with world.databases.platform.begin() as connection:
        connection.execute(text(
            "INSERT INTO audit_logs (id, entity_type, entity_id, action, created_at) VALUES "
            "(:id, 'member', :id, 'read', (now() AT TIME ZONE 'UTC') - make_interval(days => :days))"),
            {"id": row_id, "days": int(years_ago * 365.25)})
    return row_id


def test_audit_purge_needs_the_admin_role_and_removes_only_rows_older_than_the_audit_period(world):
    old, middle, recent = _audit_row(world, 8), _audit_row(world, 6.5), _audit_row(world, 1)
    master = generate_master_key()
    settings = load_settings({"CARECLI_MASTER_KEY": encode_key(master)})
    operator = world.platform.actor(*ALL_PERMISSIONS, role="operator")
    with pytest.raises(PermissionDenied, match="role:admin"):
        retention.purge_audit(world.databases, operator, settings)
    assert world.platform.audit(action="deny")[0].new_values == {"operation": "purge audit rows",
                                                                 "permission": "role:admin"}
    dry = retention.purge_audit(world.databases, world.platform.admin, settings, dry_run=True)
    assert dry.purged == 1 and world.exists("audit_logs", old)
    done = retention.purge_audit(world.databases, world.platform.admin, settings)
    assert done.purged == 1 and done.years == 7
    assert not world.exists("audit_logs", old)
    assert world.exists("audit_logs", middle) and world.exists("audit_logs", recent)
    summary = world.platform.audit(action="purge", entity_type="audit_log")
    assert len(summary) == 1 and summary[0].new_values["rows"] == 1
    # The removed row is accounted for by a purge seal: the sealed history still verifies.
    report = audit_seal.verify(world.databases.platform, LocalMasterKey(master, "test"))
    assert report.intact and report.rows_purged == 1
    # the ordinary purge never touches audit rows
    world.purge()
    assert world.exists("audit_logs", middle)


def test_the_database_refuses_to_purge_audit_rows_younger_than_six_years_whatever_is_set(world):
    recent = _audit_row(world, 5)
    with pytest.raises(DBAPIError, match="append-only"):
        with world.databases.platform.begin() as connection:
            connection.execute(text("SELECT set_config('carecli.audit_purge_before', "
                                    "CAST(now() AT TIME ZONE 'UTC' AS text), true)"))
            connection.execute(text("DELETE FROM audit_logs WHERE id = :id"), {"id": recent})
    with pytest.raises(DBAPIError, match="append-only"):  # and without the setting, nothing at all
        with world.databases.platform.begin() as connection:
            connection.execute(text("DELETE FROM audit_logs WHERE id = :id"), {"id": _audit_row(world, 9)})
    with pytest.raises(DBAPIError, match="append-only"):
        with world.databases.platform.begin() as connection:
            connection.execute(text("UPDATE audit_logs SET action = 'x' WHERE id = :id"), {"id": recent})
    assert world.exists("audit_logs", recent)


def test_audit_years_below_the_floor_and_unknown_tables_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="at least 6"):
        load_settings({"CARECLI_RETENTION_AUDIT_YEARS": "5"})
    config = tmp_path / "config.toml"
    config.write_text("[retention.tables]\ncall_record = 10\n")
    with pytest.raises(ConfigError, match="unknown table 'call_record'"):
        load_settings({"CARECLI_CONFIG": str(config)})
    config.write_text("[retention.tables]\ncall_records = 0\n")
    with pytest.raises(ConfigError, match="call_records must be a positive"):
        load_settings({"CARECLI_CONFIG": str(config)})
    config.write_text("[retention]\nyaers = 3\n")
    with pytest.raises(ConfigError, match="unknown setting 'yaers'"):
        load_settings({"CARECLI_CONFIG": str(config)})
