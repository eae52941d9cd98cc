"""Read-only probes of a database server for ``carecli doctor``: catalogs and server state, no data rows.

Each function takes an open connection and returns plain facts; judging them
(pass, warn, fail) is the doctor service's job (carecli/services/doctor.py).
None of these reads touch member data, so none is audited.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, Row, text
from sqlalchemy.exc import DBAPIError

APPEND_ONLY_FUNCTION = "carecli_audit_logs_append_only"
# pg_trigger.tgtype bits (src/include/catalog/pg_trigger.h).
_TRIGGER_EVENTS = {"DELETE": 1 << 3, "UPDATE": 1 << 4, "TRUNCATE": 1 << 5}


@dataclass(frozen=True)
class TlsState:
    """What the connection actually negotiated (``pg_stat_ssl`` of our own backend)."""

    in_use: bool
    version: str | None


@dataclass(frozen=True)
class TablePrivileges:
    table: str
    owned: bool  # the user owns it, directly or through a role it belongs to
    delete: bool
    update: bool
    truncate: bool


@dataclass(frozen=True)
class RoleFacts:
    user: str
    superuser: bool
    tables: list[TablePrivileges]


@dataclass(frozen=True)
class ConnectionUsage:
    current: int
    max_connections: int
    reserved: int  # superuser_reserved_connections (+ reserved_connections on PostgreSQL 16+)

    @property
    def usable(self) -> int:
        return max(self.max_connections - self.reserved, 1)


def server_version(connection: Connection) -> str:
    return str(connection.execute(text("SHOW server_version")).scalar_one()).split()[0]


def tls_state(connection: Connection) -> TlsState:
    row = connection.execute(text("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()")).first()
    if row is None:
        return TlsState(False, None)
    return TlsState(bool(row.ssl), row.version)


def server_clock(connection: Connection) -> datetime:
    """The server's wall clock now (``clock_timestamp()``, not the transaction's start)."""
    return connection.execute(text("SELECT clock_timestamp()")).scalar_one()


def audit_trigger_events(connection: Connection) -> set[str]:
    """The events (UPDATE, DELETE, TRUNCATE) on ``audit_logs`` that an enabled append-only trigger rejects."""
    rows = connection.execute(text(
        """
        SELECT t.tgtype
        FROM pg_trigger t
        WHERE t.tgrelid = to_regclass('public.audit_logs')
          AND NOT t.tgisinternal
          AND t.tgenabled IN ('O', 'A')  -- 'D' disabled, 'R' fires only in replica mode
          AND t.tgfoid = to_regproc(:function)
        """), {"function": f"public.{APPEND_ONLY_FUNCTION}"}).scalars().all()
    return {event for event, bit in _TRIGGER_EVENTS.items() if any(tgtype & bit for tgtype in rows)}


def role_facts(connection: Connection) -> RoleFacts:
    """Who we connect as, and what that role may do to the tables in ``public``."""
    user, superuser = connection.execute(text(
        "SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user")).one()
    rows = connection.execute(text(
        """
        SELECT c.relname AS table,
               pg_has_role(current_user, c.relowner, 'USAGE') AS owned,
               has_table_privilege(current_user, c.oid, 'DELETE') AS delete,
               has_table_privilege(current_user, c.oid, 'UPDATE') AS update,
               has_table_privilege(current_user, c.oid, 'TRUNCATE') AS truncate
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')
        ORDER BY c.relname
        """)).all()
    return RoleFacts(user, bool(superuser), [TablePrivileges(**row._mapping) for row in rows])


def connection_usage(connection: Connection) -> ConnectionUsage:
    """Connections open on the whole server against what it allows."""
    current = int(connection.execute(text("SELECT count(*) FROM pg_stat_activity WHERE backend_type = "
                                          "'client backend'")).scalar_one())
    settings: dict[str, str] = dict(connection.execute(text(
        "SELECT name, setting FROM pg_settings WHERE name IN "
        "('max_connections', 'superuser_reserved_connections', 'reserved_connections')")).all())
    reserved = int(settings.get("superuser_reserved_connections", 0)) + int(settings.get("reserved_connections", 0))
    return ConnectionUsage(current, int(settings["max_connections"]), reserved)


@dataclass(frozen=True)
class ArchiveFacts:
    """WAL archiving on one server: its settings and ``pg_stat_archiver`` (point-in-time recovery needs both)."""

    #: ``off``, ``on`` or ``always``
    archive_mode: str
    #: the command as ``pg_settings`` shows it (``(disabled)`` while archive_mode is off); None: not visible
    archive_command: str | None
    #: PostgreSQL 15+; None before, or not visible
    archive_library: str | None
    wal_level: str
    #: the server's clock when these were read
    now: datetime
    #: whether ``pg_stat_archiver`` could be read; the counters below are None when not
    stats_readable: bool = True
    archived_count: int | None = None
    last_archived_time: datetime | None = None
    failed_count: int | None = None
    last_failed_time: datetime | None = None
    #: completed WAL segments not archived yet: the ``.ready`` files in pg_wal/archive_status (pg_monitor or a
    #: superuser may list them), else the segments between the last archived one and the one being written;
    #: None when neither can be read
    waiting: int | None = None
    #: when the oldest of them was completed (only known from the ``.ready`` files)
    oldest_waiting: datetime | None = None

    @property
    def lag(self) -> timedelta | None:
        """How long since a segment was last archived (None: never, or not readable)."""
        return None if self.last_archived_time is None else self.now - self.last_archived_time

    @property
    def failing(self) -> bool:
        """The last attempt failed: a failure later than the last success (or no success at all)."""
        if self.last_failed_time is None:
            return False
        return self.last_archived_time is None or self.last_failed_time > self.last_archived_time


def server_id(connection: Connection) -> str | None:
    """The cluster's ``system_identifier`` (two databases of one server share it); None when not readable."""
    try:
        with connection.begin_nested():
            value = connection.execute(text("SELECT system_identifier FROM pg_control_system()")).scalar_one()
    except DBAPIError:
        return None
    return str(value)


def archive_facts(connection: Connection) -> ArchiveFacts:
    """Archiving settings and statistics; what the role may not read comes back as None, never as an error."""
    settings: dict[str, str] = dict(connection.execute(text(
        "SELECT name, setting FROM pg_settings WHERE name IN "
        "('archive_mode', 'archive_command', 'archive_library', 'wal_level')")).all())
    now = server_clock(connection)
    stats = None
    try:
        with connection.begin_nested():
            stats = connection.execute(text(
                "SELECT archived_count, last_archived_wal, last_archived_time, failed_count, last_failed_time "
                "FROM pg_stat_archiver")).one()
    except DBAPIError:
        pass  # revoked from PUBLIC on this server: pg_monitor reads it
    waiting, oldest = _waiting_segments(connection, stats)
    return ArchiveFacts(
        archive_mode=settings.get("archive_mode", "off"),
        archive_command=settings.get("archive_command"),
        archive_library=settings.get("archive_library"),
        wal_level=settings.get("wal_level", "?"),
        now=now,
        stats_readable=stats is not None,
        archived_count=None if stats is None else int(stats.archived_count),
        last_archived_time=None if stats is None else stats.last_archived_time,
        failed_count=None if stats is None else int(stats.failed_count),
        last_failed_time=None if stats is None else stats.last_failed_time,
        waiting=None if waiting is None else int(waiting),
        oldest_waiting=oldest,
    )


def _waiting_segments(connection: Connection, stats: Row | None) -> tuple[int | None, datetime | None]:
    """How many completed WAL segments wait for archiving, and since when (see :attr:`ArchiveFacts.waiting`)."""
    if connection.execute(text(
            "SELECT has_function_privilege('pg_ls_archive_statusdir()', 'EXECUTE')")).scalar_one():
        count, oldest = connection.execute(text(
            "SELECT count(*), min(modification) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'")).one()
        return int(count), oldest
    last = stats.last_archived_wal if stats is not None else None
    if not last or not _SEGMENT.match(last):
        return None, None  # nothing archived yet, or a timeline history file
    try:
        with connection.begin_nested():
            current, size = connection.execute(text(
                "SELECT pg_walfile_name(pg_current_wal_lsn()), "
                "(SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size')")).one()
    except DBAPIError:
        return None, None  # a standby in recovery: no current WAL position of its own
    return max(segment_number(current, size) - segment_number(last, size) - 1, 0), None


_SEGMENT = re.compile(r"^[0-9A-F]{24}")


def segment_number(wal_file: str, segment_size: int) -> int:
    """A WAL file name's segment number (the timeline left out): log * segments per log + segment."""
    return int(wal_file[8:16], 16) * (0x1_0000_0000 // segment_size) + int(wal_file[16:24], 16)
