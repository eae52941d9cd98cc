"""``carecli doctor``: every check passes (or warns) on a healthy pair and fails when its condition is broken.

The healthy installation connects as the least-privilege app roles of
``carecli db grants`` (made per test with a unique prefix, dropped after);
the other tests break one thing at a time on fresh migrated databases (as the
test server's superuser) and look at that check's result, in process for
detail and through the real CLI for exit codes and output.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from psycopg import sql
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url

from carecli.config import load_settings
from carecli.data import migrate
from carecli.data.crypto.keystore import ensure_primary_key
from carecli.data.crypto.master import LocalMasterKey, encode_key, generate_master_key
from carecli.data.databases import Databases, create_database_engine
from carecli.data.grants import grants_sql, role_names
from carecli.data.health import (
    ArchiveFacts,
    ConnectionUsage,
    RoleFacts,
    TablePrivileges,
    TlsState,
    archive_facts,
    segment_number,
    server_id,
)
from carecli.errors import EXIT_FAILURE
from carecli.services import doctor as doc
from carecli.services.doctor import CheckResult, Doctor, run_checks
from tests.cli import run_carecli

KEYRING_OFF = {"PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring"}
_prefixes = itertools.count()


@dataclass
class Install:
    """A migrated pair with a data key, reachable as the superuser and (optionally) as the app roles."""

    pair: Any
    master: LocalMasterKey
    admin: dict[str, Engine]
    env: dict[str, str]  # how carecli connects (app roles when granted, else the superuser)
    prefix: str | None = None

    def doctor(self, *, embedded: bool = False, **overrides: Any) -> Doctor:
        settings = load_settings({**self.env, **{k: str(v) for k, v in overrides.pop("settings", {}).items()}})
        assert settings.identity_url is not None and settings.platform_url is not None
        databases = Databases(create_database_engine(settings.identity_url, settings),
                              create_database_engine(settings.platform_url, settings),
                              # Only "is there an embedded server" matters to the doctor; the value is not used.
                              embedded=object() if embedded else None)  # type: ignore[arg-type]
        overrides.setdefault("load_master", lambda: self.master)
        return Doctor(settings, databases, environ={}, **overrides)

    def results(self, *, embedded: bool = False, **overrides: Any) -> list[CheckResult]:
        doctor = self.doctor(embedded=embedded, **overrides)
        try:
            return run_checks(doctor)
        finally:
            doctor.databases.dispose()

    def sql(self, database: str, statement: str) -> None:
        with self.admin[database].begin() as connection:
            connection.execute(text(statement))


def result(results: list[CheckResult], name: str, target: str | None = None) -> CheckResult:
    found = [r for r in results if r.name == name and (target is None or r.target == target)]
    assert len(found) == 1, (name, target, results)
    return found[0]


def _env_for(pair: Any, user: str | None = None) -> dict[str, str]:
    env = {}
    for database in ("identity", "platform"):
        url = pair.url(database)
        if user is not None:
            url = url.set(username=user.replace("{db}", database), password=None)
        env[f"CARECLI_{database.upper()}_URL"] = url.render_as_string(hide_password=False)
    return env


@pytest.fixture
def install(migrated_pair) -> Iterator[Install]:
    """Fresh migrated databases with a primary data key, carecli connecting as the superuser."""
    settings = load_settings({})
    admin = {db: create_database_engine(migrated_pair.url(db), settings) for db in ("identity", "platform")}
    master = LocalMasterKey(generate_master_key(), "test")
    ensure_primary_key(admin["platform"], master)
    env = {**_env_for(migrated_pair), "CARECLI_MASTER_KEY": encode_key(master.key), **KEYRING_OFF}
    yield Install(migrated_pair, master, admin, env)
    for engine in admin.values():
        engine.dispose()


@pytest.fixture
def granted(install: Install) -> Iterator[Install]:
    """The same install with the roles of `carecli db grants` applied; carecli connects as the app roles."""
    prefix = f"doc{os.getpid()}x{next(_prefixes)}"
    for database in ("identity", "platform"):
        with install.admin[database].begin() as connection:
            for statement in grants_sql(connection, database, prefix):
                connection.exec_driver_sql(statement)
    install.prefix = prefix
    install.env.update(_env_for(install.pair, f"{prefix}_{{db}}_app"))
    yield install
    with install.pair.server.connect() as admin_connection:
        for database in ("identity", "platform"):
            roles = role_names(prefix, database)
            names = sql.SQL(", ").join(sql.Identifier(r) for r in (roles.owner, roles.app, roles.auditor))
            # DROP OWNED in the database the roles hold rights in, then the cluster-wide roles.
            url = make_url(install.pair.server.admin_url).set(database=install.pair.url(database).database)
            with psycopg.connect(url.render_as_string(hide_password=False), autocommit=True) as in_db:
                in_db.execute(sql.SQL("DROP OWNED BY {}").format(names))
            admin_connection.execute(sql.SQL("DROP ROLE {}").format(names))


# -- the healthy installation --------------------------------------------------------------------------


def test_a_healthy_install_passes_every_check_through_the_cli(granted: Install) -> None:
    outcome = run_carecli("doctor", env=granted.env)
    assert outcome.code == 0, outcome.out + outcome.err
    assert "FAIL" not in outcome.out and "Traceback" not in outcome.err
    for check in ("reachable", "tls", "migrations", "master key", "audit triggers", "roles",
                  "session timeouts", "clock skew", "pool"):
        assert check in outcome.out
    assert "0 failed" in outcome.out

    as_json = run_carecli("doctor", "--json", env=granted.env)
    assert as_json.code == 0
    rows = [json.loads(line) for line in as_json.out.splitlines()]
    assert {row["status"] for row in rows} <= {"pass", "warn"}
    roles = [row for row in rows if row["name"] == "roles"]
    assert [row["status"] for row in roles] == ["pass", "pass"]
    assert all(row["detail"].startswith(f"connects as {granted.prefix}_") for row in roles)


def test_the_master_key_check_proves_decryption_without_reading_members(granted: Install) -> None:
    with granted.admin["platform"].connect() as connection:
        before = connection.execute(text("SELECT count(*) FROM audit_logs")).scalar()
    check = result(granted.results(), "master key")
    assert check.status == "pass" and "round trip" in check.detail
    with granted.admin["platform"].connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM audit_logs")).scalar() == before


# -- each check fails when its condition is broken ------------------------------------------------------


def test_a_dropped_or_disabled_audit_trigger_fails(install: Install) -> None:
    assert result(install.results(), "audit triggers").status == "pass"
    install.sql("platform", "ALTER TABLE audit_logs DISABLE TRIGGER audit_logs_no_update_delete")
    disabled = result(install.results(), "audit triggers")
    assert disabled.status == "fail" and "DELETE, UPDATE" in disabled.detail
    install.sql("platform", "ALTER TABLE audit_logs ENABLE TRIGGER audit_logs_no_update_delete")
    install.sql("platform", "DROP TRIGGER audit_logs_no_truncate ON audit_logs")
    dropped = result(install.results(), "audit triggers")
    assert dropped.status == "fail" and "TRUNCATE" in dropped.detail and "db upgrade" in dropped.action


def test_a_database_one_revision_behind_fails_migrations(install: Install) -> None:
    migrate.downgrade(install.admin["platform"], "platform", "-1")
    outcome = run_carecli("doctor", env=install.env)
    assert outcome.code == EXIT_FAILURE
    line = next(line for line in outcome.out.splitlines() if "migrations (platform)" in line)
    assert line.startswith("FAIL") and migrate.head_revision("platform") in line
    assert "-> run `carecli db upgrade`" in outcome.out
    assert next(line for line in outcome.out.splitlines() if "migrations (identity)" in line).startswith("pass")


def test_a_wrong_master_key_fails(install: Install) -> None:
    other = LocalMasterKey(generate_master_key(), "another key")
    check = result(install.results(load_master=lambda: other), "master key")
    assert check.status == "fail" and "cannot unwrap 1 of 1" in check.detail
    outcome = run_carecli("doctor", env={**install.env, "CARECLI_MASTER_KEY": encode_key(other.key)})
    assert outcome.code == EXIT_FAILURE and "Traceback" not in outcome.err
    assert any(line.startswith("FAIL  master key") for line in outcome.out.splitlines())


def test_no_master_key_configured_fails_with_what_to_set(install: Install) -> None:
    env = {**install.env, "CARECLI_MASTER_KEY": ""}
    outcome = run_carecli("doctor", env=env)
    assert outcome.code == EXIT_FAILURE
    assert "FAIL  master key" in outcome.out and "CARECLI_MASTER_KEY_FILE" in outcome.out


def test_a_retired_key_that_does_not_unwrap_only_warns(install: Install) -> None:
    other = LocalMasterKey(generate_master_key(), "old")
    key_id = uuid.uuid4()
    with install.admin["platform"].begin() as connection:
        connection.execute(text("INSERT INTO data_keys (id, wrapped_key, master_key_id, status, retired_at) "
                                "VALUES (:id, :wrapped, :mk, 'retired', now())"),
                           {"id": key_id, "wrapped": other.wrap(b"k" * 32, data_key_id=key_id), "mk": other.key_id})
    check = result(install.results(), "master key")
    assert check.status == "warn" and "1 retired keys do not unwrap" in check.detail


@pytest.mark.parametrize(("overrides", "status", "words"), [
    ({}, "pass", "12 h, or 15 min"),
    ({"CARECLI_SESSION_MAX_HOURS": 12, "CARECLI_SESSION_IDLE_MINUTES": 30}, "pass", "30 min"),
    ({"CARECLI_SESSION_MAX_HOURS": 24}, "fail", "sessions last 24 h"),
    ({"CARECLI_SESSION_IDLE_MINUTES": 60}, "fail", "idle timeout is 60 min"),
])
def test_session_timeouts_follow_nist_aal2(install: Install, overrides: dict, status: str, words: str) -> None:
    doctor = install.doctor(settings=overrides)
    try:
        check = result(run_checks(doctor, [doc.check_sessions]), "session timeouts")
    finally:
        doctor.databases.dispose()
    assert check.status == status and words in check.detail
    if status == "fail":
        assert "CARECLI_SESSION_MAX_HOURS" in check.action


def test_session_limits_over_aal2_exit_1_through_the_cli(install: Install) -> None:
    outcome = run_carecli("doctor", env={**install.env, "CARECLI_SESSION_MAX_HOURS": "24"})
    assert outcome.code == EXIT_FAILURE and "FAIL  session timeouts" in outcome.out


def test_a_superuser_connection_fails_roles_but_only_warns_on_the_embedded_server(install: Install) -> None:
    results = install.results()
    for database in ("identity", "platform"):
        check = result(results, "roles", database)
        assert check.status == "fail" and "superuser" in check.detail and f"carecli_{database}_app" in check.action
    embedded = result(install.results(embedded=True), "roles", "platform")
    assert embedded.status == "warn" and embedded.detail.startswith("embedded demo server:")


def test_the_owner_role_warns_and_an_app_role_that_may_delete_fails(granted: Install) -> None:
    owner_env = _env_for(granted.pair, f"{granted.prefix}_{{db}}_owner")
    as_owner = Install(granted.pair, granted.master, granted.admin, {**granted.env, **owner_env})
    owner = result(as_owner.results(), "roles", "platform")
    assert owner.status == "warn" and "the owner of audit_logs" in owner.detail

    app = f'"{granted.prefix}_platform_app"'
    granted.sql("platform", f"GRANT DELETE ON members TO {app}")
    granted.sql("platform", f"GRANT UPDATE ON audit_logs TO {app}")
    check = result(granted.results(), "roles", "platform")
    assert check.status == "fail"
    assert "may DELETE from members" in check.detail and "may UPDATE audit_logs" in check.detail
    assert "carecli db grants --db platform --apply" in check.action
    assert result(granted.results(), "roles", "identity").status == "pass"


def test_clock_skew_warns_above_5_seconds_and_fails_above_60(install: Install) -> None:
    def skewed(seconds: float):
        return lambda: datetime.now(UTC) + timedelta(seconds=seconds)

    assert result(install.results(), "clock skew", "platform").status == "pass"
    warn = result(install.results(clock=skewed(-10)), "clock skew", "platform")
    assert warn.status == "warn" and "ahead of" in warn.detail  # our clock behind = the server's ahead
    fail = result(install.results(clock=skewed(120)), "clock skew", "identity")
    assert fail.status == "fail" and "behind" in fail.detail and "NTP" in fail.action


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_an_unreachable_database_fails_with_exit_1_and_no_traceback(install: Install) -> None:
    down = f"postgresql+psycopg://carecli:secret-pw@127.0.0.1:{_closed_port()}/nowhere"
    outcome = run_carecli("doctor", env={**install.env, "CARECLI_IDENTITY_URL": down})
    assert outcome.code == EXIT_FAILURE
    assert "Traceback" not in outcome.err and "Traceback" not in outcome.out
    assert "secret-pw" not in outcome.out + outcome.err
    lines = outcome.out.splitlines()
    assert next(line for line in lines if "reachable (identity)" in line).startswith("FAIL")
    # The platform database is still checked.
    assert next(line for line in lines if "migrations (platform)" in line).startswith("pass")
    assert not any("(identity)" in line for line in lines if "reachable" not in line)


def test_a_real_local_connection_without_tls_passes(install: Install) -> None:
    env = {}
    for database in ("identity", "platform"):
        url = make_url(install.env[f"CARECLI_{database.upper()}_URL"])
        env[f"CARECLI_{database.upper()}_URL"] = url.update_query_dict({"sslmode": "disable"}).render_as_string(
            hide_password=False)
    local = Install(install.pair, install.master, install.admin, {**install.env, **env})
    check = result(local.results(), "tls", "platform")
    assert check.status == "pass" and "no TLS" in check.detail and "stays on this machine" in check.detail


@pytest.mark.parametrize(("url", "tls", "status", "words"), [
    ("postgresql+psycopg://u@db.example.com/p?sslmode=disable", TlsState(False, None), "fail", "no TLS"),
    ("postgresql+psycopg://u@10.1.2.3/p", TlsState(False, None), "fail", "unencrypted"),
    ("postgresql+psycopg://u@db.example.com/p?sslmode=require", TlsState(True, "TLSv1.3"), "warn", "not verified"),
    ("postgresql+psycopg://u@db.example.com/p?sslmode=prefer", TlsState(True, "TLSv1.3"), "warn", "not verified"),
    ("postgresql+psycopg://u@db.example.com/p?sslmode=require&sslrootcert=/ca.pem", TlsState(True, "TLSv1.3"),
     "warn", "not the host name"),
    ("postgresql+psycopg://u@db.example.com/p?sslmode=verify-ca", TlsState(True, "TLSv1.2"), "warn",
     "not the host name"),
    ("postgresql+psycopg://u@db.example.com/p?sslmode=verify-full", TlsState(True, "TLSv1.3"), "pass",
     "host name verified"),
    ("postgresql+psycopg://u@127.0.0.1/p?sslmode=disable", TlsState(False, None), "pass", "stays on this machine"),
    ("postgresql+psycopg://u@[::1]/p", TlsState(False, None), "pass", "stays on this machine"),
    ("postgresql+psycopg://u@localhost/p", TlsState(True, "TLSv1.3"), "pass", "TLS (TLSv1.3)"),
    ("postgresql+psycopg://u@/p?host=/run/postgresql", TlsState(False, None), "pass", "Unix socket"),
])
def test_the_tls_classifier(url: str, tls: TlsState, status: str, words: str, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.postgresql/root.crt of the machine running the tests
    got_status, detail, action = doc.classify_tls(make_url(url), tls, environ={})
    assert got_status == status and words in detail
    assert bool(action) == (status != "pass")


def test_the_tls_classifier_reads_libpq_environment(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    url = make_url("postgresql+psycopg://u@/p")  # no host in the URL: PGHOST says where
    assert doc.classify_tls(url, TlsState(False, None), environ={"PGHOST": "db.example.com"})[0] == "fail"
    status, detail, _ = doc.classify_tls(make_url("postgresql+psycopg://u@db.example.com/p"),
                                         TlsState(True, "TLSv1.3"), environ={"PGSSLMODE": "verify-full"})
    assert status == "pass"


def test_pool_health_shows_the_pool_and_fails_near_max_connections(install: Install) -> None:
    check = result(install.results(), "pool", "platform")
    assert check.status == "pass"
    assert "pool 5 + overflow 5" in check.detail and "this process may open up to 10" in check.detail
    assert doc.judge_connections(ConnectionUsage(50, 103, 3), 10)[0] == "pass"
    assert doc.judge_connections(ConnectionUsage(85, 103, 3), 10)[0] == "warn"
    status, detail, action = doc.judge_connections(ConnectionUsage(96, 103, 3), 10)
    assert status == "fail" and "about to be refused" in detail and "PgBouncer" in action


def test_judge_roles_without_a_server() -> None:
    def facts(**table: bool) -> RoleFacts:
        base = {"owned": False, "delete": False, "update": False, "truncate": False}
        return RoleFacts("app", False, [TablePrivileges("audit_logs", **{**base, **table}),
                                        TablePrivileges("members", **{**base, "update": True})])

    assert doc.judge_roles(facts(), "platform")[0] == "pass"
    assert doc.judge_roles(facts(truncate=True), "platform")[0] == "fail"
    assert doc.judge_roles(facts(delete=True), "platform")[0] == "fail"
    assert doc.judge_roles(facts(owned=True), "platform")[0] == "warn"


def test_a_check_that_breaks_is_reported_as_a_failure_not_a_crash(install: Install) -> None:
    def broken(_doctor: Doctor):
        raise RuntimeError("boom 123-45-6789")

    doctor = install.doctor()
    try:
        results = run_checks(doctor, [broken, doc.check_sessions])
    finally:
        doctor.databases.dispose()
    assert results[0] == CheckResult("broken", "fail", "the check could not run (RuntimeError)",
                                     "run with CARECLI_DEBUG=1 and report it")
    assert results[1].status == "pass"


def test_a_read_replica_is_checked_too_and_its_outage_only_warns(install: Install, pg_server, template_pair) -> None:
    replica = pg_server.create_database("replica", template=template_pair.platform)
    try:
        env = {**install.env, "CARECLI_PLATFORM_READ_URL": pg_server.url(replica).render_as_string(
            hide_password=False)}
        outcome = run_carecli("doctor", "--json", env=env)
        rows = [json.loads(line) for line in outcome.out.splitlines()]
        replica_rows = {row["name"]: row["status"] for row in rows if row["target"] == "platform_read"}
        assert replica_rows["reachable"] == "pass" and replica_rows["migrations"] == "pass"
        assert replica_rows["pool"] == "pass" and replica_rows["audit triggers"] == "pass"

        down = f"postgresql+psycopg://carecli@127.0.0.1:{_closed_port()}/replica"
        outcome = run_carecli("doctor", env={**install.env, "CARECLI_PLATFORM_READ_URL": down})
        line = next(line for line in outcome.out.splitlines() if "reachable (platform_read)" in line)
        assert line.startswith("WARN") and "reads fall back to the primary" in line
        assert "Traceback" not in outcome.err
    finally:
        pg_server.drop_database(replica)


def test_judge_seals_without_a_server() -> None:
    now = datetime(2026, 12, 4, 12, 0)
    assert doc.judge_seals(now, now - timedelta(hours=1), None, 0) == (
        "pass", "last seal 60 min ago; every audit row is sealed", "")
    status, detail, action = doc.judge_seals(now, None, now - timedelta(days=3), 120)
    assert status == "warn" and "no seal yet" in detail and "120 audit rows not sealed" in detail
    assert "3 days old" in detail and "carecli audit seal" in action
    status, detail, _ = doc.judge_seals(now, now - timedelta(minutes=5), now - timedelta(minutes=3), 7)
    assert status == "pass" and "7 audit rows of the last 3 min not sealed yet" in detail
    assert doc.judge_seals(now, now - timedelta(days=2), now - doc.SEAL_WARN_AGE - timedelta(seconds=1), 1)[0] == "warn"


def test_the_seal_check_reports_the_last_seals_age_and_what_waits(install: Install) -> None:
    from carecli.data import audit_seal

    install.sql("platform", "INSERT INTO audit_logs (entity_type, entity_id, action, created_at) VALUES "
                "('probe', gen_random_uuid(), 'read', (now() AT TIME ZONE 'UTC') - interval '2 days')")
    stale = result(install.results(), "audit seals")
    assert stale.status == "warn" and "no seal yet" in stale.detail
    audit_seal.seal(install.admin["platform"], LocalMasterKey(generate_master_key(), "test"))
    fresh = result(install.results(), "audit seals")
    assert fresh.status == "pass" and "ago; every audit row is sealed" in fresh.detail


# -- WAL archiving (point-in-time recovery) ----------------------------------------------------------------

NOW = datetime(2025, 1, 15, 14, 32, tzinfo=UTC)
PGBACKREST = "pgbackrest --stanza=carecli --repo1-s3-key-secret=hunter2 archive-push %p"


def facts(**changes: Any) -> ArchiveFacts:
    """A server archiving well: on, pgBackRest, 1,000 segments archived, the last a minute ago."""
    base: dict[str, Any] = dict(archive_mode="on", archive_command=PGBACKREST, archive_library="",
                                wal_level="replica", now=NOW, archived_count=1000,
                                last_archived_time=NOW - timedelta(minutes=1), failed_count=0,
                                last_failed_time=None, waiting=0)
    base.update(changes)
    return ArchiveFacts(**base)


@pytest.mark.parametrize(("changes", "status", "words"), [
    ({}, "pass", "archive_mode on, archive_command runs pgbackrest, wal_level replica; 1,000 segments archived "
                 "(last 60 s ago), 0 waiting"),
    ({"archive_mode": "off", "archive_command": "(disabled)", "wal_level": "minimal"}, "warn",
     "WAL archiving is off: no point-in-time recovery (see README)"),
    ({"archive_mode": "always"}, "pass", "archive_mode always"),
    ({"archive_command": ""}, "warn", "neither archive_command nor archive_library is set"),
    ({"archive_command": "", "archive_library": "basic_archive"}, "pass", "archive_library basic_archive"),
    ({"archive_command": None, "archive_library": None}, "pass", "archive_command not visible to this role"),
    ({"stats_readable": False, "archived_count": None, "last_archived_time": None, "failed_count": None,
      "waiting": None}, "warn", "this role may not read pg_stat_archiver"),
    # The last attempt failed after the last success: failing now, whatever the counts.
    ({"failed_count": 3, "last_failed_time": NOW - timedelta(seconds=20)}, "warn",
     "WAL archiving is failing: the last attempt, at 2025-01-15 14:31:40+00:00, failed (3 failures); "
     "the last success was 60 s ago"),
    ({"archived_count": 0, "last_archived_time": None, "failed_count": 1, "last_failed_time": NOW}, "warn",
     "no segment was ever archived"),
    # A failure followed by a success: recovered, said in passing.
    ({"failed_count": 2, "last_failed_time": NOW - timedelta(hours=2)}, "pass", ", 2 failed earlier"),
    # Segments waiting: fine while young, a warning once the oldest waits for more than 15 minutes.
    ({"waiting": 2, "oldest_waiting": NOW - timedelta(minutes=3)}, "pass", "2 waiting"),
    ({"waiting": 40, "oldest_waiting": NOW - timedelta(hours=3), "last_archived_time": NOW - timedelta(hours=3)},
     "warn", "40 WAL segments are waiting to be archived, the oldest for 3 h; 1,000 segments archived (last 3 h "
             "ago): the recovery point lags that far behind"),
    # Without the rights to list pg_wal/archive_status: segments behind the one being written, and the lag.
    ({"waiting": 5, "last_archived_time": NOW - timedelta(minutes=40)}, "warn", "the oldest for 40 min"),
    ({"waiting": 5, "last_archived_time": NOW - timedelta(minutes=4)}, "pass", "5 waiting"),
    # An idle server archives nothing for days, and that is fine: nothing waits.
    ({"waiting": 0, "last_archived_time": NOW - timedelta(days=3)}, "pass", "last 3 days ago"),
    ({"waiting": None, "last_archived_time": NOW - timedelta(days=3)}, "pass", "last 3 days ago"),
    ({"archived_count": 0, "last_archived_time": None}, "pass", "0 segments archived (none yet)"),
])
def test_judge_archiving(changes: dict[str, Any], status: str, words: str) -> None:
    got_status, detail, action = doc.judge_archiving(facts(**changes))
    assert got_status == status, detail
    assert words in detail
    assert bool(action) == (status != "pass")


def test_the_embedded_server_is_not_warned_about_archiving() -> None:
    status, detail, action = doc.judge_archiving(facts(archive_mode="off"), embedded=True)
    assert (status, action) == ("pass", "")
    assert detail.startswith("embedded server: backups are `carecli backup`")


_moments = st.one_of(st.none(), st.integers(min_value=0, max_value=10 * 86400).map(
    lambda seconds: NOW - timedelta(seconds=seconds)))


@settings(max_examples=300, deadline=None)
@given(mode=st.sampled_from(["off", "on", "always"]),
       command=st.sampled_from([None, "", "(disabled)", PGBACKREST, "/usr/bin/wal-g wal-push %p"]),
       library=st.sampled_from([None, "", "basic_archive"]), readable=st.booleans(),
       archived=_moments, failed=_moments, waiting=st.one_of(st.none(), st.integers(0, 10_000)),
       oldest=_moments, embedded=st.booleans())
def test_judge_archiving_properties(mode: str, command: str | None, library: str | None, readable: bool,
                                    archived: datetime | None, failed: datetime | None, waiting: int | None,
                                    oldest: datetime | None, embedded: bool) -> None:
    state = facts(archive_mode=mode, archive_command=command, archive_library=library, stats_readable=readable,
                  last_archived_time=archived, last_failed_time=failed, failed_count=0 if failed is None else 1,
                  waiting=waiting, oldest_waiting=oldest if waiting else None)
    status, detail, action = doc.judge_archiving(state, embedded=embedded)
    assert status in ("pass", "warn")  # never fail: a server without PITR still runs carecli
    assert bool(action) == (status == "warn")
    assert "hunter2" not in detail and "%p" not in detail  # the command's arguments are never shown
    if embedded:
        assert status == "pass" and "carecli backup" in detail
    elif mode == "off":
        assert detail == doc.ARCHIVE_OFF
    elif (command in ("", "(disabled)") and not library) or (command is None and library == ""):
        assert status == "warn" and "neither archive_command nor archive_library is set" in detail
    elif readable and failed is not None and (archived is None or failed > archived):
        assert status == "warn" and "failing" in detail


def test_wal_segment_numbers() -> None:
    size = 16 * 1024 * 1024
    assert segment_number("000000010000000000000001", size) == 1
    assert segment_number("0000000200000001000000FF", size) == 256 + 255
    assert segment_number("000000010000000100000000", size) - segment_number("0000000100000000000000FF", size) == 1
    assert segment_number("000000010000000100000000", 1024 * 1024 * 1024) == 4


def test_archiving_off_on_the_server_warns_once_per_server(install: Install) -> None:
    """Identity and platform live on one test server: one result for both, a warning (archive_mode is off here)."""
    with install.admin["platform"].connect() as connection:
        mode = connection.execute(text("SHOW archive_mode")).scalar_one()
    if mode != "off":
        pytest.skip(f"the test server archives WAL (archive_mode={mode})")
    found = [r for r in install.results() if r.name == "wal archiving"]
    assert found == [CheckResult("wal archiving", "warn", doc.ARCHIVE_OFF, doc.ARCHIVE_HINT, "identity, platform")]
    embedded = result(install.results(embedded=True), "wal archiving")
    assert embedded.status == "pass" and "carecli backup" in embedded.detail

    outcome = run_carecli("doctor", env=install.env)
    line = next(line for line in outcome.out.splitlines() if "wal archiving" in line)
    assert line.startswith("WARN") and "WAL archiving is off: no point-in-time recovery (see README)" in line


def test_the_archiving_probe_needs_no_privileges(granted: Install) -> None:
    """As the least-privilege app role: settings and pg_stat_archiver read, no error, nothing failed."""
    doctor = granted.doctor()
    try:
        with doctor.databases.platform.connect() as connection:
            state = archive_facts(connection)
            assert server_id(connection) is not None
    finally:
        doctor.databases.dispose()
    assert state.archive_mode in ("off", "on", "always") and state.wal_level in ("minimal", "replica", "logical")
    assert doc.judge_archiving(state)[0] in ("pass", "warn")


# -- deferred indexes ----------------------------------------------------------------------------------------


def test_indexes_a_stopped_load_left_dropped_fail_with_the_fix_and_a_running_load_only_warns(install: Install) -> None:
    from carecli.data import deferred_indexes
    from carecli.data.actor import Actor

    engine = install.admin["platform"]
    assert result(install.results(), "deferred indexes").status == "pass"
    load = engine.connect()
    deferred_indexes.defer(load, {"members": 0}, run_id=uuid.uuid4(), actor=Actor.system(), reason="import members",
                           incoming={"members": 1})
    running = result(install.results(), "deferred indexes")
    assert running.status == "warn" and "import members" in running.detail and "ix_members_status" in running.detail
    # The load's process is killed: its session ends, its indexes stay dropped.
    load.invalidate()
    load.close()
    deadline = datetime.now(UTC) + timedelta(seconds=15)
    while result(install.results(), "deferred indexes").status == "warn":
        assert datetime.now(UTC) < deadline
    stopped = result(install.results(), "deferred indexes")
    assert stopped.status == "fail" and "members: " in stopped.detail and "ix_members_name_folded" in stopped.detail
    assert "carecli db rebuild-indexes" in stopped.action
    outcome = run_carecli("doctor", env=install.env)
    assert outcome.code == EXIT_FAILURE and "carecli db rebuild-indexes" in outcome.out

    assert run_carecli("db", "rebuild-indexes", env=install.env).code == 0
    assert result(install.results(), "deferred indexes").status == "pass"
    # An INVALID index (a concurrent build that failed) fails the check too, and the same command fixes it.
    install.sql("platform", "CREATE INDEX ix_members_city_test ON members (city)")
    install.sql("platform", "UPDATE pg_index SET indisvalid = false "
                            "WHERE indexrelid = 'ix_members_city_test'::regclass")
    invalid = result(install.results(), "deferred indexes")
    assert invalid.status == "fail" and "ix_members_city_test (members)" in invalid.detail
    fixed = run_carecli("db", "rebuild-indexes", env=install.env)
    assert fixed.code == 0 and "reindexed ix_members_city_test" in fixed.out
    assert result(install.results(), "deferred indexes").status == "pass"
