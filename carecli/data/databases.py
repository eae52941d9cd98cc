"""Engines for the two databases, on configured servers or the embedded one.

Same code path either way: settings give two URLs, or the embedded server
supplies them; from there each database gets its own pooled engine with
pre-ping, a statement timeout, ``TimeZone=UTC`` (the seed's timestamps carry
no zone, so every session must agree on what ``now()`` means) and
``application_name=carecli``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool, QueuePool

from carecli.config import DATABASES, Settings, load_settings
from carecli.data import migrate, rules
from carecli.data.embedded import EmbeddedServer
from carecli.data.replica import ReadRouting, ReplicaHealth
from carecli.data.revisions import MINIMUM_SERVER_VERSION
from carecli.errors import DatabaseUnavailable, SchemaOutOfDate

APPLICATION_NAME = "carecli"
log = logging.getLogger("carecli.data.databases")


@dataclass(frozen=True)
class PoolStatus:
    """One engine's connection pool, for ``carecli doctor`` (the URL's password masked)."""

    name: str
    url: str
    #: connections kept open, and how many more may be opened under load
    pool_size: int
    max_overflow: int
    checked_out: int
    checked_in: int
    #: connections opened beyond pool_size right now (negative: the pool has not filled up yet)
    overflow: int
    read_only: bool


@dataclass
class Databases:
    """The engines carecli works with, and the embedded server if it runs one.

    ``platform_read`` serves list, search and report reads: a read replica's
    engine, or the platform engine itself when no replica is configured.
    ``routing`` decides per read (read-your-writes, replica outages).
    """

    identity: Engine
    platform: Engine
    embedded: EmbeddedServer | None = None
    platform_read: Engine = None  # type: ignore[assignment]  # None: the platform engine
    routing: ReadRouting = field(default=None, repr=False)  # type: ignore[assignment]  # None: made in __post_init__

    def __post_init__(self) -> None:
        if self.platform_read is None:
            self.platform_read = self.platform
        if self.routing is None:
            self.routing = ReadRouting(self.platform, self.platform_read)

    def engine(self, database: str) -> Engine:
        return self.identity if database == "identity" else self.platform

    def items(self) -> Iterator[tuple[str, Engine]]:
        """The two primaries (what is checked and migrated; a replica follows its primary)."""
        yield "identity", self.identity
        yield "platform", self.platform

    def pools(self) -> list[PoolStatus]:
        """Each engine's pool right now: identity, platform and, when configured, platform_read."""
        engines = list(self.items())
        if self.platform_read is not self.platform:
            engines.append(("platform_read", self.platform_read))
        return [_pool_status(name, engine) for name, engine in engines]

    def replica_health(self) -> ReplicaHealth:
        """The read replica's state as the routing sees it (configured, standby, down, fallbacks)."""
        return self.routing.health()

    def dispose(self) -> None:
        self.identity.dispose()
        self.platform.dispose()
        if self.platform_read is not self.platform:
            self.platform_read.dispose()


def _pool_status(name: str, engine: Engine) -> PoolStatus:
    pool = engine.pool
    if not isinstance(pool, QueuePool):  # NullPool/StaticPool: nothing is kept open
        return PoolStatus(name, display_url(engine.url), 0, 0, 0, 0, 0, read_only=name == "platform_read")
    return PoolStatus(
        name=name, url=display_url(engine.url), pool_size=pool.size(),
        max_overflow=pool._max_overflow,  # no public accessor; the value create_engine was given
        checked_out=pool.checkedout(), checked_in=pool.checkedin(), overflow=pool.overflow(),
        read_only=name == "platform_read",
    )


def display_url(url: URL) -> str:
    """A URL safe to print: the password is masked."""
    return url.render_as_string(hide_password=True)


def create_database_engine(url: URL, settings: Settings, *, read_only: bool = False,
                           pool_size: int | None = None) -> Engine:
    """A pooled engine for one database with carecli's session settings.

    Settings given in the URL's query (``application_name``, ``connect_timeout``,
    ``options``) are kept; ours are added to ``options``, not swapped in.
    ``read_only`` (the read replica) makes every transaction read-only, so a
    write sent there by mistake fails instead of landing on the wrong server.
    """
    query = dict(url.query)
    connect_args: dict[str, object] = {}
    if "application_name" not in query:
        connect_args["application_name"] = APPLICATION_NAME
    if "connect_timeout" not in query:
        connect_args["connect_timeout"] = settings.connect_timeout
    session_options = f"-c statement_timeout={settings.statement_timeout_ms} -c TimeZone=UTC"
    if read_only:
        session_options += " -c default_transaction_read_only=on"
    user_options = query.get("options")
    if isinstance(user_options, str) and user_options:
        session_options = f"{session_options} {user_options}"
    connect_args["options"] = session_options
    size = settings.pool_size if pool_size is None else pool_size
    if size == 0:
        # No idle connections kept: each unit of work opens its own (a few ms on a local server). For a
        # host running many app processes (the SSH host's sessions), whose pools would otherwise hold
        # max_connections' worth of idle connections between them.
        return create_engine(url, poolclass=NullPool, connect_args=connect_args)
    return create_engine(
        url,
        pool_size=size,
        max_overflow=settings.max_overflow,
        pool_timeout=settings.pool_timeout,
        pool_pre_ping=True,
        # Most recently used first: idle extras age out under server idle timeouts.
        pool_use_lifo=True,
        connect_args=connect_args,
    )


def describe_dbapi_error(exc: DBAPIError) -> str:
    """The driver's own one-line reason, without SQL text or bound parameters.

    ``str()`` of a SQLAlchemy error embeds the statement and its parameters,
    which may hold member data; only the server's primary message is kept.
    """
    orig = exc.orig
    diag = getattr(orig, "diag", None)
    primary = getattr(diag, "message_primary", None) if diag is not None else None
    if primary:
        return primary
    lines = [line.strip() for line in str(orig).splitlines() if line.strip()]
    # libpq puts the useful part last ("... failed: Connection refused").
    return lines[0] if lines else type(orig).__name__


def check_connection(engine: Engine, database: str) -> None:
    """Connect once; raise :class:`DatabaseUnavailable` saying why not.

    Also refuses servers older than PostgreSQL 13, whose schema defaults
    (``gen_random_uuid()``) would fail later and less clearly.
    """
    try:
        with engine.connect() as connection:
            version = int(connection.execute(text("SHOW server_version_num")).scalar_one())
    except DBAPIError as exc:
        log.warning("database unreachable", extra={"database": database, "url": display_url(engine.url),
                                                   "reason": describe_dbapi_error(exc)})
        raise DatabaseUnavailable(
            f"cannot connect to the {database} database at {display_url(engine.url)}: {describe_dbapi_error(exc)}",
            hint=f"check that the server is running and CARECLI_{database.upper()}_URL (or the config file) is right",
        ) from None
    if version < MINIMUM_SERVER_VERSION:
        raise DatabaseUnavailable(
            f"the {database} database at {display_url(engine.url)} runs PostgreSQL {version // 10000}; "
            "carecli needs 13 or newer",
            hint="upgrade the server, or unset the URLs to use the embedded PostgreSQL",
        )


def _dispose_with_the_command(databases: Databases) -> None:
    """Opened by a CLI command: its connections close when the command ends, not when the process does.

    A process that runs more than one command (an embedding program, the test suite, a host that runs
    commands for its sessions) would otherwise keep every command's pooled connections open."""
    import click

    context = click.get_current_context(silent=True)
    if context is not None:
        context.call_on_close(databases.dispose)


def open_databases(
    settings: Settings | None = None, *, migrate_embedded: bool = True, check: bool = True,
    server: EmbeddedServer | None = None,
) -> Databases:
    """Engines for both databases.

    With no URL configured the embedded server is started (or joined), its
    two databases are created and, unless ``migrate_embedded`` is false,
    migrated to head: it is ours, nobody else will. Configured servers are
    never migrated implicitly; ``carecli db upgrade`` does that. ``server``:
    the embedded server, already started by the caller (the app starts it
    before it loads SQLAlchemy).
    """
    settings = settings or load_settings()
    rules.configure(clock_skew_seconds=settings.clock_skew_seconds)
    embedded: EmbeddedServer | None = None
    if settings.embedded:
        embedded = server or EmbeddedServer(settings.data_dir).start()
        urls = embedded.ensure_databases()
    else:
        assert settings.identity_url is not None and settings.platform_url is not None
        urls = {"identity": settings.identity_url, "platform": settings.platform_url}
    platform = create_database_engine(urls["platform"], settings)
    # Not checked here: a replica that is down only sends reads to the primary (see ReadRouting).
    read = platform if settings.platform_read_url is None else create_database_engine(
        settings.platform_read_url, settings, read_only=True, pool_size=settings.read_pool_size)
    databases = Databases(
        identity=create_database_engine(urls["identity"], settings, pool_size=settings.identity_pool_size),
        platform=platform,
        embedded=embedded,
        platform_read=read,
        routing=ReadRouting(platform, read, read_your_writes_seconds=settings.read_your_writes_seconds),
    )
    _dispose_with_the_command(databases)
    if check or (embedded and migrate_embedded):
        for name, engine in databases.items():
            check_connection(engine, name)
    if embedded is not None and migrate_embedded:
        for name, engine in databases.items():
            migrate.upgrade_if_behind(engine, name)
    return databases


def require_head(databases: Databases) -> None:
    """Refuse to work on a database that is not migrated to this carecli's head."""
    for name, engine in databases.items():
        with engine.connect() as connection:
            current = migrate.current_revision(connection, name)
        head = migrate.head_revision(name)
        if current != head:
            state = "not migrated" if current is None else f"at revision {current}"
            raise SchemaOutOfDate(
                f"the {name} database is {state}; this carecli needs revision {head}",
                hint="run `carecli db upgrade`",
            )


def open_engine(database: str, *, migrate: bool = False) -> Engine:
    """One database's engine from the current settings (for standalone Alembic use)."""
    databases = open_databases(migrate_embedded=migrate)
    return databases.engine(database)


def configured_url(database: str) -> str:
    """The configured URL of ``database`` (offline SQL generation needs one)."""
    settings = load_settings()
    url = settings.url_for(database)
    if url is None:
        raise DatabaseUnavailable(
            "offline migration SQL needs a configured database URL",
            hint="set CARECLI_IDENTITY_URL and CARECLI_PLATFORM_URL",
        )
    return url.render_as_string(hide_password=False)


__all__ = [
    "DATABASES",
    "Databases",
    "PoolStatus",
    "check_connection",
    "create_database_engine",
    "describe_dbapi_error",
    "display_url",
    "open_databases",
    "require_head",
]
