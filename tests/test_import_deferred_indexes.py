"""Bulk loads where indexes cost most (carecli/data/deferred_indexes.py), on a real PostgreSQL.

A large load drops the secondary indexes of members, metadata and audit_logs,
recording each definition in the drop's transaction, and builds them again
after the data; whatever stops it, the next import, ``carecli db upgrade`` or
``carecli db rebuild-indexes`` builds what is recorded. The import CLI's own
tests (a large first load, a kill -9 while the indexes are dropped and the
re-run) are in tests/test_import_cli.py; the doctor's in tests/test_doctor.py.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Connection, Engine, text

from carecli.data import audit, deferred_indexes, migrate
from carecli.data.actor import Actor
from tests.cli import run_carecli

TABLES = deferred_indexes.DEFERRABLE_TABLES
SYSTEM = Actor.system("cli")


def _indexes(engine: Engine) -> dict[str, tuple[str, bool, dict[int, int]]]:
    """Every index of the three tables: definition, valid, statistics targets set on its columns."""
    with engine.connect() as connection:
        rows = connection.execute(text(
            "SELECT ic.relname, pg_get_indexdef(i.indexrelid), i.indisvalid, "
            "coalesce((SELECT jsonb_object_agg(a.attnum::text, a.attstattarget) FROM pg_attribute a "
            "WHERE a.attrelid = i.indexrelid AND a.attnum > 0 AND a.attstattarget >= 0), '{}'::jsonb) "
            "FROM pg_index i JOIN pg_class t ON t.oid = i.indrelid JOIN pg_class ic ON ic.oid = i.indexrelid "
            "WHERE t.relname = ANY(:tables)"), {"tables": list(TABLES)}).all()
    return {name: (definition, valid, {int(k): int(v) for k, v in stats.items()})
            for name, definition, valid, stats in rows}


def _records(engine: Engine) -> list[Any]:
    with engine.connect() as connection:
        return deferred_indexes.recorded(connection)


def _defer(connection: Connection, tables: tuple[str, ...] = TABLES, run: uuid.UUID | None = None,
           actor: Actor = SYSTEM) -> list[deferred_indexes.IndexInfo]:
    return deferred_indexes.defer(connection, dict.fromkeys(tables, 0), run_id=run or uuid.uuid4(), actor=actor,
                                  reason="test load", incoming=dict.fromkeys(tables, 1))


def _kill(engine: Engine, connection: Connection) -> None:
    """End ``connection``'s session as a kill -9 of its process would (the socket closes), and wait until
    the server has noticed (its load no longer counts as running)."""
    connection.invalidate()
    connection.close()
    deadline = time.monotonic() + 15
    while any(record.alive for record in _records(engine)):
        assert time.monotonic() < deadline, "the killed session did not go away"
        time.sleep(0.05)


@pytest.fixture
def engine(platform: Any) -> Iterator[Engine]:
    yield platform.engine


def test_deferring_drops_only_secondary_non_unique_indexes_and_building_gives_them_back_exactly(engine):
    before = _indexes(engine)
    run = uuid.uuid4()
    with engine.connect() as connection:
        deferred = _defer(connection, run=run)
        names = {index.name for index in deferred}
        # Never a primary key, a unique index or the seed's UNIQUE constraint.
        assert names and all(name.startswith("ix_") for name in names)
        gone = set(before) - set(_indexes(engine))
        assert gone == names
        for kept in ("members_pkey", "metadata_pkey", "audit_logs_pkey", "uq_metadata_ssn_blind_index",
                     "uq_metadata_member_number", "metadata_entity_type_entity_id_metadata_key_key"):
            assert kept in _indexes(engine)
        # ix_members_name_folded keeps the statistics target platform_0011 gave its folded names.
        records = {record.name: record for record in _records(engine)}
        assert set(records) == names
        assert records["ix_members_name_folded"].statistics == {"1": 1000, "2": 1000}
        assert all(record.alive and not record.present for record in records.values())
        # Somebody else does not build the indexes of a load that still runs.
        assert deferred_indexes.rebuild(engine, SYSTEM).built == []
        result = deferred_indexes.rebuild(engine, SYSTEM, run_id=run)
    assert sorted(result.built) == sorted(names) and not result.failed
    assert _indexes(engine) == before
    assert _records(engine) == []
    with engine.connect() as connection:
        rows = connection.execute(text(
            "SELECT action, new_values FROM audit_logs WHERE entity_type = :t AND entity_id = :run "
            "ORDER BY created_at"),
            {"t": deferred_indexes.ENTITY_TYPE, "run": run}).all()
    assert [action for action, _ in rows].count("defer_indexes") == 3
    assert sorted(values["index"] for action, values in rows if action == "rebuild_indexes") == sorted(names)
    assert {values["table"] for action, values in rows if action == "defer_indexes"} == set(TABLES)


def test_a_load_that_is_gone_leaves_records_anyone_builds(engine):
    before = _indexes(engine)
    connection = engine.connect()
    deferred = _defer(connection, ("members",))
    # The load's session ends without building anything (a kill -9 closes it the same way).
    _kill(engine, connection)
    records = _records(engine)
    assert {record.name for record in records} == {index.name for index in deferred}
    assert not any(record.alive for record in records)
    result = deferred_indexes.rebuild(engine, SYSTEM)
    assert sorted(result.built) == sorted(index.name for index in deferred)
    assert _indexes(engine) == before and _records(engine) == []


def test_an_index_found_invalid_or_different_is_built_as_recorded(engine):
    before = _indexes(engine)
    connection = engine.connect()
    _defer(connection, ("members",))
    _kill(engine, connection)
    with engine.begin() as admin:
        # A concurrent build that failed leaves an INVALID index under the name; another is not ours.
        admin.exec_driver_sql("CREATE INDEX ix_members_status ON members (status) WHERE deleted_at IS NULL")
        admin.exec_driver_sql("UPDATE pg_index SET indisvalid = false WHERE indexrelid = 'ix_members_status'::regclass")
        admin.exec_driver_sql("CREATE INDEX ix_members_created ON members (created_at)")
    assert deferred_indexes.rebuild(engine, SYSTEM).failed == []
    assert _indexes(engine) == before
    with engine.connect() as connection:
        outcomes = dict(connection.execute(text(
            "SELECT new_values->>'index', new_values->>'outcome' FROM audit_logs "
            "WHERE action = 'rebuild_indexes'")).all())
    assert outcomes["ix_members_status"] == "rebuilt (was invalid)"
    assert outcomes["ix_members_created"] == "rebuilt (was different)"


def test_a_large_load_into_a_small_table_defers_and_a_small_one_into_a_big_table_does_not(engine):
    with engine.begin() as connection:
        connection.execute(text("INSERT INTO members (first_name, last_name) "
                                "SELECT 'Ada', 'Lovelace' FROM generate_series(1, 30000)"))
    with engine.connect() as connection:
        auto = deferred_indexes.choose_tables
        assert auto(connection, {"members": 40_000}, "auto") == {"members": 30_000}
        assert auto(connection, {"members": 30_000}, "auto") == {"members": 30_000}  # as many as there are
        assert auto(connection, {"members": 20_000}, "auto") == {}
        # Below the minimum nothing is deferred, however empty the table.
        assert auto(connection, {"audit_logs": deferred_indexes.MIN_ROWS - 1}, "auto") == {}
        assert set(auto(connection, {"audit_logs": deferred_indexes.MIN_ROWS}, "auto")) == {"audit_logs"}
        assert set(auto(connection, {"members": 5, "call_records": 10**6}, "always")) == {"members"}
        assert auto(connection, {"members": 10**6}, "never") == {}


def test_deferring_waits_for_its_lock_only_briefly_and_then_keeps_the_indexes(engine, monkeypatch):
    monkeypatch.setattr(deferred_indexes, "LOCK_TIMEOUT_MS", 100)
    before = _indexes(engine)
    with engine.connect() as reader:
        # A long transaction reading members (the app, say): its lock outlasts every attempt.
        reader.execute(text("SELECT count(*) FROM members"))
        with engine.connect() as connection:
            assert _defer(connection, ("members",)) == []
        reader.rollback()
    assert _indexes(engine) == before and _records(engine) == []


def test_a_later_load_takes_over_the_records_of_a_killed_one(engine):
    before = _indexes(engine)
    killed = engine.connect()
    first = _defer(killed, ("members",))
    _kill(engine, killed)
    run = uuid.uuid4()
    with engine.connect() as connection:
        second = _defer(connection, ("members", "audit_logs"), run=run)
        # The members indexes are missing already: taken over, not dropped twice.
        assert {i.name for i in first} <= {i.name for i in second}
        assert all(record.alive and record.by_run == run for record in _records(engine))
        deferred_indexes.rebuild(engine, SYSTEM, run_id=run)
    assert _indexes(engine) == before and _records(engine) == []


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(st.tuples(st.sets(st.sampled_from(TABLES), min_size=1).map(lambda s: tuple(sorted(s))),
                                st.booleans()), min_size=1, max_size=3))
def test_whatever_loads_defer_and_however_they_end_the_indexes_come_back_exactly(engine, steps):
    """Loads defer some tables and are killed (True) or end on their own; one build afterwards gives
    back exactly the indexes there were, definitions and statistics targets included."""
    before = _indexes(engine)
    for tables, killed in steps:
        connection = engine.connect()
        run = uuid.uuid4()
        _defer(connection, tables, run=run)
        if killed:
            _kill(engine, connection)
        else:
            deferred_indexes.rebuild(engine, SYSTEM, run_id=run)
            connection.close()
    deferred_indexes.rebuild(engine, SYSTEM)
    assert _indexes(engine) == before and _records(engine) == []


def test_the_app_keeps_searching_counting_and_saving_while_the_indexes_are_dropped(platform):
    from carecli.data.repositories.member_search import MemberQuery

    member = platform.member(first_name="Ottilie", last_name="Quernby", email="ottilie.q@example.org")
    run = uuid.uuid4()
    with platform.engine.connect() as load:
        assert _defer(load, ("members", "audit_logs"), run=run)
        with platform.uow() as uow:
            for text_ in ("quer", "ottilie", "ottilie.q@", "Quernby Ott"):
                assert [row.id for row in uow.member_search.search(MemberQuery(text=text_)).rows] == [member.id]
            assert uow.member_search.count(MemberQuery(status="active")).value == 1
            uow.members.update(member.id, member.updated_at, {"city": "Zephyrton"})
            uow.commit()
        deferred_indexes.rebuild(platform.engine, SYSTEM, run_id=run)
    assert _records(platform.engine) == []


def test_the_audit_rows_hold_no_values(platform):
    member = platform.member()
    with platform.engine.connect() as connection:
        _defer(connection, ("members",), actor=platform.admin)
    deferred_indexes.rebuild(platform.engine, platform.admin)
    text_of_rows = str(platform.sql(f"SELECT old_values, new_values FROM audit_logs WHERE entity_type = "
                                    f"'{deferred_indexes.ENTITY_TYPE}'"))
    for value in (member.first_name, member.last_name, member.email, member.phone, "123-45-6789"):
        assert value is None or value not in text_of_rows
    assert audit.REDACTED not in text_of_rows  # nothing needed redacting: only names of indexes and tables


# -- the CLI: db upgrade, db check, db rebuild-indexes, and the downgrade ----------------------------------------


def _orphan(engine: Engine, tables: tuple[str, ...] = ("members",)) -> list[str]:
    connection = engine.connect()
    deferred = _defer(connection, tables)
    _kill(engine, connection)
    return [index.name for index in deferred]


def _platform_engine(pair: Any) -> Engine:
    from carecli.config import load_settings
    from carecli.data.databases import create_database_engine

    return create_database_engine(pair.url("platform"), load_settings({}))


def test_db_check_fails_and_rebuild_indexes_builds_what_a_stopped_load_left(migrated_pair):
    engine = _platform_engine(migrated_pair)
    try:
        before = _indexes(engine)
        names = _orphan(engine)
        check = run_carecli("db", "check", env=migrated_pair.env)
        assert check.code == 1
        assert "dropped by a bulk load that stopped are missing" in check.out
        assert "carecli db rebuild-indexes" in check.out
        rebuilt = run_carecli("db", "rebuild-indexes", env=migrated_pair.env)
        assert rebuilt.code == 0, rebuilt.err
        assert all(f"built {name}" in rebuilt.out for name in names)
        assert _indexes(engine) == before
        again = run_carecli("db", "rebuild-indexes", env=migrated_pair.env)
        assert again.code == 0 and "no deferred or invalid index" in again.out
        assert run_carecli("db", "check", env=migrated_pair.env).code == 0
    finally:
        engine.dispose()


def test_db_upgrade_builds_what_a_stopped_load_left(migrated_pair):
    engine = _platform_engine(migrated_pair)
    try:
        before = _indexes(engine)
        _orphan(engine, TABLES)
        result = run_carecli("db", "upgrade", env=migrated_pair.env)
        assert result.code == 0, result.err
        assert "secondary index(es) a stopped bulk load had dropped" in result.out
        assert _indexes(engine) == before and _records(engine) == []
    finally:
        engine.dispose()


def test_the_downgrade_of_platform_0014_builds_what_is_recorded_before_dropping_the_record(migrated_pair):
    engine = _platform_engine(migrated_pair)
    try:
        before = _indexes(engine)
        _orphan(engine, TABLES)
        migrate.downgrade(engine, "platform", "platform_0013")
        # (platform_0016's downgrade puts the natural keys' indexes back over JSONB: not this test's business)
        natural_keys = {"uq_metadata_member_number", "uq_metadata_ssn_blind_index", "uq_metadata_external_id"}
        assert {name: index for name, index in _indexes(engine).items() if name not in natural_keys} == {
            name: index for name, index in before.items() if name not in natural_keys}
        with engine.connect() as connection:
            assert not deferred_indexes.available(connection)
        migrate.upgrade(engine, "platform")
        assert _records(engine) == [] and _indexes(engine) == before
    finally:
        engine.dispose()


def test_a_record_that_is_not_its_index_s_create_index_is_never_run(engine):
    """The owner runs a record as SQL: a definition written by anyone else (a hand-edited row, a restored dump)
    must not become a statement run with the owner's rights."""
    connection = engine.connect()
    [deferred] = [index for index in _defer(connection, ("members",)) if index.name == "ix_members_status"]
    _kill(engine, connection)
    tampered = deferred.definition + "; DROP TABLE call_records"
    with engine.begin() as conn:
        conn.execute(text("UPDATE deferred_indexes SET definition = :d WHERE name = :n"),
                     {"d": tampered, "n": deferred.name})
    result = deferred_indexes.rebuild(engine, SYSTEM)
    assert deferred.name in result.failed and deferred.name not in result.built
    with engine.connect() as conn:
        assert conn.execute(text("SELECT to_regclass('public.call_records') IS NOT NULL")).scalar_one()
        assert conn.execute(text("SELECT count(*) FROM deferred_indexes WHERE name = :n"),
                            {"n": deferred.name}).scalar_one() == 1  # left for a person to look at
        # Given back as recorded by the load, it builds.
        conn.execute(text("UPDATE deferred_indexes SET definition = :d WHERE name = :n"),
                     {"d": deferred.definition, "n": deferred.name})
        conn.commit()
    assert deferred.name in deferred_indexes.rebuild(engine, SYSTEM).built


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=80), st.text(max_size=40), st.sampled_from(["members", "calls", "audit_logs", "users"]))
def test_only_the_recorded_index_s_single_create_index_passes_the_check(engine, suffix, prefix, table):
    with engine.connect() as conn:
        good = 'CREATE INDEX ix_members_status ON public.members USING btree (status)'
        assert deferred_indexes.checked_definition(conn, good, "public", "ix_members_status", "members") == good
        candidate = prefix + good + suffix
        passes = (not prefix and ";" not in suffix)
        try:
            deferred_indexes.checked_definition(conn, candidate, "public", "ix_members_status", table)
        except deferred_indexes.UnsafeDefinition:
            assert not passes or table != "members"
        else:
            assert passes and table == "members"
            assert candidate.startswith("CREATE INDEX ix_members_status ON public.members USING ")
            assert ";" not in candidate
