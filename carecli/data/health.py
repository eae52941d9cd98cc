"""Read-only probes of a database server for ``carecli doctor``: catalogs and server state, no data rows.

Each function takes an open connection and returns plain facts; judging them
(pass, warn, fail) is the doctor service's job (carecli/services/doctor.py).
None of these reads touch member data, so none is audited.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, text

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
