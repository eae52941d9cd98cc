"""The migrated schema is the seed's: same tables, columns, types, defaults and keys."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import delete, select, text, update
from sqlalchemy.exc import IntegrityError

from carecli.data.migrate import TARGET_METADATA, VERSION_TABLES
from carecli.data.models import IDENTITY_METADATA, PLATFORM_METADATA
from carecli.data.models.base import TableModel
from tests.seed_schema import (
    CROSS_DATABASE_FK,
    FIXTURE,
    IDENTITY_TABLES,
    OWN_TABLES,
    PLATFORM_TABLES,
    SPEC,
    seed_create_statements,
    snapshot,
)


@pytest.fixture(scope="module")
def seed_snapshot(pg_server):
    """All thirteen seed tables built by the seed's own SQL in one database."""
    name = pg_server.create_database("seed_reference")
    url = pg_server.url(name).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(url, autocommit=True) as conn:
        for statement in seed_create_statements().values():
            conn.execute(statement)
        snap = snapshot(conn)
    pg_server.drop_database(name)
    return snap


@pytest.fixture(scope="module")
def migrated_snapshot(template_pair):
    snaps = {}
    for database in ("identity", "platform"):
        url = template_pair.url(database).set(drivername="postgresql").render_as_string(hide_password=False)
        with psycopg.connect(url) as conn:
            snaps[database] = snapshot(conn, seed_only=True)
    return snaps


def _union(snaps, key):
    return snaps["identity"][key] | snaps["platform"][key]


def test_fixture_is_a_verbatim_copy_of_the_spec():
    if not SPEC.exists():
        pytest.skip("shared/seed/datastores.md is not beside this checkout")
    assert FIXTURE.read_text() == SPEC.read_text(), "refresh tests/fixtures/datastores.md from shared/seed"


def test_each_database_holds_exactly_its_tables(template_pair):
    for database, seed_tables in (("identity", IDENTITY_TABLES), ("platform", PLATFORM_TABLES)):
        url = template_pair.url(database).set(drivername="postgresql").render_as_string(hide_password=False)
        with psycopg.connect(url) as conn:
            tables = {row[0] for row in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        assert tables == set(seed_tables) | OWN_TABLES[database] | {VERSION_TABLES[database]}


def test_columns_match_the_seed_exactly(seed_snapshot, migrated_snapshot):
    """Name, position, type with length/precision, NOT NULL and default of every column."""
    expected = seed_snapshot["columns"]
    actual = _union(migrated_snapshot, "columns")
    assert actual - expected == set()
    assert expected - actual == set()
    assert len(actual) == 136  # the seed has 136 columns in all


def test_keys_match_the_seed_but_for_the_cross_database_fk(seed_snapshot, migrated_snapshot):
    """PKs, UNIQUE (incl. composite) and FKs: only specialists.user_id -> users(id) is missing."""
    expected = seed_snapshot["keys"]
    actual = _union(migrated_snapshot, "keys")
    assert actual - expected == set()
    assert expected - actual == {CROSS_DATABASE_FK}


@pytest.mark.parametrize(
    ("table", "column", "values"),
    [
        # the seed's three, and carecli's SSH keys (identity_0003)
        ("tokens", "token_type", ("access", "refresh", "api", "ssh_key")),
        ("members", "status", ("active", "inactive", "suspended")),
        ("call_records", "call_type", ("outreach", "follow_up", "support")),
        ("call_records", "call_status", ("scheduled", "completed", "cancelled", "no_answer")),
        ("risk_flags", "risk_type", ("medical", "financial", "compliance", "safety", "other")),
        ("risk_flags", "severity", ("low", "medium", "high", "critical")),
        ("member_insurance_plans", "status", ("active", "terminated", "suspended")),
    ],
)
def test_enumerations_have_check_constraints(migrated_snapshot, table, column, values):
    checks = [d for (t, _, d) in _union(migrated_snapshot, "checks") if t == table and f"({column})::text" in d]
    assert len(checks) == 1, checks
    assert sorted(re.findall(r"'(\w+)'", checks[0])) == sorted(values)


def test_a_value_outside_an_enumeration_is_refused(migrated_engines):
    with pytest.raises(IntegrityError, match="members_status_check"):
        with migrated_engines.platform.begin() as conn:
            conn.execute(text("INSERT INTO members (first_name, last_name, status) VALUES ('A', 'B', 'gone')"))


def test_foreign_keys_are_indexed(template_pair):
    """Every FK's columns lead some full (non-partial) index, so joins and FK checks stay fast."""
    for database in ("identity", "platform"):
        url = template_pair.url(database).set(drivername="postgresql").render_as_string(hide_password=False)
        with psycopg.connect(url) as conn:
            unindexed = conn.execute(
                """
                SELECT co.conrelid::regclass::text, co.conname
                FROM pg_constraint co
                WHERE co.contype = 'f' AND NOT EXISTS (
                    SELECT 1 FROM pg_index i
                    WHERE i.indrelid = co.conrelid AND i.indpred IS NULL
                      AND (i.indkey::int2[])[0:array_length(co.conkey, 1) - 1] = co.conkey
                )
                """
            ).fetchall()
        assert unindexed == [], f"{database}: {unindexed}"


def test_specialist_user_id_is_indexed_without_a_constraint(template_pair):
    url = template_pair.url("platform").set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(url) as conn:
        fks = conn.execute(
            "SELECT count(*) FROM pg_constraint WHERE conrelid = 'specialists'::regclass AND contype = 'f'"
        ).fetchone()
        index = conn.execute("SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_specialists_user_id'").fetchone()
    assert fks == (0,)
    assert index is not None and "(user_id)" in index[0]


@pytest.mark.parametrize("database", ["identity", "platform"])
def test_models_match_the_migrated_schema(migrated_engines, database):
    """The model tables and the migrations describe the same schema (autogenerate sees no diff)."""
    engine = getattr(migrated_engines, database)
    with engine.connect() as connection:
        context = MigrationContext.configure(
            connection,
            opts={"compare_type": True, "compare_server_default": True, "version_table": VERSION_TABLES[database]},
        )
        diff = compare_metadata(context, TARGET_METADATA[database])
    assert diff == []


def test_server_defaults_fill_in(migrated_engines):
    """gen_random_uuid(), now(), true, 'active' and 100.00 work without any contrib extension."""
    with migrated_engines.platform.begin() as conn:
        member = conn.execute(text(
            "INSERT INTO members (first_name, last_name) VALUES ('Ada', 'Lovelace') "
            "RETURNING id, status, created_at, updated_at")).one()
        plan = conn.execute(text(
            "INSERT INTO insurance_plans (plan_code, plan_name) VALUES ('P1', 'Plan') RETURNING id, is_active")).one()
        enrollment = conn.execute(text(
            "INSERT INTO member_insurance_plans (member_id, insurance_plan_id, enrollment_date) "
            "VALUES (:m, :p, '2025-01-01') RETURNING status, is_primary, coverage_percentage"),
            {"m": member.id, "p": plan.id}).one()
    assert member.id is not None and member.status == "active" and member.created_at is not None
    assert plan.is_active is True
    assert (enrollment.status, enrollment.is_primary, str(enrollment.coverage_percentage)) == (
        "active", False, "100.00")


def _table_models() -> list[type[TableModel]]:
    found, stack = [], list(TableModel.__subclasses__())
    while stack:
        model = stack.pop()
        stack.extend(model.__subclasses__())
        if "__tablename__" in model.__dict__:
            found.append(model)
    return found


def test_every_table_has_one_model_class_whose_attributes_are_its_columns():
    models = _table_models()
    tables = {model.__table__ for model in models}
    assert len(tables) == len(models)
    assert tables == set(IDENTITY_METADATA.tables.values()) | set(PLATFORM_METADATA.tables.values())
    for model in models:
        table = model.__table__
        assert table.name == model.__tablename__
        assert table.metadata is model.metadata
        for column in table.columns:
            assert getattr(model, column.key) is column, (model, column.key)
        # The class stands for its table in statements (SQLAlchemy's __clause_element__ protocol).
        assert select(model).get_final_froms() == [table]
        assert update(model).table is table and delete(model).table is table


def test_the_models_load_without_the_orm(tmp_path):
    """The models are Core tables: a process that loads them, the desk and its repositories (the app's
    launch) does not pay for ``sqlalchemy.orm``."""
    probe = ("import sys, carecli.data.models, carecli.services.desk, carecli.data.repositories.worklist\n"
             "print(sorted(m for m in sys.modules if m.startswith('sqlalchemy.orm')))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60,
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert done.stdout.strip() == "[]"
