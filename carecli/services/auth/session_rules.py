"""How a token is stored, when a session may be used and how far activity moves its idle deadline: no database.

Shared by :mod:`carecli.services.auth.sessions` (with SQLAlchemy) and the quick ``carecli whoami``
(:mod:`carecli.services.auth.quick`, with psycopg alone), so both judge a session by the same rules.
Times are naive UTC from the database server's clock.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    from carecli.config import Settings
    from carecli.data.records import User

#: why a presented session is not accepted
SessionProblem = Literal["ended", "idle", "lifetime"]


class SessionTimes(Protocol):
    @property
    def created_at(self) -> datetime | None: ...

    @property
    def expires_at(self) -> datetime: ...

    @property
    def deleted_at(self) -> datetime | None: ...


def hash_secret(secret: str) -> str:
    """The SHA-256 hex digest stored in place of a session or API token.

    A plain hash is enough (no salt, no slow KDF): the tokens are 256-bit
    random strings, not guessable passwords, and lookups must be by hash.
    """
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def idle_limit(settings: Settings) -> timedelta:
    return timedelta(minutes=settings.session_idle_minutes)


def lifetime_limit(settings: Settings) -> timedelta:
    return timedelta(hours=settings.session_max_hours)


def absolute_end(session: SessionTimes, settings: Settings) -> datetime:
    """When the session ends however active it is."""
    assert session.created_at is not None
    return session.created_at + lifetime_limit(settings)


def next_deadline(session: SessionTimes, now: datetime, settings: Settings) -> datetime:
    """The idle deadline after activity at ``now``: ``min(now + idle, created_at + max)``."""
    return min(now + idle_limit(settings), absolute_end(session, settings))


def session_problem(session: SessionTimes, now: datetime, settings: Settings) -> SessionProblem | None:
    """Why the session cannot be used at ``now`` (None when it can)."""
    if session.deleted_at is not None:
        return "ended"
    if now > absolute_end(session, settings):
        return "lifetime"
    if now > session.expires_at:
        return "idle"
    return None


def user_problem(user: User | None) -> str | None:
    """Why this user may not act (None when they may): missing, removed or deactivated."""
    if user is None:
        return "user_missing"
    if user.deleted_at is not None:
        return "user_deleted"
    if user.is_active is False:
        return "user_inactive"
    return None
