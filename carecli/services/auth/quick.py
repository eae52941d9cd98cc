"""``carecli whoami`` on the embedded database without SQLAlchemy: the happy path only, in a third of the time.

A session check through the engines, the models and the units of work costs 0.3-0.4 s of imports before
the first query. Where the answer is plainly yes (the embedded server is running and ready, both
databases are at this carecli's revisions, the stored session and its user are live) this module
gives it with psycopg alone, by the same rules (:mod:`carecli.services.auth.session_rules`), and
slides the session's idle deadline as every check does. Anything else, however small (no session,
a refusal to audit, a server to start or migrate, configured servers with their TLS and pool
settings, ``CARECLI_TOKEN``, any error), answers None before anything is written, and the caller
takes the full path, which decides, audits and explains as always.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from carecli.config import Settings
from carecli.data.embedded import EMBEDDED_DATABASE_NAMES, ready_server
from carecli.data.records import User
from carecli.data.revisions import HEADS, MINIMUM_SERVER_VERSION, VERSION_TABLES
from carecli.services.auth.credentials import CredentialStore
from carecli.services.auth.session_rules import (
    absolute_end,
    hash_secret,
    next_deadline,
    session_problem,
    user_problem,
)

log = logging.getLogger("carecli.auth")



@dataclass(frozen=True)
class _SessionRow:
    id: uuid.UUID
    user_id: uuid.UUID | None
    created_at: datetime | None
    expires_at: datetime
    deleted_at: datetime | None


@dataclass(frozen=True)
class QuickWho:
    """What ``whoami`` prints, as the full path would have found it."""

    user: User
    role: str | None
    permissions: frozenset[str]
    session_id: uuid.UUID
    idle_deadline: datetime
    ends_at: datetime
    store: str


def quick_whoami(settings: Settings) -> QuickWho | None:
    """The signed-in user and session, checked and slid, or None: take the full path."""
    if settings.api_token or not settings.embedded:
        return None
    try:
        store = CredentialStore.for_settings(settings)
        raw = store.load()
        server = ready_server(settings.data_dir) if raw else None
        if raw is None or server is None:
            return None
        return check(settings, store, raw, lambda database: _embedded(server, database))
    except Exception as exc:  # noqa: BLE001 - whatever it was, the full path meets it again and says it
        log.debug("quick session check gave way to the full one", extra={"reason": type(exc).__name__})
        return None


def _embedded(server: tuple[str, int], database: str) -> Any:
    import psycopg

    host, port = server
    return psycopg.connect(host=host, port=port, user="postgres", dbname=EMBEDDED_DATABASE_NAMES[database],
                           connect_timeout=5)


def _at_head(connection: Any, database: str) -> bool:
    """Whether ``connection``'s server is recent enough and its database at this carecli's revision."""
    row = connection.execute(f'SELECT version_num FROM "{VERSION_TABLES[database]}" LIMIT 1').fetchone()
    connection.rollback()
    return connection.info.server_version >= MINIMUM_SERVER_VERSION and row is not None and row[0] == HEADS[database]


def check(settings: Settings, store: CredentialStore, raw: str,
          connect: Callable[[str], Any]) -> QuickWho | None:
    """The quick check of the stored session ``raw`` on the databases ``connect`` opens (psycopg connections,
    by database name), or None with nothing written when anything but a live session of a live user is found."""
    with connect("platform") as platform:  # the full path refuses a platform database not at head too
        if not _at_head(platform, "platform"):
            return None
    with connect("identity") as connection:
        if not _at_head(connection, "identity"):
            return None
        now = connection.execute("SELECT clock_timestamp() AT TIME ZONE 'UTC'").fetchone()[0]
        found = connection.execute("SELECT id, user_id, created_at, expires_at, deleted_at FROM sessions "
                                   "WHERE session_token = %s", (hash_secret(raw),)).fetchone()
        if found is None:
            return None
        session = _SessionRow(*found)
        if session.created_at is None or session_problem(session, now, settings) is not None:
            return None
        row = connection.execute(
            "SELECT id, external_user_id, email, first_name, last_name, role_id, is_active, last_login_at, "
            "deleted_at, created_at, updated_at FROM users WHERE id = %s", (session.user_id,)).fetchone()
        user = User(*row) if row is not None else None
        if user is None or user_problem(user) is not None:
            return None
        role, permissions = None, frozenset[str]()
        if user.role_id is not None:
            live = connection.execute("SELECT name, permissions FROM roles WHERE id = %s AND deleted_at IS NULL",
                                      (user.role_id,)).fetchone()
            if live is not None:
                role, permissions = live[0], frozenset(live[1] or [])
        deadline = next_deadline(session, now, settings)
        connection.execute("UPDATE sessions SET expires_at = %s WHERE id = %s AND deleted_at IS NULL",
                           (deadline, session.id))
        connection.commit()
    return QuickWho(user, role, permissions, session.id, deadline, absolute_end(session, settings), store.describe())
