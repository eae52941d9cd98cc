"""Every revision upgrades and downgrades cleanly, through the real CLI too."""

from __future__ import annotations

import psycopg
import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

from carecli.config import load_settings
from carecli.data import audit_seal, migrate
from carecli.data.crypto.master import LocalMasterKey, generate_master_key
from carecli.data.databases import create_database_engine
from tests.cli import run_carecli
from tests.seed_schema import snapshot


def _tables(pair, database):
    url = pair.url(database).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(url) as conn:
        return {row[0] for row in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}


def _snapshots(pair):
    snaps = {}
    for database in ("identity", "platform"):
        url = pair.url(database).set(drivername="postgresql").render_as_string(hide_password=False)
        with psycopg.connect(url) as conn:
            snaps[database] = snapshot(conn)
    return snaps


def test_cli_upgrade_downgrade_base_upgrade_round_trip(empty_pair):
    result = run_carecli("db", "upgrade", env=empty_pair.env)
    assert result.code == 0, result.err
    assert f"identity: empty -> {migrate.head_revision('identity')}" in result.out
    assert f"platform: empty -> {migrate.head_revision('platform')}" in result.out
    first = _snapshots(empty_pair)

    result = run_carecli("db", "downgrade", "base", env=empty_pair.env)
    assert result.code == 0, result.err
    # Nothing of carecli's is left, not even Alembic's version table.
    assert _tables(empty_pair, "identity") == set()
    assert _tables(empty_pair, "platform") == set()

    result = run_carecli("db", "upgrade", env=empty_pair.env)
    assert result.code == 0, result.err
    assert _snapshots(empty_pair) == first


def test_upgrade_is_idempotent_and_check_reports_head(migrated_pair):
    result = run_carecli("db", "upgrade", env=migrated_pair.env)
    assert result.code == 0, result.err
    head = migrate.head_revision("identity")
    assert f"identity: {head} -> {head}" in result.out
    result = run_carecli("db", "check", env=migrated_pair.env)
    assert result.code == 0, result.err
    assert "identity: up to date" in result.out and "platform: up to date" in result.out


def test_check_fails_when_a_database_is_behind(empty_pair):
    result = run_carecli("db", "upgrade", "--db", "identity", env=empty_pair.env)
    assert result.code == 0, result.err
    assert "platform" not in result.out
    result = run_carecli("db", "check", env=empty_pair.env)
    assert result.code == 1
    assert "identity: up to date" in result.out
    head = migrate.head_revision("platform")
    assert f"platform: at empty, head is {head}; run `carecli db upgrade`" in result.out
    current = run_carecli("db", "current", env=empty_pair.env)
    assert current.code == 0, current.err
    assert f"identity  {migrate.head_revision('identity')} (head)" in current.out
    assert f"platform  empty (head is {head})" in current.out


def test_unknown_revision_is_a_usage_error(migrated_pair):
    result = run_carecli("db", "downgrade", "nope", "--db", "platform", env=migrated_pair.env)
    assert result.code == 2
    assert "cannot downgrade the platform database to 'nope'" in result.err
    assert "Traceback" not in result.err
    assert _tables(migrated_pair, "platform") != set()


@pytest.mark.parametrize("database", ["identity", "platform"])
def test_each_revision_steps_up_and_down(empty_pair, database):
    """Walk the history one revision at a time, up to head and back down to base."""
    engine = create_database_engine(empty_pair.url(database), load_settings({}))
    script = ScriptDirectory.from_config(migrate.alembic_config(database))
    revisions = [rev.revision for rev in reversed(list(script.walk_revisions()))]
    try:
        for revision in revisions:
            migrate.upgrade(engine, database, revision)
            with engine.connect() as conn:
                assert migrate.current_revision(conn, database) == revision
        for expected in reversed([None, *revisions[:-1]]):
            migrate.downgrade(engine, database, "-1")
            with engine.connect() as conn:
                assert migrate.current_revision(conn, database) == expected
    finally:
        engine.dispose()
    assert _tables(empty_pair, database) <= {migrate.VERSION_TABLES[database]}


def test_concurrent_upgrades_serialise(empty_pair):
    """Several processes migrating the same fresh databases at once all succeed, once."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, **empty_pair.env)
    procs = [subprocess.Popen([sys.executable, "-m", "carecli", "db", "upgrade"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outputs = [proc.communicate(timeout=120) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0, 0], outputs
    created = sum(f"identity: empty -> {migrate.head_revision('identity')}" in out for out, _ in outputs)
    assert created == 1, outputs


def test_the_heads_carecli_checks_against_are_the_migration_scripts_heads():
    """migrate.HEADS spares every start an Alembic import and a read of the scripts; a new migration must move it."""
    for database in migrate.DATABASES:
        assert migrate.head_revision(database) == migrate.script_head_revision(database), database


def test_starting_on_a_migrated_database_does_not_import_alembic(migrated_pair):
    """What every command and the app do at start (open the databases, check they are at head) reads one row per
    database: no Alembic import, no reading of the migration scripts."""
    import os
    import subprocess
    import sys

    code = ("import sys\n"
            "import carecli.screens.app, carecli.cli.main\n"
            "from carecli.config import load_settings\n"
            "from carecli.data.databases import open_databases, require_head\n"
            "databases = open_databases(load_settings())\n"
            "require_head(databases)\n"
            "databases.dispose()\n"
            "assert not [m for m in sys.modules if m == 'alembic' or m.startswith('alembic.')], 'alembic imported'\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                            env={**os.environ, **migrated_pair.env})
    assert result.returncode == 0, result.stderr


def _member_indexes(pair) -> dict[str, str]:
    url = pair.url("platform").set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(url) as conn:
        return {name: definition for name, definition in conn.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' AND tablename = 'members'")}


def test_the_index_diet_drops_unused_member_indexes_and_its_downgrade_recreates_them_exactly(empty_pair):
    engine = create_database_engine(empty_pair.url("platform"), load_settings({}))
    try:
        migrate.upgrade(engine, "platform", "platform_0012")
        before = _member_indexes(empty_pair)
        migrate.upgrade(engine, "platform", "platform_0013")
        after = _member_indexes(empty_pair)
        migrate.downgrade(engine, "platform", "platform_0012")
        again = _member_indexes(empty_pair)
    finally:
        engine.dispose()
    dropped = {"ix_members_name", "ix_members_phone", "ix_members_status_name"}
    assert set(before) - set(after) == dropped
    assert set(after) - set(before) == {"ix_members_status"}
    assert "(status) WHERE (deleted_at IS NULL)" in after["ix_members_status"]
    assert "members_pkey" in after  # the seed's own index stays
    assert again == before


def _metadata_indexes(pair) -> dict[str, str]:
    url = pair.url("platform").set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(url) as conn:
        return {name: definition for name, definition in conn.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' AND tablename = 'metadata'")}


_NUMBERS = ['"A-1"', '"é\\"\\\\\\n"', '"  spaced "', '"123"']


def test_platform_0016_indexes_the_natural_keys_as_text_and_its_downgrade_puts_back_the_jsonb_ones(empty_pair):
    """Values stored before the upgrade are still unique and found by their text after it; the downgrade
    re-creates platform_0006's indexes exactly."""
    from sqlalchemy import text

    from carecli.data.bulk.kinds import metadata_owners, owners_statement

    engine = create_database_engine(empty_pair.url("platform"), load_settings({}))
    natural = {"uq_metadata_member_number", "uq_metadata_ssn_blind_index", "uq_metadata_external_id"}
    try:
        migrate.upgrade(engine, "platform", "platform_0015")
        before = _metadata_indexes(empty_pair)
        with engine.begin() as connection:
            for number in _NUMBERS:
                connection.execute(text(
                    "INSERT INTO metadata (entity_type, entity_id, metadata_key, metadata_value) "
                    "VALUES ('member', gen_random_uuid(), 'external_member_number', CAST(:v AS jsonb))"), {"v": number})
        migrate.upgrade(engine, "platform", "platform_0016")
        after = _metadata_indexes(empty_pair)
        with engine.begin() as connection:
            found = metadata_owners(connection, "member", "external_member_number",
                                    ["A-1", 'é"\\\n', "  spaced ", "123", "a-1", "missing"])
            assert sorted(found) == sorted(["A-1", 'é"\\\n', "  spaced ", "123"])
            connection.execute(text("SET LOCAL enable_seqscan = off"))
            plan = "\n".join(connection.execute(text("EXPLAIN " + str(owners_statement(
                "member", "external_member_number")).replace(":values", "ARRAY['A-1']"))).scalars())
            assert "uq_metadata_member_number" in plan
        with pytest.raises(Exception, match="uq_metadata_member_number"), engine.begin() as connection:
            connection.execute(text(
                "INSERT INTO metadata (entity_type, entity_id, metadata_key, metadata_value) "
                "VALUES ('member', gen_random_uuid(), 'external_member_number', to_jsonb(CAST('A-1' AS text)))"))
        migrate.downgrade(engine, "platform", "platform_0015")
        again = _metadata_indexes(empty_pair)
    finally:
        engine.dispose()
    assert set(after) == set(before)
    for name in natural:
        assert "(metadata_value #>> '{}'::text[])) COLLATE \"C\"" in after[name], after[name]
        assert "metadata_value)" in before[name]
    assert {name: after[name] for name in set(after) - natural} == {
        name: before[name] for name in set(before) - natural}
    assert again == before


def test_platform_0017_turns_jit_off_in_the_name_word_triggers_and_its_downgrade_turns_it_back(empty_pair):
    """A bulk COPY into members spent more compiling the trigger's query than running it."""
    url = empty_pair.url("platform").set(drivername="postgresql").render_as_string(hide_password=False)

    def settings() -> dict[str, list[str]]:
        with psycopg.connect(url) as conn:
            return {name: sorted(config or []) for name, config in conn.execute(
                "SELECT proname, proconfig FROM pg_proc WHERE proname LIKE 'carecli_member_prefixes_%'")}

    engine = create_database_engine(empty_pair.url("platform"), load_settings({}))
    try:
        migrate.upgrade(engine, "platform", "platform_0016")
        before = settings()
        migrate.upgrade(engine, "platform", "platform_0017")
        after = settings()
        migrate.downgrade(engine, "platform", "platform_0016")
        again = settings()
    finally:
        engine.dispose()
    assert all("jit=off" not in config for config in before.values())
    assert {name for name, config in after.items() if "jit=off" in config} == {
        "carecli_member_prefixes_insert", "carecli_member_prefixes_update", "carecli_member_prefixes_delete"}
    assert all("search_path=pg_catalog, pg_temp" in config for config in after.values())
    assert again == before


def test_platform_0018_stops_analyzing_members_ciphertext_and_contact_details(empty_pair):
    """ANALYZE of members sorted 300,000 sampled values of nine columns no query filters on, and kept samples of
    contact details in pg_statistic; the upgrade clears those it kept, the downgrade brings them back."""
    url = empty_pair.url("platform").set(drivername="postgresql").render_as_string(hide_password=False)
    skipped = {"encrypted_ssn", "encrypted_dob", "email", "phone", "address_line1", "address_line2", "city", "state",
               "zip_code"}

    def analysed() -> set[str]:
        with psycopg.connect(url, autocommit=True) as conn:
            return {name for (name,) in conn.execute("SELECT attname FROM pg_stats WHERE tablename = 'members'")}

    def targets() -> dict[str, int | None]:
        with psycopg.connect(url) as conn:
            return {name: target for name, target in conn.execute(
                "SELECT attname, attstattarget FROM pg_attribute WHERE attrelid = 'members'::regclass AND attnum > 0 "
                "AND NOT attisdropped")}

    engine = create_database_engine(empty_pair.url("platform"), load_settings({}))
    try:
        migrate.upgrade(engine, "platform", "platform_0017")
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("INSERT INTO members (first_name, last_name, email, phone, address_line1, address_line2, "
                         "city, state, zip_code, encrypted_ssn, encrypted_dob) SELECT 'Ann', 'Lee', 'a' || g || "
                         "'@example.org', '+1555010' || lpad(g::text, 4, '0'), g || ' Main St', 'Apt 1', 'Salem', "
                         "'OR', '97301', '\\x01'::bytea, '\\x02'::bytea FROM generate_series(1, 50) g")
            conn.execute("ANALYZE members")
        before = analysed()
        migrate.upgrade(engine, "platform", "platform_0018")
        after = analysed()
        upgraded = targets()
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("ANALYZE members")
        analysed_after = analysed()
        migrate.downgrade(engine, "platform", "platform_0017")
        again = analysed()
        downgraded = targets()
    finally:
        engine.dispose()
    assert skipped <= before
    # (the test server's role is a superuser: the upgrade removes what ANALYZE had kept of them)
    assert not after & skipped and {"id", "first_name", "status"} <= after
    assert {name for name, target in upgraded.items() if target == 0} == skipped
    assert not analysed_after & skipped and {"id", "first_name", "last_name", "status"} <= analysed_after
    assert again == before
    assert all(target in (-1, None) for target in downgraded.values())


def test_platform_0019_stores_seal_manifests_uncompressed_and_seals_verify_across_it(empty_pair):
    """Compressing a 4 MB manifest was most of a seal's insert; a manifest compressed before the upgrade still
    verifies after it, and one stored after it still verifies after the downgrade."""
    url = empty_pair.url("platform").set(drivername="postgresql").render_as_string(hide_password=False)
    master = LocalMasterKey(generate_master_key(), "test-0019")

    def storage() -> str:
        with psycopg.connect(url) as conn:
            row = conn.execute("SELECT attstorage FROM pg_attribute WHERE attrelid = 'audit_seals'::regclass "
                               "AND attname = 'manifest'").fetchone()
            assert row is not None
            return row[0]

    def add_rows_and_seal(engine: Engine, count: int) -> None:
        # (dated after the last seal's end, within a millisecond, and before the clock: sealable now)
        with psycopg.connect(url, autocommit=True) as conn:
            # (ids that share their leading bytes, as time-ordered ones do: a manifest pglz can compress)
            conn.execute("INSERT INTO audit_logs (id, entity_type, entity_id, action, new_values, created_at) "
                         "SELECT ('00000000-0000-7000-8000-' || lpad(to_hex(g + (SELECT count(*) FROM audit_logs)), "
                         "12, '0'))::uuid, 'member', gen_random_uuid(), 'create', jsonb_build_object('n', g), "
                         "coalesce((SELECT max(range_end) FROM audit_seals), now() - interval '1 hour') "
                         "+ (g %% 1000) * interval '1 microsecond' FROM generate_series(1, %s) g", [count])
        assert audit_seal.seal(engine, master).rows == count

    def compressed() -> list[bool]:
        with psycopg.connect(url) as conn:
            return [row[0] < row[1] for row in conn.execute(
                "SELECT pg_column_size(manifest), octet_length(manifest) FROM audit_seals ORDER BY seal_no")]

    engine = create_database_engine(empty_pair.url("platform"), load_settings({}))
    try:
        migrate.upgrade(engine, "platform", "platform_0018")
        before = storage()
        add_rows_and_seal(engine, 20_000)
        migrate.upgrade(engine, "platform", "platform_0019")
        after = storage()
        add_rows_and_seal(engine, 20_000)
        kinds = compressed()
        assert audit_seal.verify(engine, master).intact
        migrate.downgrade(engine, "platform", "platform_0018")
        again = storage()
        assert audit_seal.verify(engine, master).intact
    finally:
        engine.dispose()
    assert (before, after, again) == ("x", "e", "x")
    assert kinds == [True, False]  # the manifest from before was compressed, the one after is not
