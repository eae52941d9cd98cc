"""`carecli db grants`: least-privilege roles that make audit_logs append-only for the app."""

from __future__ import annotations

import uuid

import psycopg
import pytest

from tests.cli import run_carecli


def _conn(pair, database):
    url = pair.url(database).set(drivername="postgresql").render_as_string(hide_password=False)
    return psycopg.connect(url)


@pytest.fixture
def prefix(pg_server):
    name = f"cct{uuid.uuid4().hex[:8]}"
    yield name
    with pg_server.connect() as admin:
        for database in ("identity", "platform"):
            for kind in ("owner", "app", "auditor"):
                role = f"{name}_{database}_{kind}"
                exists = admin.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
                if exists:
                    for db in pg_server.created:
                        with psycopg.connect(pg_server.url(db).set(drivername="postgresql")
                                             .render_as_string(hide_password=False), autocommit=True) as c:
                            c.execute(f'DROP OWNED BY "{role}"')
                    admin.execute(f'DROP ROLE "{role}"')


def test_grants_print_sql(migrated_pair):
    result = run_carecli("db", "grants", env=migrated_pair.env)
    assert result.code == 0, result.err
    assert 'GRANT SELECT, INSERT ON "audit_logs" TO "carecli_platform_app";' in result.out
    assert "DELETE" not in result.out.replace("REVOKE ALL", "")


def test_applied_grants_make_the_app_role_least_privileged(migrated_pair, prefix):
    result = run_carecli("db", "grants", "--apply", "--prefix", prefix, env=migrated_pair.env)
    assert result.code == 0, result.err
    with _conn(migrated_pair, "platform") as conn:
        conn.execute(f'SET ROLE "{prefix}_platform_app"')
        conn.execute("INSERT INTO audit_logs (entity_type, entity_id, action) VALUES ('t', gen_random_uuid(), 'x')")
        member = conn.execute("INSERT INTO members (first_name, last_name) VALUES ('A', 'B') RETURNING id").fetchone()
        conn.execute("UPDATE members SET status = 'inactive' WHERE id = %s", member)
        # The search side table is written by the triggers (as its owner), never by the app itself.
        conn.execute("UPDATE members SET last_name = 'Murphy-Lane' WHERE id = %s", member)
        assert conn.execute("SELECT count(*) FROM member_name_prefixes WHERE member_id = %s", member).fetchone() == (4,)
        for statement in ("UPDATE audit_logs SET action = 'y'", "DELETE FROM members",
                          "DELETE FROM member_name_prefixes", "INSERT INTO member_name_prefixes VALUES ('x', 'x', 'x', "
                          "gen_random_uuid(), NULL)",
                          "DELETE FROM audit_logs", "DROP TABLE members",
                          # run as SQL by the owner when built: only the owner writes these
                          "INSERT INTO deferred_indexes (schema_name, name, table_name, definition, by_run, reason, "
                          "owner_pid, owner_started) VALUES ('public', 'ix_x', 'members', 'DROP TABLE members', "
                          "gen_random_uuid(), 'x', 1, now())",
                          "UPDATE deferred_indexes SET definition = 'DROP TABLE members'"):
            conn.execute("SAVEPOINT s")
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
            conn.execute("ROLLBACK TO SAVEPOINT s")
        conn.rollback()
    with _conn(migrated_pair, "platform") as conn:
        conn.execute(f'SET ROLE "{prefix}_platform_auditor"')
        conn.execute("SELECT count(*) FROM audit_logs")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT * FROM data_keys")
    # Re-applying is harmless.
    again = run_carecli("db", "grants", "--apply", "--prefix", prefix, env=migrated_pair.env)
    assert again.code == 0, again.err


def test_bad_prefix_is_a_usage_error(migrated_pair):
    result = run_carecli("db", "grants", "--prefix", "x; DROP ROLE postgres", env=migrated_pair.env)
    assert result.code == 2
    assert "--prefix may contain only letters, digits and underscores" in result.err


def test_the_app_role_seals_and_verifies_but_cannot_change_a_seal(migrated_pair, prefix):
    from datetime import datetime, timedelta

    from sqlalchemy import create_engine

    from carecli.data import audit_seal
    from carecli.data.crypto.master import LocalMasterKey, generate_master_key

    result = run_carecli("db", "grants", "--apply", "--prefix", prefix, env=migrated_pair.env)
    assert result.code == 0, result.err
    with _conn(migrated_pair, "platform") as conn:  # an hour old: sealable even with other roles' sessions hidden
        conn.execute("INSERT INTO audit_logs (entity_type, entity_id, action, created_at) VALUES "
                     "('t', gen_random_uuid(), 'x', %s)", (datetime.utcnow() - timedelta(hours=1),))
    engine = create_engine(migrated_pair.url("platform"),
                           connect_args={"options": f"-c role={prefix}_platform_app"})
    try:
        master = LocalMasterKey(generate_master_key(), "test")
        with _conn(migrated_pair, "platform") as other:  # another role's open transaction, hidden from the app
            other.execute("SELECT 1")
            report = audit_seal.seal(engine, master)
        assert report.rows == 1
        assert report.horizon is not None and report.horizon.hidden == 1
        assert report.horizon.at < datetime.utcnow() - audit_seal.HIDDEN_GRACE + timedelta(minutes=1)
        assert audit_seal.verify(engine, master).intact
    finally:
        engine.dispose()
    with _conn(migrated_pair, "platform") as conn:
        conn.execute(f'SET ROLE "{prefix}_platform_app"')
        for statement in ("UPDATE audit_seals SET row_count = 0", "DELETE FROM audit_seals",
                          "DELETE FROM audit_seal_keys", "TRUNCATE audit_seals"):
            conn.execute("SAVEPOINT s")
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
            conn.execute("ROLLBACK TO SAVEPOINT s")
        conn.rollback()
        conn.execute(f'SET ROLE "{prefix}_platform_auditor"')
        conn.execute("SELECT count(*) FROM audit_seals")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT * FROM audit_seal_keys")
