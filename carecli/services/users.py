"""Managing who may use carecli: users, roles, and the platform side of a user's status.

The use cases behind ``carecli users``, ``carecli roles`` and ``carecli sync``.
Every change goes through a unit of work carrying the acting admin, so it is
audited; every one needs ``users:admin`` except reading roles (any signed-in
user may see what a role allows) and :func:`bootstrap_admin`, which only works
while no active user holds ``users:admin`` at all.

Deactivating (or reactivating) a user changes two databases: the identity
database (``is_active``, sessions and tokens revoked) and the platform
database (their specialist record, the audit rows). The identity transaction
also records the platform change in ``pending_platform_changes``, then the
change is applied at once. If the platform database is unreachable, the
identity change still happens (access is cut off now), its audit rows wait in
the same table, and ``carecli sync`` applies everything later, in order and
idempotently; the command says so, so nothing is left half-done silently.

Guard rail: no change may leave the installation without an active user
holding ``users:admin`` (deactivating the last admin, moving them to another
role, or taking ``users:admin`` out of the only admin role).
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from carecli.data import audit
from carecli.data.actor import Actor, Channel
from carecli.data.databases import Databases, describe_dbapi_error
from carecli.data.permissions import ALL_PERMISSIONS, DEFAULT_ROLES, Permission
from carecli.data.records import Role, Specialist, User
from carecli.data.repositories.identity import (
    IdentityUnitOfWork,
    PendingChange,
    replay_deferred_audit,
)
from carecli.data.unit_of_work import PlatformUnitOfWork
from carecli.errors import CarecliError, NotFound, PermissionDenied, ValidationError

ADMIN = Permission.USERS_ADMIN
NIL = uuid.UUID(int=0)
ADMIN_ROLE = "admin"
DEACTIVATE_SPECIALIST = "deactivate_specialist"
REACTIVATE_SPECIALIST = "reactivate_specialist"
# What the platform half of a status change may do: find the user's specialist record and set is_active.
_SPECIALIST_STEP_PERMISSIONS = frozenset({str(Permission.MEMBERS_READ), str(Permission.SPECIALISTS_WRITE)})
# pg_advisory_xact_lock key: two bootstraps at once must not both find "no admin yet".
_BOOTSTRAP_LOCK = 7_263_110_101


# -- results -------------------------------------------------------------------------


@dataclass(frozen=True)
class UserSummary:
    """A user and the name of their role (None: no role, or a deleted one)."""

    user: User
    role: str | None


@dataclass(frozen=True)
class UserDetails:
    """Everything ``carecli users show`` tells about a user."""

    user: User
    role: str | None
    permissions: frozenset[str]
    live_sessions: int
    live_tokens: int
    #: the platform specialist record (None: there is none, or it could not be looked at)
    specialist: Specialist | None
    #: why the specialist record is not shown, when it is not (no members:read, platform unreachable)
    specialist_note: str | None
    pending_changes: int


@dataclass(frozen=True)
class SyncResult:
    """What applying pending platform changes did."""

    applied: int = 0
    failed: int = 0
    #: changes still owed after this run (failed ones included)
    remaining: int = 0
    #: one line per failure: the change id, its kind and the reason (never data values)
    errors: tuple[str, ...] = ()
    #: the platform database could not be reached, so the run stopped early
    unreachable: bool = False


@dataclass(frozen=True)
class StatusChange:
    """The outcome of deactivating or reactivating a user."""

    user: User
    #: false when the user already was in the asked-for state (nothing was changed)
    changed: bool
    revoked_sessions: int = 0
    revoked_tokens: int = 0
    #: platform changes still owed for this user (to be applied by ``carecli sync``)
    pending: int = 0
    #: why the platform side was deferred (driver's one-line reason), if it was
    deferral_reason: str | None = None
    sync: SyncResult | None = None

    @property
    def deferred(self) -> bool:
        return self.pending > 0


# -- helpers -------------------------------------------------------------------------


def _require_admin(uow: IdentityUnitOfWork, operation: str, entity_type: str = "user",
                   entity_id: uuid.UUID | None = None) -> None:
    """Raise (and audit) PermissionDenied unless the actor holds users:admin."""
    if uow.actor.can(ADMIN):
        return
    uow.audit_denial(entity_type, entity_id, operation, ADMIN)
    role = uow.actor.role or "this user"
    raise PermissionDenied(f"{role} may not {operation}: it needs the '{ADMIN}' permission")


def parse_permissions(value: str | Iterable[str]) -> list[str]:
    """``"a,b"`` (or a list) as a sorted list of known permission names; unknown ones are refused."""
    names = value.split(",") if isinstance(value, str) else list(value)
    permissions = sorted({name.strip() for name in names if name.strip()})
    unknown = [name for name in permissions if name not in ALL_PERMISSIONS]
    if unknown:
        raise ValidationError("permissions", "enum",
                              f"unknown permissions: {', '.join(unknown)} "
                              f"(known: {', '.join(sorted(ALL_PERMISSIONS))})")
    return permissions


def _normal_email(email: str) -> str:
    return email.strip().lower()


def find_user(uow: IdentityUnitOfWork, ref: str) -> User:
    """A live user by id or e-mail address (case-insensitive); callers have checked users:admin."""
    ref = ref.strip()
    try:
        user_id = uuid.UUID(ref)
    except ValueError:
        user_id = None
    if user_id is not None:
        return uow.users.get(user_id)
    found = uow.users.id_by_email(ref)
    if found is not None:
        return uow.users.get(found)
    raise NotFound(f"there is no user with the e-mail address {ref}", hint="`carecli users list` shows them")


def _role_by_name(uow: IdentityUnitOfWork, name: str) -> Role:
    try:
        return uow.roles.by_name(name.strip())
    except NotFound:
        raise NotFound(f"there is no role named {name.strip()!r}", hint="`carecli roles list` shows them") from None


def _active_admins(uow: IdentityUnitOfWork, *, user_id: uuid.UUID | None = None,
                   role_id: uuid.UUID | None = None, is_active: bool | None = None,
                   role_permissions: tuple[uuid.UUID, list[str]] | None = None) -> set[uuid.UUID]:
    """Ids of active users holding users:admin, optionally as if one user or one role were changed."""
    permissions = {role.id: set(role.permissions or []) for role in uow.roles.list()}
    if role_permissions is not None:
        permissions[role_permissions[0]] = set(role_permissions[1])
    admins = set()
    for user in uow.users.list():
        user_role, active = user.role_id, user.is_active is not False
        if user.id == user_id:
            user_role = role_id if role_id is not None else user_role
            active = is_active if is_active is not None else active
        if active and user_role is not None and str(ADMIN) in permissions.get(user_role, set()):
            admins.add(user.id)
    return admins


def _keep_an_admin(uow: IdentityUnitOfWork, what: str, **change: Any) -> None:
    """Refuse a change after which no active user could manage users any more."""
    if _active_admins(uow) and not _active_admins(uow, **change):
        raise CarecliError(f"{what} would leave no active user with the '{ADMIN}' permission",
                           hint="give another user an admin role first (`carecli users set-role EMAIL admin`)")


def _actor_payload(actor: Actor) -> dict[str, Any]:
    """Who asked for a platform change, kept with it so its audit row names them even when applied later."""
    return {"user_id": str(actor.user_id) if actor.user_id else None, "role": actor.role,
            "ip_address": actor.ip_address, "user_agent": actor.user_agent}


def _step_actor(payload: dict[str, Any]) -> Actor:
    """The requester of a specialist status change, allowed exactly that change.

    Keeping the specialist record in step is part of managing the user, which
    the requester was allowed (users:admin was checked then), even when their
    role lacks specialists:write.
    """
    who = payload.get("actor") or {}
    user_id = who.get("user_id")
    return Actor(user_id=uuid.UUID(user_id) if user_id else None, permissions=_SPECIALIST_STEP_PERMISSIONS,
                 user_agent=who.get("user_agent") or "carecli", ip_address=who.get("ip_address"),
                 role=who.get("role"))


def _live_counts(uow: IdentityUnitOfWork, user_id: uuid.UUID) -> tuple[int, int]:
    """Sessions not yet ended and tokens not yet revoked (expired ones included: they get revoked too)."""
    sessions = len(uow.sessions.for_user(user_id))
    tokens = sum(1 for token in uow.tokens.for_user(user_id) if not token.is_revoked)
    return sessions, tokens


def _role_names(uow: IdentityUnitOfWork) -> dict[uuid.UUID, str]:
    return {role.id: role.name for role in uow.roles.list()}


# -- users -------------------------------------------------------------------------------


def list_users(databases: Databases, actor: Actor) -> list[UserSummary]:
    """Every user that is not soft-deleted, by e-mail address."""
    with IdentityUnitOfWork(databases.identity, databases.platform, actor) as uow:
        _require_admin(uow, "list users")
        names = _role_names(uow)
        return [UserSummary(user, names.get(user.role_id) if user.role_id else None) for user in uow.users.list()]


def show_user(databases: Databases, actor: Actor, ref: str) -> UserDetails:
    """One user with their role, permissions, live sessions/tokens, specialist record and pending changes."""
    with IdentityUnitOfWork(databases.identity, databases.platform, actor) as uow:
        _require_admin(uow, "look up users")
        user = find_user(uow, ref)
        names = _role_names(uow)
        permissions = uow.users.permissions_of(user)
        sessions, tokens = _live_counts(uow, user.id)
        pending = len(uow.pending.open(user_id=user.id))
    specialist, note = None, None
    if actor.can(Permission.MEMBERS_READ):
        with PlatformUnitOfWork(databases.platform, actor) as puow:
            specialist = puow.specialists.for_user(user.id)
    else:
        note = f"not shown: needs the '{Permission.MEMBERS_READ}' permission"
    return UserDetails(user=user, role=names.get(user.role_id) if user.role_id else None, permissions=permissions,
                       live_sessions=sessions, live_tokens=tokens, specialist=specialist, specialist_note=note,
                       pending_changes=pending)


def _create_user(uow: IdentityUnitOfWork, email: str, external_id: str, first_name: str | None,
                 last_name: str | None, role_id: uuid.UUID) -> User:
    """Insert a user; the repository checks e-mail uniqueness case-insensitively."""
    return uow.users.create({
        "email": _normal_email(email),
        "external_user_id": external_id.strip(),
        "first_name": (first_name or "").strip() or None,
        "last_name": (last_name or "").strip() or None,
        "role_id": role_id,
    })


def add_user(databases: Databases, actor: Actor, *, email: str, external_id: str, role: str,
             first_name: str | None = None, last_name: str | None = None) -> UserSummary:
    """Create a user with a role; the e-mail address is stored lower-case and must be unique."""
    with IdentityUnitOfWork(databases.identity, databases.platform, actor) as uow:
        _require_admin(uow, "add users")
        the_role = _role_by_name(uow, role)
        user = _create_user(uow, email, external_id, first_name, last_name, the_role.id)
        uow.commit()
    return UserSummary(user, the_role.name)


def set_role(databases: Databases, actor: Actor, ref: str, role: str) -> tuple[UserSummary, bool]:
    """Give a user another role; returns the user and whether anything changed."""
    with IdentityUnitOfWork(databases.identity, databases.platform, actor) as uow:
        _require_admin(uow, "change users' roles")
        user = find_user(uow, ref)
        the_role = _role_by_name(uow, role)
        if user.role_id == the_role.id:
            return UserSummary(user, the_role.name), False
        _keep_an_admin(uow, "moving this user to that role", user_id=user.id, role_id=the_role.id)
        updated = uow.users.update(user.id, user.updated_at, {"role_id": the_role.id})
        uow.commit()
    return UserSummary(updated, the_role.name), True


def deactivate_user(databases: Databases, actor: Actor, ref: str) -> StatusChange:
    """Deactivate a user: sessions and tokens revoked at once, their specialist record made inactive.

    Works while the platform database is unreachable: the platform side
    (specialist record, audit rows) is then left for ``carecli sync``.
    """
    return _change_status(databases, actor, ref, active=False)


def reactivate_user(databases: Databases, actor: Actor, ref: str) -> StatusChange:
    """Reactivate a user and their specialist record (their old sessions and tokens stay revoked)."""
    return _change_status(databases, actor, ref, active=True)


def _change_status(databases: Databases, actor: Actor, ref: str, *, active: bool) -> StatusChange:
    operation = "reactivate users" if active else "deactivate users"
    with IdentityUnitOfWork(databases.identity, databases.platform, actor, defer_platform=True) as uow:
        _require_admin(uow, operation)
        user = find_user(uow, ref)
        uow.pending_subject = user.id
        reason = uow.deferral_reason
        if (user.is_active is not False) == active:
            changed, updated, sessions, tokens = False, user, 0, 0
        else:
            changed = True
            if active:
                sessions = tokens = 0
                updated = uow.users.update(user.id, user.updated_at, {"is_active": True})
            else:
                _keep_an_admin(uow, "deactivating this user", user_id=user.id, is_active=False)
                sessions, tokens = _live_counts(uow, user.id)
                updated = uow.users.deactivate(user.id, user.updated_at)
            kind = REACTIVATE_SPECIALIST if active else DEACTIVATE_SPECIALIST
            uow.pending.record(kind, user.id, {"actor": _actor_payload(actor)})
        deferred_now = uow.platform_deferred
        pending = len(uow.pending.open(user_id=user.id)) if deferred_now else 0
        if changed:
            uow.commit()
    if deferred_now:
        return StatusChange(updated, changed, sessions, tokens, pending=pending, deferral_reason=reason)
    # Everything this user is owed, oldest first: an older deferred change must not land after this one.
    result = sync_pending(databases, actor, user_id=user.id, summarise=False)
    return StatusChange(updated, changed, sessions, tokens, pending=result.remaining,
                        deferral_reason=result.errors[0] if result.errors else None, sync=result)


def bootstrap_admin(databases: Databases, *, email: str, external_id: str, first_name: str | None = None,
                    last_name: str | None = None, channel: Channel = "cli") -> User:
    """The first administrator of a fresh installation (and the default roles that are missing).

    Refused once any active user holds users:admin. Audited as carecli
    itself (:meth:`Actor.system`), whose user agent names the OS account.
    """
    actor = dataclasses.replace(Actor.system(channel), permissions=frozenset({str(ADMIN)}))
    with IdentityUnitOfWork(databases.identity, databases.platform, actor) as uow:
        uow.connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _BOOTSTRAP_LOCK})
        if _active_admins(uow):
            raise CarecliError("an active administrator already exists, so bootstrap-admin is refused",
                               hint="sign in as an administrator and use `carecli users add --role admin`")
        existing = {role.name: role for role in uow.roles.list(include_deleted=True)}
        for name, (description, permissions) in DEFAULT_ROLES.items():
            if name not in existing:
                existing[name] = uow.roles.create(name, permissions, description)
        admin_role = existing[ADMIN_ROLE]
        if admin_role.deleted_at is not None or str(ADMIN) not in (admin_role.permissions or []):
            raise CarecliError(f"the role '{ADMIN_ROLE}' was deleted or no longer holds '{ADMIN}'",
                               hint=f"restore it, or give it '{ADMIN}' back, with a database administrator's help")
        user = _create_user(uow, email, external_id, first_name, last_name, admin_role.id)
        uow.commit()
    return user


# -- roles -------------------------------------------------------------------------------


def list_roles(databases: Databases, actor: Actor) -> list[Role]:
    """Every live role, by name (any signed-in user may read them)."""
    with IdentityUnitOfWork(databases.identity, databases.platform, actor) as uow:
        return uow.roles.list()


def show_role(databases: Databases, actor: Actor, name: str) -> Role:
    """One live role by name."""
    with IdentityUnitOfWork(databases.identity, databases.platform, actor) as uow:
        return _role_by_name(uow, name)


def create_role(databases: Databases, actor: Actor, name: str, permissions: str | Iterable[str],
                description: str | None = None) -> Role:
    """A new role; its permissions must come from the documented vocabulary."""
    with IdentityUnitOfWork(databases.identity, databases.platform, actor) as uow:
        _require_admin(uow, "create roles", "role")
        name = name.strip()
        if not name:
            raise ValidationError("name", "required", "a role needs a name")
        # roles.name is UNIQUE over deleted rows too.
        if any(role.name == name for role in uow.roles.list(include_deleted=True)):
            raise ValidationError("name", "unique", "another role (perhaps a deleted one) already has this name")
        role = uow.roles.create(name, parse_permissions(permissions), (description or "").strip() or None)
        uow.commit()
    return role


def update_role(databases: Databases, actor: Actor, name: str, *, permissions: str | Iterable[str] | None = None,
                description: str | None = None) -> tuple[Role, bool]:
    """Replace a role's permissions and/or description; returns the role and whether anything changed."""
    if permissions is None and description is None:
        raise ValidationError("role", "required", "give --permissions and/or --description to change")
    with IdentityUnitOfWork(databases.identity, databases.platform, actor) as uow:
        _require_admin(uow, "edit roles", "role")
        role = _role_by_name(uow, name)
        changes: dict[str, Any] = {}
        if permissions is not None:
            changes["permissions"] = parse_permissions(permissions)
            _keep_an_admin(uow, "this change to the role", role_permissions=(role.id, changes["permissions"]))
        if description is not None:
            changes["description"] = description.strip() or None
        updated = uow.roles.update(role.id, role.updated_at, changes)
        changed = updated.updated_at != role.updated_at
        uow.commit()
    return updated, changed


# -- platform changes owed (carecli sync) --------------------------------------------------


def pending_changes(databases: Databases, actor: Actor, *, user_id: uuid.UUID | None = None) -> list[PendingChange]:
    """Platform changes still owed, oldest first (reads only the identity database)."""
    with IdentityUnitOfWork(databases.identity, databases.platform, actor, defer_platform=True) as uow:
        _require_admin(uow, "read pending platform changes", "pending_platform_change")
        return uow.pending.open(user_id=user_id)


def sync_pending(databases: Databases, actor: Actor, *, user_id: uuid.UUID | None = None,
                 summarise: bool = True) -> SyncResult:
    """Apply the platform changes identity changes still owe, oldest first, each at most once.

    Each change is locked in the identity database while it is applied (a
    concurrent sync skips it) and stamped done afterwards; applying is
    idempotent, so a change applied whose stamp was lost is harmless to
    apply again. The run stops at the first sign of an unreachable platform
    database. With ``summarise`` a run that applied anything is audited.
    """
    queue = [(change.id, change.user_id) for change in pending_changes(databases, actor, user_id=user_id)]
    applied = failed = 0
    errors: list[str] = []
    unreachable = False
    # A user's changes must land in order: after one of theirs fails (or another sync holds it), their
    # later ones wait for the next run rather than overtake it.
    held: set[uuid.UUID] = set()
    for change_id, owner in queue:
        if owner is not None and owner in held:
            continue
        with IdentityUnitOfWork(databases.identity, databases.platform, actor, defer_platform=True) as uow:
            change = uow.pending.lock_open(change_id)
            if change is None:
                if owner is not None:
                    held.add(owner)  # done meanwhile, or another sync is applying it
                continue
            try:
                _apply(databases, change)
            except (OperationalError, InterfaceError) as exc:
                reason = describe_dbapi_error(exc)
                uow.pending.mark_failed(change.id, reason)
                uow.commit()
                errors.append(f"{change.id} ({change.kind}): platform database unreachable: {reason}")
                unreachable = True
                break
            except DBAPIError as exc:
                reason = describe_dbapi_error(exc)
            except CarecliError as exc:
                reason = exc.message
            else:
                uow.pending.mark_done(change.id)
                uow.commit()
                applied += 1
                continue
            uow.pending.mark_failed(change.id, reason)
            uow.commit()
            errors.append(f"{change.id} ({change.kind}): {reason}")
            failed += 1
            if owner is not None:
                held.add(owner)
    remaining = len(pending_changes(databases, actor, user_id=user_id))
    result = SyncResult(applied=applied, failed=failed, remaining=remaining, errors=tuple(errors),
                        unreachable=unreachable)
    if summarise and applied:
        audit.write_committed(databases.platform, actor, "pending_platform_change", NIL, "sync",
                              {"applied": applied, "failed": failed, "remaining": remaining})
    return result


def _apply(databases: Databases, change: PendingChange) -> None:
    """Apply one pending change to the platform database, in one platform transaction."""
    if change.kind == "audit":
        with databases.platform.begin() as connection:
            replay_deferred_audit(connection, change)
        return
    if change.user_id is None:
        raise CarecliError("the change names no user")
    with PlatformUnitOfWork(databases.platform, _step_actor(change.payload)) as puow:
        if change.kind == DEACTIVATE_SPECIALIST:
            puow.specialists.deactivate_for_user(change.user_id)
        elif change.kind == REACTIVATE_SPECIALIST:
            specialist = puow.specialists.for_user(change.user_id)
            if specialist is not None and specialist.is_active is False:
                puow.specialists.update(specialist.id, None, {"is_active": True})
        else:
            raise CarecliError(f"unknown kind of change {change.kind!r}")
        puow.commit()
