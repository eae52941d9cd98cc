"""Who is running this command: ``resolve_actor`` turns credentials into an :class:`Actor`.

Order: ``CARECLI_TOKEN`` (an API token, for scripts) first, then the session
stored on this machine by ``carecli login``. Every check is made against the
database on every command, so a revoked token, an ended session or a
deactivated user stops working at the next command. Refusals are audited
(action ``auth_refused``) with the reason and never the secret; the refused
party is unauthenticated, so the audit row's actor is carecli itself
(:meth:`Actor.system`) and the claimed user id is in the values.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import select

from carecli.config import Settings
from carecli.data import audit
from carecli.data.actor import Actor, Channel
from carecli.data.databases import Databases
from carecli.data.models.identity import Role as RoleTable
from carecli.data.models.identity import User as UserTable
from carecli.data.permissions import Permission
from carecli.data.records import User
from carecli.data.repositories.identity import IdentityUnitOfWork
from carecli.errors import AuthError, NotFound
from carecli.services.auth.credentials import CredentialStore
from carecli.services.auth.session_rules import user_problem
from carecli.services.auth.sessions import (
    SessionInfo,
    find_session,
    session_info,
    session_problem,
    slide,
)
from carecli.services.auth.tokens import (
    API_TOKEN_TYPE,
    ApiTokenInfo,
    check_token_format,
    database_now,
    hash_secret,
    token_names,
    token_status,
)

NIL = uuid.UUID(int=0)
LOGIN_HINT = "run `carecli login`"


@dataclass(frozen=True)
class SignedIn:
    """The outcome of :func:`resolve_actor`: the actor to hand to units of work, and how they got here."""

    actor: Actor
    user: User
    via: Literal["session", "token"]
    #: where the session token is kept on this machine (None when signed in via CARECLI_TOKEN)
    store: str | None
    role: str | None = None
    session: SessionInfo | None = None
    token: ApiTokenInfo | None = None


def _audit_refusal(databases: Databases, channel: Channel, entity_type: str, entity_id: uuid.UUID | None,
                   values: Mapping[str, Any], environ: Mapping[str, str] | None) -> None:
    """Record a refused credential in its own committed transaction (it must outlive the error)."""
    audit.write_committed(databases.platform, Actor.system(channel, environ=environ), entity_type,
                          entity_id or NIL, "auth_refused", dict(values))


def load_user(uow: IdentityUnitOfWork, user_id: uuid.UUID | None) -> User | None:
    """A user by id, soft-deleted included, with no permission check (sign-in needs it before there is an actor)."""
    if user_id is None:
        return None
    table = UserTable.__table__
    row = uow.connection.execute(select(table).where(table.c.id == user_id)).first()
    return uow.users.to_record(row) if row else None


def user_by_email(databases: Databases, actor: Actor, email: str) -> User:
    """The live or removed user with ``email`` (case-insensitive); others than oneself need users:admin."""
    with IdentityUnitOfWork(databases.identity, databases.platform, actor) as uow:
        found = uow.users.id_by_email(email, include_deleted=True)
        if found is None:
            if not actor.can(Permission.USERS_ADMIN):
                # Do not let non-admins probe which addresses have accounts.
                uow.users.require(Permission.USERS_ADMIN, "look up other users")
            raise NotFound(f"there is no user with the e-mail address {email.strip()}")
        return uow.users.get(found, include_deleted=True)


def role_of(uow: IdentityUnitOfWork, user: User) -> tuple[str | None, frozenset[str]]:
    """The user's live role name and its permissions (none when the role is missing or deleted)."""
    permissions = uow.users.permissions_of(user)
    if user.role_id is None:
        return None, permissions
    table = RoleTable.__table__
    name = uow.connection.execute(select(table.c.name).where(
        table.c.id == user.role_id, table.c.deleted_at.is_(None))).scalar_one_or_none()
    return name, permissions


_USER_MESSAGES = {
    "user_missing": "the user this {what} belongs to no longer exists",
    "user_deleted": "the user this {what} belongs to was removed",
    "user_inactive": "the user this {what} belongs to is deactivated",
}


def resolve_actor(settings: Settings, databases: Databases, *, channel: Channel,
                  environ: Mapping[str, str] | None = None, store: CredentialStore | None = None) -> SignedIn:
    """The signed-in actor for this command, or :class:`AuthError` (exit code 4) saying why not.

    ``CARECLI_TOKEN`` wins over a stored session. A successful session check
    slides the session's idle deadline.
    """
    if settings.api_token:
        return _resolve_token(settings.api_token, databases, channel=channel, environ=environ)
    return _resolve_session(settings, databases, channel=channel, environ=environ,
                            store=store or CredentialStore.for_settings(settings))


def _resolve_token(presented: str, databases: Databases, *, channel: Channel,
                   environ: Mapping[str, str] | None) -> SignedIn:
    try:
        raw = check_token_format(presented)
    except AuthError:
        _audit_refusal(databases, channel, "token", None, {"reason": "malformed", "via": "CARECLI_TOKEN"}, environ)
        raise
    # defer_platform: signing in must not need the platform database (a deactivation has to work while it
    # is down); refusals are audited through the platform engine, which then fails closed.
    with IdentityUnitOfWork(databases.identity, databases.platform, Actor.system(channel, environ=environ),
                            defer_platform=True) as uow:
        now = database_now(uow.connection)
        token = uow.tokens.by_hash(hash_secret(raw))
        if token is None or token.token_type != API_TOKEN_TYPE:
            _audit_refusal(databases, channel, "token", None, {"reason": "unknown", "via": "CARECLI_TOKEN"}, environ)
            raise AuthError("CARECLI_TOKEN is not a token of this installation (unknown or deleted)",
                            hint="check which installation it was created on, or create one with "
                            "`carecli tokens create`")
        status = token_status(token, now)
        if status != "active":
            _audit_refusal(databases, channel, "token", token.id,
                           {"reason": status, "user_id": str(token.user_id)}, environ)
            when = f" on {_show(token.expires_at)} UTC" if status == "expired" else ""
            raise AuthError(f"CARECLI_TOKEN (token {token.id}) was {status}{when}",
                            hint="create a new one with `carecli tokens create`")
        user = load_user(uow, token.user_id)
        problem = user_problem(user)
        if problem is not None:
            _audit_refusal(databases, channel, "token", token.id,
                           {"reason": problem, "user_id": str(token.user_id)}, environ)
            raise AuthError(_USER_MESSAGES[problem].format(what="token") + ", so CARECLI_TOKEN is refused",
                            hint="ask an administrator")
        assert user is not None
        role, permissions = role_of(uow, user)
        name = None if uow.platform_deferred else token_names(uow.audit_connection, [token.id]).get(token.id)
    actor = Actor.create(user.id, permissions, channel=channel, role=role, scopes=token.scopes or [],
                         environ=environ)
    info = ApiTokenInfo(id=token.id, user_id=token.user_id, name=name, scopes=list(token.scopes or []),
                        created_at=token.created_at, expires_at=token.expires_at, status="active")
    return SignedIn(actor=actor, user=user, via="token", store=None, role=role, token=info)


def _resolve_session(settings: Settings, databases: Databases, *, channel: Channel,
                     environ: Mapping[str, str] | None, store: CredentialStore) -> SignedIn:
    raw = store.load()
    if raw is None:
        raise AuthError("not signed in", hint=LOGIN_HINT)
    # defer_platform: signing in must not need the platform database (a deactivation has to work while it
    # is down); refusals are audited through the platform engine, which then fails closed.
    with IdentityUnitOfWork(databases.identity, databases.platform, Actor.system(channel, environ=environ),
                            defer_platform=True) as uow:
        now = database_now(uow.connection)
        session = find_session(uow, raw)
        if session is None:
            store.forget()
            _audit_refusal(databases, channel, "session", None, {"reason": "unknown"}, environ)
            raise AuthError("the session stored on this machine is not known to this installation's database",
                            hint=LOGIN_HINT)
        problem = session_problem(session, now, settings)
        if problem is not None:
            store.forget()
            _audit_refusal(databases, channel, "session", session.id,
                           {"reason": problem, "user_id": str(session.user_id)}, environ)
            raise AuthError(_session_message(problem, settings), hint=LOGIN_HINT)
        user = load_user(uow, session.user_id)
        user_issue = user_problem(user)
        if user_issue is not None:
            store.forget()
            _audit_refusal(databases, channel, "session", session.id,
                           {"reason": user_issue, "user_id": str(session.user_id)}, environ)
            raise AuthError(_USER_MESSAGES[user_issue].format(what="session") + "; you have been signed out",
                            hint="ask an administrator")
        assert user is not None
        role, permissions = role_of(uow, user)
        deadline = slide(uow, session, now, settings)
        uow.commit()
    actor = Actor.create(user.id, permissions, channel=channel, role=role, environ=environ)
    info = replace(session_info(session, now, settings, current_id=session.id), idle_deadline=deadline)
    return SignedIn(actor=actor, user=user, via="session", store=store.describe(), role=role, session=info)


def _session_message(problem: str, settings: Settings) -> str:
    if problem == "idle":
        return f"your session expired after {settings.session_idle_minutes} minutes without activity"
    if problem == "lifetime":
        return f"your session reached its maximum length of {settings.session_max_hours} hours"
    return "your session was ended (signed out, revoked by an administrator, or the account was deactivated)"


def _show(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M")
