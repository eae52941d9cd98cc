"""Each database gets a pooled engine with carecli's session settings."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.pool import NullPool, QueuePool

from carecli.config import load_settings
from carecli.data.databases import create_database_engine, describe_dbapi_error


def _show(engine, setting):
    with engine.connect() as conn:
        return conn.execute(text(f"SHOW {setting}")).scalar_one()


def test_session_settings(migrated_pair):
    engine = create_database_engine(migrated_pair.url("platform"), load_settings({}))
    try:
        assert _show(engine, "application_name") == "carecli"
        assert _show(engine, "statement_timeout") == "30s"
        assert _show(engine, "TimeZone") == "UTC"
        assert isinstance(engine.pool, QueuePool)
        assert engine.pool.size() == 5
        assert engine.pool._pre_ping
    finally:
        engine.dispose()


def test_settings_shape_the_pool_and_timeout(migrated_pair):
    settings = load_settings({"CARECLI_DB_POOL_SIZE": "2", "CARECLI_DB_STATEMENT_TIMEOUT_MS": "150"})
    engine = create_database_engine(migrated_pair.url("platform"), settings)
    try:
        assert isinstance(engine.pool, QueuePool)
        assert engine.pool.size() == 2
        with pytest.raises(OperationalError) as caught:
            with engine.connect() as conn:
                conn.execute(text("SELECT pg_sleep(2)"))
        assert describe_dbapi_error(caught.value) == "canceling statement due to statement timeout"
    finally:
        engine.dispose()


def test_pool_size_zero_keeps_no_idle_connection(migrated_pair):
    # The SSH host's app processes: fifty pools of idle connections would fill max_connections.
    engine = create_database_engine(migrated_pair.url("platform"), load_settings({"CARECLI_DB_POOL_SIZE": "0"}))
    try:
        assert isinstance(engine.pool, NullPool)
        with engine.connect() as conn:
            backend = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
            assert _show(engine, "statement_timeout") == "30s"  # the session settings still apply
        with engine.connect() as conn:
            alive = conn.execute(text("SELECT count(*) FROM pg_stat_activity WHERE pid = :p"), {"p": backend})
            assert alive.scalar_one() == 0  # the first connection was closed, not kept
    finally:
        engine.dispose()


def test_ssh_host_apps_keep_no_idle_connections_unless_told():
    from carecli.ssh.terminal import app_environment

    base = {"CARECLI_DB_POOL_SIZE": "7", "CARECLI_TOKEN": "ccli_secret"}
    env = app_environment(base, term="xterm-256color", client_colorterm=None, ssh_connection="192.0.2.1 5 10.0.0.1 22")
    assert env["CARECLI_DB_POOL_SIZE"] == "0" and "CARECLI_TOKEN" not in env
    kept = app_environment(base, term="xterm", client_colorterm=None, ssh_connection="x", pool_size=None)
    assert kept["CARECLI_DB_POOL_SIZE"] == "7"


def test_url_settings_are_kept_and_options_merged(migrated_pair):
    url = migrated_pair.url("platform").update_query_dict(
        {"application_name": "nightly-import", "options": "-c work_mem=8MB"})
    engine = create_database_engine(url, load_settings({}))
    try:
        assert _show(engine, "application_name") == "nightly-import"
        assert _show(engine, "work_mem") == "8MB"
        assert _show(engine, "statement_timeout") == "30s"
    finally:
        engine.dispose()


def test_error_text_never_carries_parameters(migrated_engines):
    """SQLAlchemy's str() embeds bound parameters; our description keeps only the server's reason."""
    with pytest.raises(DBAPIError) as caught:
        with migrated_engines.platform.begin() as conn:
            conn.execute(text("INSERT INTO members (first_name, last_name, status) VALUES (:f, :l, :s)"),
                         {"f": "Zelda", "l": "Secretname", "s": "bogus"})
    assert "Secretname" in str(caught.value)  # what we must never print
    described = describe_dbapi_error(caught.value)
    assert "Secretname" not in described
    assert "members_status_check" in described
