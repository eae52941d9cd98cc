"""``seed_demo_data`` on real, freshly migrated databases (the ``migrated_engines`` fixture)."""

from __future__ import annotations

import time
import uuid
from datetime import date

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine, event

from carecli.data import seeding
from carecli.data.seeding import DEFAULT_ROLES, SeedTargetNotEmpty, seed_demo_data

MEMBERS = 300
IDENTITY_TABLES = ("roles", "users")
PLATFORM_TABLES = seeding.PLATFORM_TABLES


def _url(engines, database: str) -> str:
    return engines.pair.url(database).set(drivername="postgresql").render_as_string(hide_password=False)


def _query(engines, database: str, statement: str, params: tuple = ()) -> list[tuple]:
    with psycopg.connect(_url(engines, database)) as conn:
        return conn.execute(statement, params).fetchall()


def _counts(engines) -> dict[str, int]:
    counts = {}
    for database, tables in (("identity", IDENTITY_TABLES), ("platform", PLATFORM_TABLES)):
        with psycopg.connect(_url(engines, database)) as conn:
            for table in tables:
                row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
                assert row is not None
                counts[table] = row[0]
    return counts


def _empty_all(engines) -> None:
    with psycopg.connect(_url(engines, "identity")) as conn:
        conn.execute("TRUNCATE roles, users CASCADE")
    with psycopg.connect(_url(engines, "platform")) as conn:
        conn.execute(f"TRUNCATE {', '.join(PLATFORM_TABLES)} CASCADE")


def _schema_objects(engines) -> dict[str, set[tuple]]:
    """Index and constraint definitions (and whether each is valid; an index's statistics targets set on its
    columns, platform_0011's on the folded names) of the platform tables."""
    with psycopg.connect(_url(engines, "platform")) as conn:
        indexes = conn.execute(
            "SELECT c.relname, pg_get_indexdef(i.indexrelid), i.indisvalid, "
            "ARRAY(SELECT a.attnum || ':' || a.attstattarget FROM pg_attribute a WHERE a.attrelid = i.indexrelid "
            "AND a.attnum > 0 AND a.attstattarget >= 0 ORDER BY a.attnum)::text FROM pg_index i "
            "JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_class t ON t.oid = i.indrelid "
            "WHERE t.relname = ANY (%s)", (list(PLATFORM_TABLES),)).fetchall()
        constraints = conn.execute(
            "SELECT conname, pg_get_constraintdef(oid), convalidated FROM pg_constraint "
            "WHERE conrelid = ANY (%s::regclass[])", (list(PLATFORM_TABLES),)).fetchall()
    return {"indexes": set(indexes), "constraints": set(constraints)}


def test_counts_match_the_databases_and_the_spec(migrated_engines):
    calls: list[tuple[str, int, int]] = []
    summary = seed_demo_data(migrated_engines.identity, migrated_engines.platform, members=MEMBERS, seed=1,
                             progress=lambda table, done, total: calls.append((table, done, total)))

    assert summary.counts == _counts(migrated_engines)
    assert summary.seconds > 0
    specialists = max(8, MEMBERS // 2000)
    assert summary.counts["roles"] == len(DEFAULT_ROLES)
    assert summary.counts["specialists"] == specialists
    # Two supervisors at this size, and one user for every other role (admin, auditor, ...).
    assert summary.counts["users"] == specialists + 2 + len(DEFAULT_ROLES) - 2
    assert summary.counts["insurance_plans"] == 24
    assert summary.counts["members"] == MEMBERS
    assert 2 * specialists <= summary.counts["specialist_insurance_plans"] <= 4 * specialists
    assert 0.9 * MEMBERS <= summary.counts["member_insurance_plans"] <= 1.3 * MEMBERS
    assert 0.9 * MEMBERS <= summary.counts["call_records"] <= 1.5 * MEMBERS
    assert summary.counts["risk_flags"] >= 1
    # Every table reports its end through progress.
    finished = {table for table, done, total in calls if done == total}
    assert set(summary.counts) <= finished
    assert all(0 <= done <= total for _, done, total in calls)


def _random_part(column: str) -> str:
    """SQL for a UUIDv7's text after its timestamp and version (the part a seed reproduces)."""
    return f"substr({column}::text, 16)"


def test_same_seed_gives_the_same_data(migrated_engines):
    # Ids are UUIDv7 stamped with the run's millisecond: the same seed gives the same random parts.
    rid, member, specialist, user = (_random_part(c) for c in ("id", "member_id", "specialist_id", "user_id"))

    def snapshot() -> dict[str, list[tuple]]:
        return {
            "members": _query(migrated_engines, "platform",
                              f"SELECT {rid}, first_name, last_name, email, city FROM members ORDER BY id"),
            "specialists": _query(migrated_engines, "platform",
                                  f"SELECT {rid}, {user} FROM specialists ORDER BY id"),
            "calls": _query(migrated_engines, "platform",
                            f"SELECT {rid}, {member}, {specialist}, call_type FROM call_records ORDER BY id"),
            "users": _query(migrated_engines, "identity",
                            f"SELECT {rid}, email, external_user_id FROM users ORDER BY id"),
        }

    seed_demo_data(migrated_engines.identity, migrated_engines.platform, members=MEMBERS, seed=42)
    first = snapshot()
    _empty_all(migrated_engines)
    seed_demo_data(migrated_engines.identity, migrated_engines.platform, members=MEMBERS, seed=42)
    assert snapshot() == first
    _empty_all(migrated_engines)
    seed_demo_data(migrated_engines.identity, migrated_engines.platform, members=MEMBERS, seed=43)
    assert snapshot()["members"] != first["members"]


def test_seeded_rows_carry_time_ordered_ids(migrated_engines):
    before = time.time_ns() // 1_000_000
    seed_demo_data(migrated_engines.identity, migrated_engines.platform, members=MEMBERS, seed=15)
    after = time.time_ns() // 1_000_000
    for database, table in [("identity", "users")] + [("platform", t) for t in PLATFORM_TABLES]:
        ids = [row[0] for row in _query(migrated_engines, database, f"SELECT id FROM {table}")]
        assert ids, table
        assert {value.version for value in ids} == {7}, table
        assert {value.variant for value in ids} == {uuid.RFC_4122}, table
        assert all(before <= value.int >> 80 <= after for value in ids), table


def test_specialists_point_at_specialist_users(migrated_engines):
    seed_demo_data(migrated_engines.identity, migrated_engines.platform, members=MEMBERS, seed=2)
    specialist_users = {row[0] for row in _query(migrated_engines, "platform", "SELECT user_id FROM specialists")}
    users_by_role = _query(migrated_engines, "identity",
                           "SELECT u.id, r.name FROM users u JOIN roles r ON r.id = u.role_id")
    assert specialist_users == {user_id for user_id, role in users_by_role if role == "specialist"}
    roles = [role for _, role in users_by_role]
    assert roles.count("supervisor") >= 2
    assert all(roles.count(role) == 1 for role in DEFAULT_ROLES if role not in ("supervisor", "specialist"))
    assert "admin" in roles
    emails = [row[0] for row in _query(migrated_engines, "identity", "SELECT email FROM users")]
    assert all(email.endswith("@example.org") for email in emails)


def test_enrollments_have_exactly_one_primary_and_consistent_status(migrated_engines):
    seed_demo_data(migrated_engines.identity, migrated_engines.platform, members=MEMBERS, seed=3)
    bad_primary = _query(migrated_engines, "platform",
                         "SELECT member_id FROM member_insurance_plans GROUP BY member_id "
                         "HAVING count(*) FILTER (WHERE is_primary) <> 1")
    assert bad_primary == []
    inconsistent = _query(migrated_engines, "platform",
                          "SELECT count(*) FROM member_insurance_plans "
                          "WHERE (status = 'terminated') <> (termination_date IS NOT NULL)")
    assert inconsistent == [(0,)]
    per_member = dict(_query(migrated_engines, "platform",
                             "SELECT n, count(*) FROM (SELECT m.id, count(e.id) AS n FROM members m "
                             "LEFT JOIN member_insurance_plans e ON e.member_id = m.id GROUP BY m.id) x GROUP BY n"))
    assert set(per_member) <= {0, 1, 2}
    assert per_member[1] > per_member.get(2, 0) > 0


def test_calls_and_flags_are_consistent_and_the_worklist_has_content(migrated_engines):
    seed_demo_data(migrated_engines.identity, migrated_engines.platform, members=MEMBERS, seed=4)
    rows = dict(_query(migrated_engines, "platform", """
        SELECT 'scheduled_with_times', count(*) FROM call_records
            WHERE call_status = 'scheduled' AND (started_at IS NOT NULL OR ended_at IS NOT NULL)
        UNION ALL SELECT 'completed_without_times', count(*) FROM call_records
            WHERE call_status = 'completed' AND (ended_at IS NULL OR duration_seconds IS NULL)
        UNION ALL SELECT 'follow_up_without_date', count(*) FROM call_records
            WHERE follow_up_required <> (follow_up_date IS NOT NULL)
        UNION ALL SELECT 'flag_mismatch', count(*) FROM risk_flags f JOIN call_records c ON c.id = f.call_record_id
            WHERE c.call_status <> 'completed' OR c.member_id <> f.member_id OR c.specialist_id <> f.specialist_id
        UNION ALL SELECT 'overdue', count(*) FROM call_records
            WHERE call_status = 'scheduled' AND scheduled_at < (now() AT TIME ZONE 'UTC')
        UNION ALL SELECT 'upcoming', count(*) FROM call_records
            WHERE call_status = 'scheduled' AND scheduled_at > (now() AT TIME ZONE 'UTC')
        UNION ALL SELECT 'bad_phone', count(*) FROM members WHERE phone !~ '^\\+1555[0-9]{7}$'
        UNION ALL SELECT 'bad_email', count(*) FROM members WHERE email NOT LIKE '%%@example.com'
        UNION ALL SELECT 'bad_zip', count(*) FROM members WHERE zip_code !~ '^[0-9]{5}(-[0-9]{4})?$'
        UNION ALL SELECT 'encrypted', count(*) FROM members WHERE encrypted_ssn IS NOT NULL OR encrypted_dob IS NOT NULL
    """))
    assert rows["overdue"] > 0 and rows["upcoming"] > 0
    assert {key: value for key, value in rows.items() if key not in ("overdue", "upcoming")} == {
        "scheduled_with_times": 0, "completed_without_times": 0, "follow_up_without_date": 0,
        "flag_mismatch": 0, "bad_phone": 0, "bad_email": 0, "bad_zip": 0, "encrypted": 0,
    }


def test_second_run_refuses_and_adds_nothing(migrated_engines):
    seed_demo_data(migrated_engines.identity, migrated_engines.platform, members=MEMBERS, seed=5)
    before = _counts(migrated_engines)
    with pytest.raises(SeedTargetNotEmpty) as raised:
        seed_demo_data(migrated_engines.identity, migrated_engines.platform, members=MEMBERS, seed=6)
    assert raised.value.table == "users"
    assert f"identity.users already has {before['users']} rows" in str(raised.value)
    assert "start over" in str(raised.value)
    assert _counts(migrated_engines) == before


def test_platform_with_data_refuses_and_identity_stays_empty(migrated_engines):
    seed_demo_data(migrated_engines.identity, migrated_engines.platform, members=MEMBERS, seed=7)
    with psycopg.connect(_url(migrated_engines, "identity")) as conn:
        conn.execute("TRUNCATE roles, users CASCADE")
    with pytest.raises(SeedTargetNotEmpty, match=f"platform.members already has {MEMBERS} rows"):
        seed_demo_data(migrated_engines.identity, migrated_engines.platform, members=10, seed=8)
    # The identity part ran first and was rolled back, not committed.
    counts = _counts(migrated_engines)
    assert counts["roles"] == counts["users"] == 0
    assert counts["members"] == MEMBERS


def _fail_after_first_chunk(generator):
    def failing(*args, **kwargs):
        chunks = generator(*args, **kwargs)
        yield next(chunks)
        raise RuntimeError("simulated crash in the middle of the platform load")
    return failing


@pytest.mark.parametrize("deferred_indexes", [False, True], ids=["indexes-kept", "indexes-deferred"])
def test_failure_mid_platform_load_leaves_both_databases_empty(migrated_engines, monkeypatch, deferred_indexes):
    schema_before = _schema_objects(migrated_engines)
    monkeypatch.setattr(seeding, "CHUNK_ROWS", 50)
    monkeypatch.setattr(seeding, "_call_chunks", _fail_after_first_chunk(seeding._call_chunks))
    if deferred_indexes:
        monkeypatch.setattr(seeding, "DEFER_INDEXES_MIN_MEMBERS", 0)
    written: list[str] = []
    with pytest.raises(RuntimeError, match="simulated crash"):
        seed_demo_data(migrated_engines.identity, migrated_engines.platform, members=MEMBERS, seed=9,
                       progress=lambda table, done, total: written.append(table))
    assert "members" in written and "call_records" in written  # it really failed mid-way
    assert set(_counts(migrated_engines).values()) == {0}
    # Dropped indexes and foreign keys came back with the rollback.
    assert _schema_objects(migrated_engines) == schema_before


def test_deferred_indexes_and_foreign_keys_are_rebuilt_identically(migrated_engines, monkeypatch):
    before = _schema_objects(migrated_engines)
    monkeypatch.setattr(seeding, "DEFER_INDEXES_MIN_MEMBERS", 0)
    reported: list[tuple[str, int, int]] = []
    summary = seed_demo_data(migrated_engines.identity, migrated_engines.platform, members=MEMBERS, seed=10,
                             progress=lambda table, done, total: reported.append((table, done, total)))
    assert _schema_objects(migrated_engines) == before
    assert all(row[2] for row in before["indexes"] | before["constraints"])
    assert any(row[0] == "ix_members_name_folded" and row[3] == "{1:1000,2:1000}" for row in before["indexes"])
    assert summary.counts == _counts(migrated_engines)
    assert ("indexes", reported[-1][1], reported[-1][1]) == reported[-1]


def test_existing_roles_are_reused(migrated_engines):
    with psycopg.connect(_url(migrated_engines, "identity")) as conn:
        [(admin_id,)] = conn.execute("INSERT INTO roles (name, permissions) VALUES ('admin', '[\"everything\"]') "
                                     "RETURNING id").fetchall()
    summary = seed_demo_data(migrated_engines.identity, migrated_engines.platform, members=20, seed=11)
    assert summary.counts["roles"] == len(DEFAULT_ROLES) - 1
    admins = _query(migrated_engines, "identity",
                    "SELECT u.role_id, r.permissions FROM users u JOIN roles r ON r.id = u.role_id "
                    "WHERE r.name = 'admin'")
    assert admins == [(admin_id, ["everything"])]


def test_the_app_statement_timeout_does_not_cut_the_load_short(migrated_engines):
    # A 5 ms statement timeout on every connection, like carecli's own; loading a few thousand members
    # takes longer than that per COPY. Set once each connection is made: SQLAlchemy's own first look at
    # the server's types (before any "connect" listener) is not what is tested, and may itself take
    # longer than 5 ms on a busy machine.
    def engine(database):
        made = create_engine(migrated_engines.pair.url(database))

        @event.listens_for(made, "connect")
        def _timeout(dbapi_connection, _record):
            with dbapi_connection.cursor() as cursor:
                cursor.execute("SET statement_timeout = 5")
            dbapi_connection.commit()
        return made

    identity, platform = engine("identity"), engine("platform")
    try:
        summary = seed_demo_data(identity, platform, members=5000, seed=12)
    finally:
        identity.dispose()
        platform.dispose()
    assert summary.counts["members"] == 5000


@pytest.mark.parametrize("commit_reached_server", [False, True], ids=["commit-lost", "reply-lost"])
def test_identity_commit_failure_after_platform_commit_is_repaired(migrated_engines, monkeypatch,
                                                                   commit_reached_server):
    identity_db = migrated_engines.pair.identity
    real_commit = psycopg.Connection.commit
    failed: list[bool] = []

    def flaky_commit(self):
        if self.info.dbname == identity_db and not failed:
            failed.append(True)
            if commit_reached_server:
                real_commit(self)
            self.close()
            raise psycopg.OperationalError("simulated connection loss during COMMIT")
        return real_commit(self)

    monkeypatch.setattr(psycopg.Connection, "commit", flaky_commit)
    summary = seed_demo_data(migrated_engines.identity, migrated_engines.platform, members=50, seed=13)
    assert failed
    counts = _counts(migrated_engines)
    assert counts == summary.counts
    specialist_users = {row[0] for row in _query(migrated_engines, "platform", "SELECT user_id FROM specialists")}
    user_ids = {row[0] for row in _query(migrated_engines, "identity", "SELECT id FROM users")}
    assert specialist_users <= user_ids


@pytest.mark.parametrize("members", [-1, True, 2.5])
def test_rejects_a_bad_member_count(migrated_engines, members):
    with pytest.raises(ValueError):
        seed_demo_data(migrated_engines.identity, migrated_engines.platform, members=members)


def test_zero_members_still_creates_staff_and_plans(migrated_engines):
    summary = seed_demo_data(migrated_engines.identity, migrated_engines.platform, members=0, seed=14)
    assert summary.counts["members"] == summary.counts["call_records"] == summary.counts["risk_flags"] == 0
    assert summary.counts["specialists"] == 8 and summary.counts["insurance_plans"] == 24
    assert summary.counts == _counts(migrated_engines)


def test_with_a_cipher_every_member_gets_encrypted_valid_phi(migrated_engines):
    from sqlalchemy import text

    from carecli.data.crypto.keystore import open_cipher
    from carecli.data.crypto.master import LocalMasterKey, generate_master_key
    from carecli.data.repositories.members import check_dob

    cipher = open_cipher(migrated_engines.platform, LocalMasterKey(generate_master_key(), "test"))
    seed_demo_data(migrated_engines.identity, migrated_engines.platform, members=200, seed=5, cipher=cipher)
    with migrated_engines.platform.connect() as conn:
        rows = conn.execute(text("SELECT id, encrypted_ssn, encrypted_dob FROM members")).all()
    assert len(rows) == 200
    for row in rows:
        ssn = cipher.decrypt_ssn(bytes(row.encrypted_ssn), row.id).reveal()
        dob = cipher.decrypt_dob(bytes(row.encrypted_dob), row.id)
        check_dob(dob)
        assert ssn[:3] not in ("000", "666") and not ssn.startswith("9")
        assert ssn[3:5] != "00" and ssn[5:] != "0000"
        # Ciphertext is never the plaintext digits.
        assert ssn.encode() not in bytes(row.encrypted_ssn)


def test_the_demo_names_show_what_search_folds_and_splits():
    """Accented and two-part names in the lists (the demo's search finds José by "jose", De la Cruz by "cruz"),
    while every e-mail address stays ASCII."""
    names = seeding.FIRST_NAMES + seeding.LAST_NAMES
    assert {"José", "Muñoz", "Peña", "De la Cruz", "Murphy-Lane"} <= set(names)
    assert seeding._slug("José") == "jose" and seeding._slug("Peña") == "pena"
    assert seeding._slug("De la Cruz") == "delacruz" and seeding._slug("O'Brien") == "obrien"
    assert all(seeding._slug(name).isascii() for name in names)


@given(st.integers(min_value=0, max_value=2**32), st.dates(min_value=date(1900, 1, 1), max_value=date(2200, 1, 1)))
@settings(max_examples=60, deadline=None)
def test_the_seeds_synthetic_ssns_and_birth_dates_pass_the_imports_own_rules(seed: int, today: date) -> None:
    """What the seed encrypts is what `carecli import` would accept: never an SSN of a never-issued range, never a
    birth date in the future or more than 95 years back."""
    import random

    from carecli.data.bulk import fields

    rng = random.Random(seed)
    parse_dob = fields.dob_parser(lambda: today)
    for _ in range(200):
        ssn, dob = seeding.synthetic_phi(rng, today)
        fields.parse_ssn(ssn)
        born = parse_dob(dob)
        assert 0 <= (today - date.fromisoformat(dob)).days <= 95 * 365, born
