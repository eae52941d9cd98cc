"""Sessions: created at sign-in, checked (and slid) on every command, ended at logout.

The session token is ``secrets.token_urlsafe(32)`` (256 bits); the database
keeps only its SHA-256 in ``sessions.session_token``.

Two limits, with the columns the seed gives us (there is no last-seen column):

* ``expires_at`` is the sliding **idle** deadline. Every successful check moves
  it to ``min(now + idle, created_at + max)``.
* ``created_at + session_max_hours`` is the **absolute** end, active or not.

A session is over when the server clock is past either, when it was ended
(``deleted_at`` set: logout, revoke, user deactivated) or when its user is no
longer active. Times are naive UTC from the database server's clock.
"""

from __future__ import annotations

import logging
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from sqlalchemy import select, update

from carecli.config import Settings
from carecli.data.actor import Actor, Channel
from carecli.data.databases import Databases
from carecli.data.models.identity import Session as SessionTable
from carecli.data.records import Session, User
from carecli.data.repositories.identity import IdentityUnitOfWork
from carecli.services.auth.session_rules import SessionProblem as SessionProblem
from carecli.services.auth.session_rules import absolute_end as absolute_end
from carecli.services.auth.session_rules import idle_limit as idle_limit
from carecli.services.auth.session_rules import lifetime_limit as lifetime_limit
from carecli.services.auth.session_rules import next_deadline as next_deadline
from carecli.services.auth.session_rules import session_problem as session_problem
from carecli.services.auth.tokens import database_now, hash_secret

log = logging.getLogger("carecli.auth")

SESSION_TOKEN_BYTES = 32
SESSIONS = SessionTable.__table__

SessionStatus = Literal["active", "expired", "ended"]


def new_session_token() -> str:
    """A fresh 256-bit session token (URL-safe text)."""
    return secrets.token_urlsafe(SESSION_TOKEN_BYTES)


def session_status(session: Session, now: datetime, settings: Settings) -> SessionStatus:
    problem = session_problem(session, now, settings)
    if problem is None:
        return "active"
    return "ended" if problem == "ended" else "expired"


def find_session(uow: IdentityUnitOfWork, raw_token: str) -> Session | None:
    """The session a presented token belongs to, ended ones included (to say *why* it is refused)."""
    row = uow.connection.execute(
        select(SESSIONS).where(SESSIONS.c.session_token == hash_secret(raw_token))).first()
    return uow.sessions.to_record(row) if row else None


def slide(uow: IdentityUnitOfWork, session: Session, now: datetime, settings: Settings) -> datetime:
    """Push the idle deadline on after activity; returns it.

    Not audited: it is a heartbeat, not a change anyone made, and one audit
    row per command would drown the log. Sign-in and sign-out are audited.
    """
    deadline = next_deadline(session, now, settings)
    uow.connection.execute(update(SESSIONS).where(SESSIONS.c.id == session.id, SESSIONS.c.deleted_at.is_(None))
                           .values(expires_at=deadline))
    return deadline


def start_session(uow: IdentityUnitOfWork, user: User, settings: Settings) -> tuple[str, Session]:
    """Create a session for ``user`` in ``uow`` (audited there); returns the raw token and the row.

    The unit of work's actor must be the user: its IP and user agent are recorded.
    """
    token = new_session_token()
    now = database_now(uow.connection)
    expires = min(now + idle_limit(settings), now + lifetime_limit(settings))
    session = uow.sessions.create(user.id, hash_secret(token), expires, uow.actor.ip_address, uow.actor.user_agent)
    return token, session


def end_session(databases: Databases, raw_token: str, *, channel: Channel) -> Session | None:
    """End the live session behind ``raw_token`` on the server (logout); None if it was already over.

    Works for an expired session too: logging out must always be possible.
    """
    with IdentityUnitOfWork(databases.identity, databases.platform, Actor.system(channel)) as probe:
        session = find_session(probe, raw_token)
    if session is None or session.deleted_at is not None or session.user_id is None:
        return None
    owner = Actor.create(session.user_id, (), channel=channel)
    with IdentityUnitOfWork(databases.identity, databases.platform, owner) as uow:
        ended = uow.sessions.revoke(session.id)
        uow.commit()
    log.info("signed out", extra={"user_id": str(session.user_id), "session_id": str(session.id), "channel": channel})
    return ended


# -- listing and revoking ------------------------------------------------------------


@dataclass(frozen=True)
class SessionInfo:
    """A session as shown to people: never its token or hash."""

    id: uuid.UUID
    user_id: uuid.UUID | None
    created_at: datetime | None
    idle_deadline: datetime
    ends_at: datetime
    ip_address: str | None
    user_agent: str | None
    status: SessionStatus
    current: bool = False


def session_info(session: Session, now: datetime, settings: Settings, *,
                 current_id: uuid.UUID | None = None) -> SessionInfo:
    return SessionInfo(id=session.id, user_id=session.user_id, created_at=session.created_at,
                       idle_deadline=session.expires_at, ends_at=absolute_end(session, settings),
                       ip_address=session.ip_address, user_agent=session.user_agent,
                       status=session_status(session, now, settings), current=session.id == current_id)


def list_sessions(databases: Databases, settings: Settings, actor: Actor, *, user_id: uuid.UUID | None = None,
                  include_over: bool = False, current_id: uuid.UUID | None = None) -> list[SessionInfo]:
    """A user's sessions, newest first (the actor's own by default; others' need users:admin).

    Without ``include_over`` only active sessions are listed.
    """
    owner = user_id or actor.user_id
    assert owner is not None, "a signed-in actor is needed"
    with IdentityUnitOfWork(databases.identity, databases.platform, actor) as uow:
        now = database_now(uow.connection)
        sessions = uow.sessions.for_user(owner, include_deleted=include_over)
    infos = [session_info(s, now, settings, current_id=current_id) for s in sessions]
    return infos if include_over else [info for info in infos if info.status == "active"]


def revoke_session(databases: Databases, settings: Settings, actor: Actor, session_id: uuid.UUID) -> SessionInfo:
    """End a session by id (one's own, or anyone's with users:admin); audited."""
    with IdentityUnitOfWork(databases.identity, databases.platform, actor) as uow:
        session = uow.sessions.revoke(session_id)
        now = database_now(uow.connection)
        uow.commit()
    return session_info(session, now, settings)

