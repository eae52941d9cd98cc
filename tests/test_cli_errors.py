"""Misconfiguration and unreachable servers end in a clear line and exit code 2, never a traceback."""

from __future__ import annotations

import pytest

from tests.cli import run_carecli

UNREACHABLE = {
    "CARECLI_IDENTITY_URL": "postgresql+psycopg://carecli:s3cret-pw@127.0.0.1:1/identity",
    "CARECLI_PLATFORM_URL": "postgresql+psycopg://carecli:s3cret-pw@127.0.0.1:1/platform",
}


def assert_clean_failure(result, code, *phrases):
    assert result.code == code, (result.out, result.err)
    assert "Traceback" not in result.err
    for phrase in phrases:
        assert phrase in result.err, result.err


@pytest.mark.parametrize("command", [["db", "current"], ["db", "upgrade"], ["db", "check"],
                                     ["seed", "--members", "10"]])
def test_unreachable_server(command):
    result = run_carecli(*command, env={**UNREACHABLE, "CARECLI_DB_CONNECT_TIMEOUT": "3"})
    assert_clean_failure(result, 2, "carecli: error: cannot connect to the", "127.0.0.1:1",
                         "check that the server is running")
    assert "s3cret-pw" not in result.err + result.out


def test_bad_url():
    result = run_carecli("db", "current", env={"CARECLI_IDENTITY_URL": "mysql://root@localhost/x",
                                               "CARECLI_PLATFORM_URL": "postgresql://u@h/p"})
    assert_clean_failure(result, 2, "CARECLI_IDENTITY_URL uses 'mysql', but carecli needs PostgreSQL")


def test_garbage_url():
    result = run_carecli("db", "check", env={"CARECLI_IDENTITY_URL": "definitely not a url",
                                             "CARECLI_PLATFORM_URL": "postgresql://u@h/p"})
    assert_clean_failure(result, 2, "CARECLI_IDENTITY_URL is not a database URL")


def test_missing_database_on_a_live_server(pg_server):
    env = pg_server.env_for("carecli_no_such_db_i", "carecli_no_such_db_p")
    result = run_carecli("db", "current", env=env)
    assert_clean_failure(result, 2, 'database "carecli_no_such_db_i" does not exist')


def test_bad_config_file(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text("[database]\npool_size = -1\n")
    result = run_carecli("db", "current", env={"CARECLI_CONFIG": str(config)})
    assert_clean_failure(result, 2, "pool_size must be zero or a positive whole number")


def test_usage_error_exit_code():
    result = run_carecli("db", "downgrade")
    assert result.code == 2
    assert "Missing argument 'REVISION'" in result.err


def test_seed_refuses_a_database_that_is_not_migrated(empty_pair):
    result = run_carecli("seed", "--members", "10", env=empty_pair.env)
    assert_clean_failure(result, 2, "the identity database is not migrated", "run `carecli db upgrade`")


def test_config_show_masks_passwords():
    result = run_carecli("config", "show", env=UNREACHABLE)
    assert result.code == 0, result.err
    assert "s3cret-pw" not in result.out
    assert "postgresql+psycopg://carecli:***@127.0.0.1:1/identity" in result.out
    assert "(CARECLI_IDENTITY_URL)" in result.out


def test_seed_member_count_must_be_positive():
    result = run_carecli("seed", "--members", "0")
    assert result.code == 2
    assert "--members" in result.err


def test_db_psql_opens_the_database(migrated_pair):
    """psql on a database, with nothing on stdin, connects and leaves cleanly."""
    import shutil

    if shutil.which("psql") is None:
        pytest.skip("no psql client on this machine")
    result = run_carecli("db", "psql", "--db", "identity", env=migrated_pair.env, process=True)
    assert result.code == 0, result.err
