"""Point-in-time recovery: the README's pgBackRest recipe, run end to end on a PostgreSQL 15 cluster made here.

The test makes a throwaway cluster in a temporary directory (its own port, its own Unix socket
directory), archives its WAL with exactly the ``archive_command`` the README gives, takes a full
backup, makes a batch of audited changes through the real CLI, notes the server's time, makes more,
stops the server and restores to that time with the README's ``pgbackrest restore``. On the restored
cluster ``carecli db check`` and ``carecli audit verify`` must exit 0, the earlier changes must be
there and the later ones gone. :data:`RECIPE` holds the commands, and a cheap test checks that the
README shows each of them verbatim: the README's recipe is the one proven here.

Marked ``e2e`` and in neither ``server`` nor ``app`` (tests/conftest.py): CI runs it once, in the pass
against the PostgreSQL service (``-m 'server or not app'``), which is where the PG 15 binaries are.
It skips, saying why, where pgBackRest or the PostgreSQL 15 server binaries are missing. initdb refuses
to run as root: as root the cluster and pgBackRest run as the ``postgres`` account (``runuser``).
"""

from __future__ import annotations

import json
import os
import pwd
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psycopg
import pytest
from sqlalchemy import text

from carecli.config import load_settings
from carecli.data.databases import create_database_engine
from carecli.data.permissions import ALL_PERMISSIONS
from carecli.services.doctor import ARCHIVE_OFF
from tests.cli import Result, run_carecli
from tests.support.deployment import issue_token
from tests.support.seeded import MASTER_KEY

PG_BIN = Path(os.environ.get("CARECLI_TEST_PG15_BIN", "/usr/lib/postgresql/15/bin"))
STANZA = "carecli"
README = Path(__file__).resolve().parent.parent / "README.md"
#: when recovery targets a moment: the README shows this example, the test substitutes the noted time
EXAMPLE_TARGET = "2025-01-15 14:32:00+00"

#: The README's recipe, command for command (what the server runs, then what the operator runs).
ARCHIVE_SETTINGS = ("archive_mode = on", f"archive_command = 'pgbackrest --stanza={STANZA} archive-push %p'")
STANZA_CREATE = ["pgbackrest", f"--stanza={STANZA}", "stanza-create"]
CHECK = ["pgbackrest", f"--stanza={STANZA}", "check"]
FULL_BACKUP = ["pgbackrest", f"--stanza={STANZA}", "--type=full", "backup"]


def restore_to(target: str) -> list[str]:
    return ["pgbackrest", f"--stanza={STANZA}", "--delta", "--type=time", f"--target={target}",
            "--target-action=promote", "restore"]


#: what the README shows, each verbatim
RECIPE = [*ARCHIVE_SETTINGS, *(shlex.join(argv) for argv in (STANZA_CREATE, CHECK, FULL_BACKUP,
                                                            restore_to(EXAMPLE_TARGET))),
          "carecli db check", "carecli audit verify", "repo1-path=", "pg1-path=", "pg1-port=", "pg1-socket-path=",
          "start-fast=y"]


def test_the_readme_shows_the_recipe_this_module_runs() -> None:
    readme = README.read_text(encoding="utf-8")
    missing = [line for line in RECIPE if line not in readme]
    assert not missing, f"README.md no longer shows these commands of the proven PITR recipe: {missing}"
    assert ARCHIVE_OFF.removesuffix(" (see README)") in readme  # the doctor's warning is explained there


# -- the throwaway cluster ---------------------------------------------------------------------------------


def _skip_reason() -> str | None:
    if shutil.which("pgbackrest") is None:
        return "pgbackrest is not installed (Debian package `pgbackrest`; .ci/run installs it when it can)"
    missing = [name for name in ("initdb", "pg_ctl", "postgres") if not (PG_BIN / name).exists()]
    if missing:
        return f"no PostgreSQL 15 server binaries ({', '.join(missing)}) in {PG_BIN} (set CARECLI_TEST_PG15_BIN)"
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            return "running as root without runuser: initdb refuses root"
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no `postgres` account to run the cluster as (initdb refuses root)"
    return None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Cluster:
    """A PostgreSQL 15 cluster and its pgBackRest repository, all under ``root``."""

    root: Path
    port: int
    owner: str | None  # the account it runs as when we are root, else None (ourselves)
    log: list[str] = field(default_factory=list)

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "socket"

    @property
    def config(self) -> Path:
        return self.root / "pgbackrest.conf"

    @property
    def env(self) -> dict[str, str]:
        # pgBackRest reads its options from PGBACKREST_* too: the commands stay the README's, word for word,
        # and the server's archive_command and restore_command (it inherits this environment) find the file.
        return {**os.environ, "PGBACKREST_CONFIG": str(self.config), "LC_ALL": "C.UTF-8"}

    def run(self, argv: Sequence[str], timeout: float = 120) -> str:
        """``argv`` as the cluster's owner; its output, or the test fails showing it."""
        full = [*(["runuser", "-u", self.owner, "--"] if self.owner else []), *argv]
        started = time.monotonic()
        proc = subprocess.run(full, env=self.env, cwd=self.root, capture_output=True, text=True, timeout=timeout)
        self.log.append(f"{time.monotonic() - started:5.1f}s  {shlex.join(argv)}")
        assert proc.returncode == 0, f"{shlex.join(argv)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
        return proc.stdout

    def pg_ctl(self, action: str) -> None:
        self.run([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "server.log"), "-w",
                  "-t", "60", *(["-m", "fast"] if action == "stop" else []), action])

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def sql(self, statement: str, database: str = "postgres") -> Any:
        """The first column of the first row (None when there is none), as the superuser."""
        with psycopg.connect(self.url(database), autocommit=True) as connection:
            cursor = connection.execute(statement)
            row = cursor.fetchone() if cursor.description else None
        return None if row is None else row[0]


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    owner = "postgres" if os.geteuid() == 0 else None
    # Not pytest's tmp_path: its parents are private to us, and as root the cluster's owner must reach it.
    root = Path(tempfile.mkdtemp(prefix="carecli-pitr-"))
    made = Cluster(root, _free_port(), owner)
    for sub in ("socket", "repo", "log", "lock"):
        (root / sub).mkdir()
    made.config.write_text(
        "[global]\n"
        f"repo1-path={root / 'repo'}\n"
        "repo1-retention-full=2\n"
        "start-fast=y\n"
        # test only: a packaged install has these directories (/var/log/pgbackrest, /tmp/pgbackrest)
        f"log-path={root / 'log'}\n"
        f"lock-path={root / 'lock'}\n"
        "\n"
        f"[{STANZA}]\n"
        f"pg1-path={made.data}\n"
        f"pg1-port={made.port}\n"
        f"pg1-socket-path={made.socket_dir}\n", encoding="utf-8")
    if owner:
        entry = pwd.getpwnam(owner)
        for path in (root, *root.rglob("*")):
            os.chown(path, entry.pw_uid, entry.pw_gid)
    try:
        made.run([str(PG_BIN / "initdb"), "-D", str(made.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                  "--locale=C.UTF-8", "--no-sync"])
        with (made.data / "postgresql.conf").open("a", encoding="utf-8") as conf:
            conf.write("\n".join([
                f"port = {made.port}", "listen_addresses = '127.0.0.1'",
                f"unix_socket_directories = '{made.socket_dir}'", "fsync = off", "max_wal_size = 256MB",
                *ARCHIVE_SETTINGS, ""]))
        made.pg_ctl("start")
        yield made
    finally:
        if (made.data / "postmaster.pid").exists():
            subprocess.run([*(["runuser", "-u", owner, "--"] if owner else []), str(PG_BIN / "pg_ctl"), "-D",
                            str(made.data), "-m", "immediate", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


# -- the recipe, end to end ------------------------------------------------------------------------------


def _carecli(env: dict[str, str], *args: str) -> Result:
    outcome = run_carecli(*args, env=env)
    assert outcome.code == 0, f"carecli {' '.join(args)} exited {outcome.code}:\n{outcome.out}\n{outcome.err}"
    return outcome


def _emails(cluster: Cluster, pattern: str) -> list[str]:
    with psycopg.connect(cluster.url("carecli_identity")) as connection:
        return [row[0] for row in connection.execute(
            "SELECT email FROM users WHERE email LIKE %s ORDER BY email", (pattern,))]


def _audited(cluster: Cluster) -> int:
    return cluster.sql("SELECT count(*) FROM audit_logs WHERE entity_type = 'user' AND action = 'create'",
                       "carecli_platform")


@pytest.mark.e2e
def test_the_readme_pgbackrest_recipe_restores_to_a_named_moment(cluster: Cluster) -> None:
    started = time.monotonic()
    cluster.run(STANZA_CREATE)
    cluster.run(CHECK)

    for name in ("carecli_identity", "carecli_platform"):
        cluster.sql(f"CREATE DATABASE {name}")
    env = {"CARECLI_IDENTITY_URL": cluster.url("carecli_identity").replace("postgresql:", "postgresql+psycopg:"),
           "CARECLI_PLATFORM_URL": cluster.url("carecli_platform").replace("postgresql:", "postgresql+psycopg:"),
           "CARECLI_MASTER_KEY": MASTER_KEY, "PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring"}
    _carecli(env, "db", "upgrade")
    _carecli(env, "seed", "--members", "50", "--seed", "20")
    # The doctor sees archiving on and working on this server (its other findings: we connect as a superuser).
    doctor = run_carecli("doctor", "--json", env=env)
    archiving = [json.loads(line) for line in doctor.out.splitlines() if '"wal archiving"' in line]
    assert [(row["status"], row["target"]) for row in archiving] == [("pass", "identity, platform")], doctor.out
    assert archiving[0]["detail"].startswith("archive_mode on, archive_command runs pgbackrest, wal_level replica")

    cluster.run(FULL_BACKUP)
    backed_up = time.monotonic()

    # An administrator of the seeded data, with an API token, makes audited changes through the CLI.
    settings = load_settings({})
    engines = SimpleNamespace(
        identity=create_database_engine(load_settings(env).identity_url, settings),  # type: ignore[arg-type]
        platform=create_database_engine(load_settings(env).platform_url, settings))  # type: ignore[arg-type]
    try:
        with engines.identity.connect() as connection:
            admin_id = connection.execute(text(
                "SELECT u.id FROM users u JOIN roles r ON r.id = u.role_id WHERE r.name = 'admin' "
                "AND u.is_active AND u.deleted_at IS NULL ORDER BY u.email LIMIT 1")).scalar_one()
        token = issue_token(engines, admin_id, ALL_PERMISSIONS)
    finally:
        engines.identity.dispose()
        engines.platform.dispose()
    env["CARECLI_TOKEN"] = token

    def add_users(prefix: str) -> None:
        for n in (1, 2, 3):
            _carecli(env, "users", "add", "--email", f"{prefix}-{n}@pitr.example.org", "--external-id",
                     f"pitr|{prefix}-{n}", "--role", "specialist", "--first", "Pitr", "--last", prefix.title())

    _carecli(env, "audit", "seal")
    add_users("before")
    _carecli(env, "audit", "seal")
    seals_then = cluster.sql("SELECT count(*) FROM audit_seals", "carecli_platform")
    audited_then = _audited(cluster)
    # pgBackRest picks the backup to restore from by its stop time, in whole seconds, strictly before the target:
    # the target must fall in a later second than the backup's end (in real life it is hours later).
    time.sleep(max(0.0, backed_up + 1.1 - time.monotonic()))
    # The moment to return to, on the server's clock (the one its commit records carry).
    moment = cluster.sql("SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'")
    assert isinstance(moment, str)

    add_users("after")
    _carecli(env, "audit", "seal")
    assert _emails(cluster, "after-%") and _audited(cluster) == audited_then + 3
    # Recovery must find WAL past the moment: close the segment holding the later changes and wait for it
    # to reach the repository.
    segment = cluster.sql("SELECT pg_walfile_name(pg_switch_wal())")
    deadline = time.monotonic() + 60
    while cluster.sql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver") < segment:
        assert time.monotonic() < deadline, f"WAL segment {segment} was not archived within 60 s"
        time.sleep(0.1)

    cluster.pg_ctl("stop")
    cluster.run(restore_to(moment))
    cluster.pg_ctl("start")
    deadline = time.monotonic() + 60
    while cluster.sql("SELECT pg_is_in_recovery()"):
        assert time.monotonic() < deadline, "the restored server did not promote within 60 s"
        time.sleep(0.1)

    checked = _carecli(env, "db", "check")
    assert "identity: up to date" in checked.out and "platform: up to date" in checked.out
    verified = _carecli(env, "audit", "verify")
    assert "intact" in verified.out
    assert _emails(cluster, "before-%") == [f"before-{n}@pitr.example.org" for n in (1, 2, 3)]
    assert _emails(cluster, "after-%") == []
    assert _audited(cluster) == audited_then
    assert cluster.sql("SELECT count(*) FROM audit_seals", "carecli_platform") == seals_then

    # Archiving that breaks: the doctor names the failure (the real pg_stat_archiver, not a made-up one).
    cluster.sql("ALTER SYSTEM SET archive_command = 'false'")
    cluster.sql("SELECT pg_reload_conf()")
    cluster.sql("SELECT pg_switch_wal() FROM (SELECT txid_current()) AS written")
    deadline = time.monotonic() + 30
    while not cluster.sql("SELECT last_failed_time > coalesce(last_archived_time, '-infinity') FROM pg_stat_archiver"):
        assert time.monotonic() < deadline, "archive_command = 'false' did not fail within 30 s"
        time.sleep(0.1)
    doctor = run_carecli("doctor", "--json", env=env)
    [archiving] = [json.loads(line) for line in doctor.out.splitlines() if '"wal archiving"' in line]
    assert archiving["status"] == "warn" and archiving["detail"].startswith("WAL archiving is failing"), archiving
    elapsed = time.monotonic() - started
    print(f"\nPITR recipe end to end in {elapsed:.1f} s:\n" + "\n".join(cluster.log))
