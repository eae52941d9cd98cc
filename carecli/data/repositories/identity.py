"""Identity repositories: roles, users, tokens and sessions.

Their audit rows go to the platform database's ``audit_logs``: the identity
database has none. Two databases cannot share a transaction, so the
:class:`IdentityUnitOfWork` commits the audit rows first and the identity
change second. If the second commit fails, an audit row describes a change
that did not happen; the reverse (a change without its audit row) cannot.

Deferral mode (``defer_platform=True``, used by user deactivation and
reactivation): when the platform database cannot be reached, the identity
change still goes ahead and its audit rows are recorded, in the same
identity transaction, in ``pending_platform_changes``; ``carecli sync``
writes them to ``audit_logs`` later (with their original ids and times), so
the audit trail is completed, never lost.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any

from sqlalchemy import Connection, Engine, Insert, func, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import InterfaceError, OperationalError

from carecli.data import audit
from carecli.data.actor import Actor
from carecli.data.ids import new_id
from carecli.data.models.identity import PENDING_CHANGE_KINDS
from carecli.data.models.identity import PendingPlatformChange as PendingTable
from carecli.data.models.identity import Role as RoleTable
from carecli.data.models.identity import Session as SessionTable
from carecli.data.models.identity import Token as TokenTable
from carecli.data.models.identity import User as UserTable
from carecli.data.permissions import ALL_PERMISSIONS, Permission
from carecli.data.records import Role, Session, Token, User
from carecli.data.repositories.base import CLOCK_NOW, Repository
from carecli.data.validation import check_email
from carecli.errors import CarecliError, DatabaseUnavailable, NotFound, PermissionDenied, ValidationError

NIL = uuid.UUID(int=0)


class IdentityUnitOfWork:
    """Transactions on the identity database (changes) and the platform database (their audit rows)."""

    def __init__(self, identity: Engine, platform: Engine, actor: Actor, *, defer_platform: bool = False) -> None:
        if actor is None:
            raise CarecliError("no actor: every read and write needs a signed-in user or an API token")
        self.identity_engine = identity
        self.platform_engine = platform
        self.actor = actor
        self._connection: Connection | None = None
        self._audit: Connection | None = None
        self._committed = False
        self.user_exists = None
        #: deferral mode: go ahead without the platform database when it is unreachable
        self.defer_platform = defer_platform
        #: true once the platform database was found unreachable (audit rows are being deferred)
        self.platform_deferred = False
        #: the driver's one-line reason the platform database was unreachable
        self.deferral_reason: str | None = None
        #: the user deferred rows are filed under (``pending_platform_changes.user_id``)
        self.pending_subject: uuid.UUID | None = None

    def __enter__(self) -> IdentityUnitOfWork:
        self._connection = self.identity_engine.connect()
        self._connection.begin()
        if not self.defer_platform:
            self._audit = self.platform_engine.connect()
            self._audit.begin()
            return self
        try:
            self._audit = self.platform_engine.connect()
            self._audit.begin()
        except (OperationalError, InterfaceError) as exc:
            from carecli.data.databases import describe_dbapi_error  # not at import time: databases imports migrate

            self._audit = None
            self.platform_deferred = True
            self.deferral_reason = describe_dbapi_error(exc)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            if not self._committed:
                for connection in (self._audit, self._connection):
                    if connection is not None:
                        connection.rollback()
        finally:
            for connection in (self._audit, self._connection):
                if connection is not None:
                    connection.close()
            self._connection = self._audit = None

    @property
    def connection(self) -> Connection:
        if self._connection is None:
            raise CarecliError("the unit of work is not open: use it in a `with` block")
        return self._connection

    @property
    def audit_connection(self) -> Connection:
        if self.platform_deferred:
            # Quacks like a Connection for audit.write(): the rows land in pending_platform_changes.
            return _DeferredAudit(self)  # type: ignore[return-value]  # duck-typed for audit.write()
        if self._audit is None:
            raise CarecliError("the unit of work is not open: use it in a `with` block")
        return self._audit

    def commit(self) -> None:
        """Audit rows first, then the identity change (see the module docstring)."""
        if not self.platform_deferred:
            self.audit_connection.commit()
        self.connection.commit()
        self._committed = True

    def audit_actor(self, entity_type: str, entity_id: uuid.UUID | None, values: Any = None) -> Actor:
        """Who an audit row names: identity rows are never about a member, so never under an emergency grant."""
        return self.actor

    def audit_denial(self, entity_type: str, entity_id: uuid.UUID | None, operation: str, permission: str) -> None:
        values = {"operation": operation, "permission": str(permission)}
        if self.platform_deferred:
            # Committed on its own, like a denial written to audit_logs: the caller's transaction rolls back.
            row = audit.audit_row(self.actor, entity_type, entity_id or NIL, "deny", None, values)
            with self.identity_engine.begin() as connection:
                record_pending(connection, "audit", self.pending_subject, deferred_audit_payload(row))
            return
        audit.write_committed(self.platform_engine, self.actor, entity_type, entity_id or NIL, "deny", values)

    @property
    def roles(self) -> RoleRepository:
        return RoleRepository(self)  # type: ignore[arg-type]  # has what Repository uses of a unit of work

    @property
    def users(self) -> UserRepository:
        return UserRepository(self)  # type: ignore[arg-type]  # has what Repository uses of a unit of work

    @property
    def tokens(self) -> TokenRepository:
        return TokenRepository(self)  # type: ignore[arg-type]  # has what Repository uses of a unit of work

    @property
    def sessions(self) -> SessionRepository:
        return SessionRepository(self)  # type: ignore[arg-type]  # has what Repository uses of a unit of work

    @property
    def pending(self) -> PendingChangeRepository:
        return PendingChangeRepository(self)


class RoleRepository(Repository[Role]):
    table = RoleTable.__table__
    record_type = Role
    entity_type = "role"
    read_permission = None
    write_permission = Permission.USERS_ADMIN

    def validate(self, values: Mapping[str, Any], current: Mapping[str, Any] | None) -> None:
        permissions = values.get("permissions")
        if permissions is None:
            return
        if not isinstance(permissions, list) or not all(isinstance(p, str) for p in permissions):
            raise ValidationError("permissions", "type", "must be a list of permission names")
        unknown = sorted(set(permissions) - ALL_PERMISSIONS)
        if unknown:
            raise ValidationError("permissions", "enum", f"unknown permissions: {', '.join(unknown)}")

    def list(self, *, include_deleted: bool = False) -> list[Role]:
        return self._list(self._select(include_deleted).order_by(self.table.c.name))

    def by_name(self, name: str) -> Role:
        row = self.connection.execute(self._select().where(self.table.c.name == name)).first()
        if row is None:
            raise NotFound(f"there is no role named {name!r}")
        return self.to_record(row)

    def create(self, name: str, permissions: Iterable[str], description: str | None = None) -> Role:
        return self._insert({"name": name, "permissions": sorted(set(permissions)), "description": description},
                            operation="create roles")

    def update(self, role_id: uuid.UUID, expected_updated_at: datetime | None, changes: Mapping[str, Any]) -> Role:
        return self._update(role_id, expected_updated_at, changes, operation="edit roles")


class UserRepository(Repository[User]):
    table = UserTable.__table__
    record_type = User
    entity_type = "user"
    read_permission = None
    write_permission = Permission.USERS_ADMIN
    protected = Repository.protected | {"last_login_at"}

    def validate(self, values: Mapping[str, Any], current: Mapping[str, Any] | None) -> None:
        check_email(values.get("email"))
        for field in ("email", "external_user_id"):
            value = values.get(field)
            if value is None or (current is not None and current.get(field) == value):
                continue
            column = self.table.c[field]
            # E-mail addresses differing only in case are the same mailbox.
            matches = func.lower(column) == value.lower() if field == "email" else column == value
            clash = self.connection.execute(select(self.table.c.id).where(matches)).first()
            if clash is not None:
                what = "e-mail address" if field == "email" else "identity provider id"
                raise ValidationError(field, "unique", f"another user already has this {what}")

    def get(self, user_id: uuid.UUID, *, include_deleted: bool = False) -> User:
        if user_id != self.uow.actor.user_id:
            self.require(Permission.USERS_ADMIN, "look up other users", user_id)
        return self.to_record(self._fetch(user_id, include_deleted=include_deleted))

    def by_external_id(self, external_user_id: str) -> User | None:
        """For sign-in: the user behind an identity provider's subject (deleted users included)."""
        row = self.connection.execute(
            select(self.table).where(self.table.c.external_user_id == external_user_id)).first()
        return self.to_record(row) if row else None

    def id_by_email(self, email: str, *, include_deleted: bool = False) -> uuid.UUID | None:
        """The id of the user with ``email``, case-insensitively (callers check who may look)."""
        statement = self._select(include_deleted).with_only_columns(self.table.c.id).where(
            func.lower(self.table.c.email) == email.strip().lower())
        return self.connection.execute(statement).scalar_one_or_none()

    def display_names(self, user_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, str]:
        """Staff names for ids seen in the audit log or on records ("First Last <email>")."""
        ids = {user_id for user_id in user_ids if user_id is not None}
        if not ids:
            return {}
        c = self.table.c
        rows = self.connection.execute(select(c.id, c.first_name, c.last_name, c.email).where(c.id.in_(ids)))
        return {row.id: " ".join(part for part in (row.first_name, row.last_name) if part) or row.email
                for row in rows}

    def list(self, *, include_deleted: bool = False) -> list[User]:
        self.require(Permission.USERS_ADMIN, "list users")
        return self._list(self._select(include_deleted).order_by(self.table.c.email))

    def permissions_of(self, user: User) -> frozenset[str]:
        """The user's role permissions (none for no role or a deleted role)."""
        if user.role_id is None:
            return frozenset()
        row = self.connection.execute(select(RoleTable.__table__.c.permissions).where(
            RoleTable.__table__.c.id == user.role_id, RoleTable.__table__.c.deleted_at.is_(None))).first()
        return frozenset(row.permissions or []) if row else frozenset()

    def create(self, values: Mapping[str, Any]) -> User:
        self._check_role(values.get("role_id"))
        return self._insert(values, operation="add users")

    def update(self, user_id: uuid.UUID, expected_updated_at: datetime | None, changes: Mapping[str, Any]) -> User:
        self._check_role(changes.get("role_id"))
        return self._update(user_id, expected_updated_at, changes, operation="edit users")

    def record_login(self, user_id: uuid.UUID) -> None:
        """Stamp ``last_login_at`` (part of signing in, so no users:admin needed)."""
        self.connection.execute(update(self.table).where(self.table.c.id == user_id)
                                .values(last_login_at=CLOCK_NOW))
        audit.write(self.uow.audit_connection, self.uow.actor, "user", user_id, "login")

    def deactivate(self, user_id: uuid.UUID, expected_updated_at: datetime | None) -> User:
        """Deactivate a user and revoke their sessions and tokens (the specialist side is the caller's)."""
        user = self._update(user_id, expected_updated_at, {"is_active": False}, operation="deactivate users",
                            action="deactivate")
        SessionRepository(self.uow).revoke_all_for(user_id)
        TokenRepository(self.uow).revoke_all_for(user_id)
        return user

    def _check_role(self, role_id: uuid.UUID | None) -> None:
        if role_id is None:
            return
        found = self.connection.execute(select(RoleTable.__table__.c.id).where(
            RoleTable.__table__.c.id == role_id, RoleTable.__table__.c.deleted_at.is_(None))).first()
        if found is None:
            raise ValidationError("role_id", "reference", "no live role has this id")


class _OwnedByUser(Repository[Any]):
    """Tokens and sessions: users manage their own; users:admin manages anyone's."""

    def _require_owner_or_admin(self, owner_id: uuid.UUID | None, operation: str, entity_id: uuid.UUID) -> None:
        if owner_id != self.uow.actor.user_id:
            self.require(Permission.USERS_ADMIN, operation, entity_id)

    def for_user(self, user_id: uuid.UUID, *, include_deleted: bool = False) -> list[Any]:
        if user_id != self.uow.actor.user_id:
            self.require(Permission.USERS_ADMIN, f"list other users' {self.entity_type}s")
        return self._list(self._select(include_deleted).where(self.table.c.user_id == user_id)
                          .order_by(self.table.c.created_at.desc()))


class TokenRepository(_OwnedByUser):
    table = TokenTable.__table__
    record_type = Token
    entity_type = "token"
    read_permission = None
    write_permission = None

    def create(self, user_id: uuid.UUID, token_type: str, token_hash: str, expires_at: datetime,
               scopes: list[str] | None = None) -> Token:
        """Store a token's hash (never the token) for ``user_id``."""
        if user_id != self.uow.actor.user_id:
            self.require(Permission.USERS_ADMIN, "create tokens for other users")
        if scopes is not None:
            unknown = sorted(set(scopes) - ALL_PERMISSIONS)
            if unknown:
                raise ValidationError("scopes", "enum", f"unknown scopes: {', '.join(unknown)}")
        return self._insert({"user_id": user_id, "token_type": token_type, "token_hash": token_hash,
                             "expires_at": expires_at, "scopes": scopes}, operation="create tokens")

    def by_hash(self, token_hash: str) -> Token | None:
        row = self.connection.execute(self._select().where(self.table.c.token_hash == token_hash)).first()
        return self.to_record(row) if row else None

    def live_of_type(self, token_type: str, now: datetime, token_hash: str | None = None) -> list[Token]:
        """Unrevoked, unexpired ``token_type`` tokens (with this hash, if given), oldest first."""
        table = self.table
        statement = self._select().where(table.c.token_type == token_type, table.c.is_revoked.is_not(True),
                                         table.c.expires_at > now)
        if token_hash is not None:
            statement = statement.where(table.c.token_hash == token_hash)
        return self._list(statement.order_by(table.c.created_at))

    def ssh_fingerprints(self, token_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, str]:
        """The fingerprints of these SSH-key tokens (their ``token_hash``: a public key's fingerprint is no secret).

        Records never carry ``token_hash``; for API tokens it is the hash of a secret.
        """
        ids = list(token_ids)
        if not ids:
            return {}
        table = self.table
        rows = self.connection.execute(select(table.c.id, table.c.token_hash).where(
            table.c.id.in_(ids), table.c.token_type == "ssh_key")).all()
        return {row.id: row.token_hash for row in rows}

    def of_type(self, token_type: str, token_hash: str) -> Token | None:
        """The ``token_type`` token with this hash: the live one if there is one, else the newest ended one."""
        table = self.table
        row = self.connection.execute(self._select(include_deleted=True).where(
            table.c.token_type == token_type, table.c.token_hash == token_hash)
            .order_by((table.c.is_revoked.is_(True) | table.c.deleted_at.is_not(None)), table.c.created_at.desc())
        ).first()
        return self.to_record(row) if row else None

    def revoke(self, token_id: uuid.UUID) -> Token:
        row = self._fetch(token_id)
        self._require_owner_or_admin(row.user_id, "revoke other users' tokens", token_id)
        return self._update(token_id, None, {}, operation="revoke tokens", action="revoke",
                            internal={"is_revoked": True})

    def revoke_all_for(self, user_id: uuid.UUID) -> int:
        rows = self.connection.execute(self._select().where(
            self.table.c.user_id == user_id, self.table.c.is_revoked.is_not(True))).all()
        for row in rows:
            self.revoke(row.id)
        return len(rows)


class SessionRepository(_OwnedByUser):
    table = SessionTable.__table__
    record_type = Session
    entity_type = "session"
    read_permission = None
    write_permission = None

    def create(self, user_id: uuid.UUID, session_token_hash: str, expires_at: datetime,
               ip_address: str | None, user_agent: str | None) -> Session:
        """Store a session by the hash of its token (the raw token stays with the user)."""
        if user_id != self.uow.actor.user_id:
            self.require(Permission.USERS_ADMIN, "create sessions for other users")
        return self._insert({"user_id": user_id, "session_token": session_token_hash, "expires_at": expires_at,
                             "ip_address": ip_address, "user_agent": user_agent}, operation="create sessions")

    def by_token_hash(self, session_token_hash: str) -> Session | None:
        row = self.connection.execute(
            self._select().where(self.table.c.session_token == session_token_hash)).first()
        return self.to_record(row) if row else None

    def revoke(self, session_id: uuid.UUID) -> Session:
        """End a session (soft delete: the row stays for the record)."""
        row = self._fetch(session_id)
        self._require_owner_or_admin(row.user_id, "revoke other users' sessions", session_id)
        return self._update(session_id, None, {}, operation="revoke sessions", action="revoke",
                            internal={"deleted_at": CLOCK_NOW})

    def revoke_all_for(self, user_id: uuid.UUID) -> int:
        rows = self.connection.execute(self._select().where(self.table.c.user_id == user_id)).all()
        for row in rows:
            self.revoke(row.id)
        return len(rows)


# -- deferral mode ------------------------------------------------------------


@dataclass(frozen=True)
class PendingChange:
    """One platform-side change an identity change still owes (or owed: ``done_at`` set)."""

    id: uuid.UUID
    kind: str
    user_id: uuid.UUID | None
    payload: Any
    created_at: datetime
    attempts: int
    last_error: str | None
    done_at: datetime | None


PENDING = PendingTable.__table__


def deferred_audit_payload(row: Mapping[str, Any]) -> dict[str, Any]:
    """An audit row (from :func:`audit.audit_row`, values already redacted) as JSON for later."""
    return {name: (str(value) if isinstance(value, uuid.UUID) else value) for name, value in row.items()}


def record_pending(connection: Connection, kind: str, user_id: uuid.UUID | None,
                   payload: Mapping[str, Any]) -> uuid.UUID:
    """Insert one pending change in the caller's identity transaction; returns its id."""
    if kind not in PENDING_CHANGE_KINDS:
        raise ValueError(f"unknown pending change kind {kind!r}")
    change_id = new_id()
    # clock_timestamp(): rows of one transaction must replay in the order they were written.
    connection.execute(insert(PENDING).values(id=change_id, kind=kind, user_id=user_id, payload=dict(payload),
                                              created_at=CLOCK_NOW))
    return change_id


class _DeferredAudit:
    """Stands in for the platform connection while it is unreachable: audit rows become pending changes."""

    def __init__(self, uow: IdentityUnitOfWork) -> None:
        self.uow = uow

    def execute(self, statement: Any, parameters: list[Mapping[str, Any]] | Mapping[str, Any] | None = None) -> None:
        if getattr(statement, "table", None) is not audit.AUDIT or not isinstance(statement, Insert):
            # Anything else needs the real platform database (check uow.platform_deferred before trying).
            raise DatabaseUnavailable("the platform database is unreachable: only audit rows can wait for it",
                                      hint="run the command again once the platform database is back")
        if parameters is None:
            raise CarecliError("a deferred audit row needs its values as parameters")
        rows = [parameters] if isinstance(parameters, Mapping) else parameters
        for row in rows:
            record_pending(self.uow.connection, "audit", self.uow.pending_subject, deferred_audit_payload(row))


def replay_deferred_audit(platform: Connection, change: PendingChange) -> bool:
    """Write a deferred audit row to ``audit_logs`` with its original id and time.

    Idempotent: a row already written (a replay whose ``done_at`` stamp was
    lost) is left alone. Returns whether a row was inserted.
    """
    values = dict(change.payload)
    values["created_at"] = change.created_at
    for name in ("id", "user_id", "entity_id"):
        if values.get(name) is not None:
            values[name] = uuid.UUID(str(values[name]))
    statement = pg_insert(audit.AUDIT).values(values).on_conflict_do_nothing(index_elements=["id"])
    return platform.execute(statement).rowcount == 1


class PendingChangeRepository:
    """``pending_platform_changes``: bookkeeping of the deferral mode.

    Reading and settling them is part of managing users (``users:admin``);
    writing them happens inside the identity change that owes them.
    """

    entity_type = "pending_platform_change"

    def __init__(self, uow: IdentityUnitOfWork) -> None:
        self.uow = uow

    def _require_admin(self, operation: str) -> None:
        if not self.uow.actor.can(Permission.USERS_ADMIN):
            self.uow.audit_denial(self.entity_type, None, operation, Permission.USERS_ADMIN)
            role = self.uow.actor.role or "this user"
            raise PermissionDenied(f"{role} may not {operation}: it needs the '{Permission.USERS_ADMIN}' permission")

    def record(self, kind: str, user_id: uuid.UUID | None, payload: Mapping[str, Any]) -> uuid.UUID:
        """Record a platform change this unit of work's identity change owes."""
        self._require_admin("record platform changes")
        return record_pending(self.uow.connection, kind, user_id, payload)

    def open(self, *, user_id: uuid.UUID | None = None, lock: bool = False) -> list[PendingChange]:
        """Changes not yet applied, oldest first; ``lock`` skips rows another sync holds."""
        self._require_admin("read pending platform changes")
        statement = select(PENDING).where(PENDING.c.done_at.is_(None)).order_by(PENDING.c.created_at, PENDING.c.id)
        if user_id is not None:
            statement = statement.where(PENDING.c.user_id == user_id)
        if lock:
            statement = statement.with_for_update(skip_locked=True)
        return [PendingChange(**row._mapping) for row in self.uow.connection.execute(statement)]

    def lock_open(self, change_id: uuid.UUID) -> PendingChange | None:
        """Lock one change for applying it; None when it is done or another sync holds it."""
        self._require_admin("apply pending platform changes")
        row = self.uow.connection.execute(
            select(PENDING).where(PENDING.c.id == change_id, PENDING.c.done_at.is_(None))
            .with_for_update(skip_locked=True)).first()
        return PendingChange(**row._mapping) if row else None

    def mark_done(self, change_id: uuid.UUID) -> None:
        self._require_admin("apply pending platform changes")
        self.uow.connection.execute(update(PENDING).where(PENDING.c.id == change_id).values(
            done_at=CLOCK_NOW, attempts=PENDING.c.attempts + 1, last_error=None))

    def mark_failed(self, change_id: uuid.UUID, reason: str) -> None:
        self._require_admin("apply pending platform changes")
        self.uow.connection.execute(update(PENDING).where(PENDING.c.id == change_id).values(
            attempts=PENDING.c.attempts + 1, last_error=reason[:1000]))
