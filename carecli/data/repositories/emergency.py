"""Break-the-glass emergency access: time-boxed grants to one member's SSN and DOB, kept in ``metadata``.

A grant is one ``metadata`` row of the member: ``entity_type = 'member'``,
``entity_id`` the member, ``metadata_key = 'emergency_access:<grant id>'``
(the grant id is the row's own id, so a member can have many grants, from
several users, over time) and ``metadata_value`` = ``{grant_id, user_id,
reason, minutes, granted_at, expires_at, reviewed_by, reviewed_at,
review_note}``. Times are naive UTC read from the database clock, and whether
a grant is live is always decided by the database (``expires_at >
clock_timestamp()``), never by the client's clock.

While a grant is live, its holder may reveal that member (and only that
member), and the unit of work marks every audit row they write about the
member with the grant's id (``new_values.emergency_access``, see
:meth:`PlatformUnitOfWork.audit_actor`). Reviewers see unreviewed grants with
the number of marked rows, and mark them reviewed.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import JSONB

from carecli.data import audit
from carecli.data.ids import new_id
from carecli.data.permissions import Permission
from carecli.data.records import AuditEntry
from carecli.errors import CarecliError, ConflictError, NotFound, PermissionDenied, ValidationError

if TYPE_CHECKING:
    from carecli.data.unit_of_work import PlatformUnitOfWork

ENTITY_TYPE = "emergency_access"  # what the grant's own audit rows are about
KEY_PREFIX = "emergency_access:"
MIN_REASON_LENGTH = 10
MAX_TEXT_LENGTH = 500
MIN_NOTE_LENGTH = 4
#: what the person types to confirm they are breaking the glass (case does not matter)
CONFIRMATION_WORD = "EMERGENCY"
MAX_QUEUE = 500

# The same predicate as the partial index ix_metadata_emergency_access (platform_0008).
_IS_GRANT = "starts_with(metadata_key, 'emergency_access:') AND entity_type = 'member' AND deleted_at IS NULL"
_DB_NOW = "(clock_timestamp() AT TIME ZONE 'UTC')"
_COLUMNS = (f"id, entity_id AS member_id, metadata_value AS value, created_at, "
            f"((metadata_value ->> 'expires_at')::timestamp > {_DB_NOW}) AS live")
_ACTIONS = ("(SELECT count(*) FROM audit_logs a WHERE a.new_values ->> 'emergency_access' = m.id::text) "
            "AS actions")


@dataclass(frozen=True)
class EmergencyGrant:
    """One break-the-glass grant as the queue shows it (its reason and note are free text: kept out of repr)."""

    id: uuid.UUID
    member_id: uuid.UUID
    user_id: uuid.UUID
    reason: str
    minutes: int
    granted_at: datetime
    expires_at: datetime
    live: bool
    reviewed_by: uuid.UUID | None = None
    reviewed_at: datetime | None = None
    review_note: str | None = None
    #: audit rows marked with this grant (filled in by the queue)
    actions: int | None = None

    @property
    def reviewed(self) -> bool:
        return self.reviewed_at is not None

    def __repr__(self) -> str:
        return (f"EmergencyGrant(id={self.id}, member_id={self.member_id}, user_id={self.user_id}, "
                f"expires_at={self.expires_at}, live={self.live}, reviewed={self.reviewed})")


def _when(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) else None


def _grant(row: Any) -> EmergencyGrant:
    value = row.value or {}
    reviewer = value.get("reviewed_by")
    return EmergencyGrant(
        id=row.id, member_id=row.member_id, user_id=uuid.UUID(value["user_id"]), reason=value.get("reason", ""),
        minutes=int(value.get("minutes", 0)), granted_at=_when(value.get("granted_at")) or row.created_at,
        expires_at=_when(value["expires_at"]),  # type: ignore[arg-type]  # always written as ISO text
        live=bool(row.live),
        reviewed_by=uuid.UUID(reviewer) if reviewer else None, reviewed_at=_when(value.get("reviewed_at")),
        review_note=value.get("review_note"), actions=getattr(row, "actions", None))


def _free_text(field: str, value: str | None, minimum: int, what: str) -> str:
    cleaned = " ".join((value or "").split())
    if len(cleaned) < minimum:
        raise ValidationError(field, "required", f"{what} (at least {minimum} characters)")
    if len(cleaned) > MAX_TEXT_LENGTH:
        raise ValidationError(field, "max_length", f"must be at most {MAX_TEXT_LENGTH} characters")
    return cleaned


class EmergencyAccessRepository:
    """Requesting, checking, listing and reviewing break-the-glass grants."""

    def __init__(self, uow: PlatformUnitOfWork) -> None:
        self.uow = uow

    @property
    def connection(self):  # noqa: ANN201 - SQLAlchemy Connection
        return self.uow.connection

    # -- the holder's side ---------------------------------------------------------

    def may_hold_grants(self) -> bool:
        """Whether grants matter for this actor: a person with phi:emergency and without phi:reveal."""
        actor = self.uow.actor
        return (actor.user_id is not None and actor.can(Permission.PHI_EMERGENCY)
                and not actor.can(Permission.PHI_REVEAL))

    def live_grant(self, member_id: uuid.UUID) -> EmergencyGrant | None:
        """The actor's live grant on this member, by the database clock (None when there is none)."""
        if not self.may_hold_grants():
            return None
        row = self.connection.execute(text(
            f"SELECT {_COLUMNS} FROM metadata WHERE entity_id = :member AND {_IS_GRANT} "
            "AND metadata_value ->> 'user_id' = :user "
            f"AND (metadata_value ->> 'expires_at')::timestamp > {_DB_NOW} ORDER BY created_at DESC LIMIT 1"),
            {"member": member_id, "user": str(self.uow.actor.user_id)}).first()
        return _grant(row) if row is not None else None

    def request(self, member_id: uuid.UUID, reason: str, confirmation: str, *, minutes: int) -> EmergencyGrant:
        """Break the glass: a grant to reveal this member for ``minutes``, audited in the same transaction.

        Refused (and the refusal audited) without ``phi:emergency``; refused for
        those who hold ``phi:reveal`` (they need no grant), for API tokens (an
        emergency is a person at a terminal) and while a grant is still live.
        """
        actor = self.uow.actor
        if actor.can(Permission.PHI_REVEAL):  # nothing to grant: refused without writing anything
            raise CarecliError("you may reveal SSN and date of birth already (phi:reveal): no emergency access "
                               "is needed", hint="reveal with a reason instead")
        if not actor.can(Permission.PHI_EMERGENCY):
            self.uow.audit_denial("member", member_id, "break the glass", Permission.PHI_EMERGENCY)
            raise PermissionDenied(f"{actor.role or 'this user'} may not break the glass: it needs the "
                                   f"'{Permission.PHI_EMERGENCY}' permission")
        if actor.user_id is None or actor.scopes is not None:
            raise CarecliError("emergency access is for a signed-in person, not an API token",
                               hint="sign in with `carecli login` (or in the app) and break the glass there")
        reason = _free_text("reason", reason, MIN_REASON_LENGTH, "say what the emergency is")
        if (confirmation or "").strip().upper() != CONFIRMATION_WORD:
            raise ValidationError("confirmation", "confirm", f"type {CONFIRMATION_WORD} to confirm")
        if not 0 < minutes <= 1440:
            raise ValidationError("minutes", "range", "must be between 1 and 1440")
        # One grant at a time per person and member: the row lock serialises two requests racing.
        if self.connection.execute(text("SELECT 1 FROM members WHERE id = :id AND deleted_at IS NULL "
                                        "FOR NO KEY UPDATE"), {"id": member_id}).first() is None:
            raise NotFound(f"member {member_id} does not exist or was deleted")
        current = self.live_grant(member_id)
        if current is not None:
            raise ConflictError(f"you already have emergency access to this member until "
                                f"{current.expires_at:%Y-%m-%d %H:%M} UTC", hint="reveal SSN/DOB while it lasts")
        grant_id = new_id()
        now, expires = self.connection.execute(text(
            f"SELECT t, t + make_interval(mins => :m) FROM (SELECT {_DB_NOW} AS t) AS clock"), {"m": minutes}).one()
        value = {"grant_id": str(grant_id), "user_id": str(actor.user_id), "reason": reason, "minutes": minutes,
                 "granted_at": now.isoformat(), "expires_at": expires.isoformat(), "reviewed_by": None,
                 "reviewed_at": None, "review_note": None}
        row = self.connection.execute(text(
            "INSERT INTO metadata (id, entity_type, entity_id, metadata_key, metadata_value, created_at, updated_at) "
            f"VALUES (:id, 'member', :member, :key, :value, {_DB_NOW}, {_DB_NOW}) RETURNING {_COLUMNS}"
        ).bindparams(bindparam("value", type_=JSONB)),
            {"id": grant_id, "member": member_id, "key": f"{KEY_PREFIX}{grant_id}", "value": value}).one()
        audit.write(self.uow.audit_connection, actor, ENTITY_TYPE, grant_id, "create", None,
                    {"member_id": member_id, "user_id": actor.user_id, "minutes": minutes,
                     "expires_at": expires, "reason": reason})
        self.uow.forget_emergency_grants()
        return _grant(row)

    # -- the reviewer's side ---------------------------------------------------------

    def _require_reader(self, operation: str, entity_id: uuid.UUID | None = None) -> None:
        actor = self.uow.actor
        if actor.can(Permission.EMERGENCY_REVIEW) or actor.can(Permission.AUDIT_READ):
            return
        self.uow.audit_denial(ENTITY_TYPE, entity_id, operation, Permission.EMERGENCY_REVIEW)
        raise PermissionDenied(f"{actor.role or 'this user'} may not {operation}: it needs the "
                               f"'{Permission.EMERGENCY_REVIEW}' or '{Permission.AUDIT_READ}' permission")

    def queue(self, *, include_reviewed: bool = False, limit: int = MAX_QUEUE) -> list[EmergencyGrant]:
        """Grants not yet reviewed (or all of them), newest first, each with its number of marked actions."""
        self._require_reader("list emergency accesses")
        reviewed = "" if include_reviewed else "AND metadata_value ->> 'reviewed_at' IS NULL"
        rows = self.connection.execute(text(
            f"SELECT {_COLUMNS}, {_ACTIONS} FROM metadata m WHERE {_IS_GRANT} {reviewed} "
            "ORDER BY created_at DESC, id DESC LIMIT :limit"), {"limit": min(limit, MAX_QUEUE)})
        return [_grant(row) for row in rows]

    def _fetch(self, grant_id: uuid.UUID, *, lock: bool = False) -> Any:
        row = self.connection.execute(text(
            f"SELECT {_COLUMNS}, {_ACTIONS} FROM metadata m WHERE id = :id AND {_IS_GRANT}"
            + (" FOR UPDATE" if lock else "")), {"id": grant_id}).first()
        if row is None:
            raise NotFound(f"emergency access {grant_id} does not exist",
                           hint="`carecli audit emergencies --all` lists them")
        return row

    def get(self, grant_id: uuid.UUID) -> EmergencyGrant:
        self._require_reader("read emergency accesses", grant_id)
        return _grant(self._fetch(grant_id))

    def actions(self, grant_id: uuid.UUID) -> list[AuditEntry]:
        """The audit rows marked with this grant, oldest first."""
        self._require_reader("read emergency accesses", grant_id)
        self._fetch(grant_id)
        rows = self.connection.execute(text(
            "SELECT id, user_id, entity_type, entity_id, action, old_values, new_values, host(ip_address) AS "
            "ip_address, user_agent, created_at FROM audit_logs WHERE new_values ->> 'emergency_access' = :grant "
            "ORDER BY created_at, id"), {"grant": str(grant_id)})
        return [AuditEntry(**row._mapping) for row in rows]

    def review(self, grant_id: uuid.UUID, note: str) -> EmergencyGrant:
        """Mark a grant reviewed, with a note; a grant still live ends now. Audited in the same transaction."""
        actor = self.uow.actor
        if not actor.can(Permission.EMERGENCY_REVIEW):
            self.uow.audit_denial(ENTITY_TYPE, grant_id, "review emergency accesses", Permission.EMERGENCY_REVIEW)
            raise PermissionDenied(f"{actor.role or 'this user'} may not review emergency accesses: it needs the "
                                   f"'{Permission.EMERGENCY_REVIEW}' permission")
        note = _free_text("note", note, MIN_NOTE_LENGTH, "say what you checked")
        current = _grant(self._fetch(grant_id, lock=True))
        if current.user_id == actor.user_id:
            self.uow.audit_denial(ENTITY_TYPE, grant_id, "review their own emergency access",
                                  Permission.EMERGENCY_REVIEW)
            raise PermissionDenied("nobody may review their own emergency access",
                                   hint="ask another supervisor to review it")
        if current.reviewed:
            raise ConflictError(f"emergency access {grant_id} was already reviewed "
                                f"on {current.reviewed_at:%Y-%m-%d %H:%M} UTC")
        now = self.connection.execute(text(f"SELECT {_DB_NOW}")).scalar_one()
        changes: dict[str, Any] = {"reviewed_by": str(actor.user_id) if actor.user_id else None,
                                   "reviewed_at": now.isoformat(), "review_note": note}
        if current.live:
            changes["expires_at"] = now.isoformat()  # reviewing closes the window: nothing after it goes unseen
        self.connection.execute(text(
            f"UPDATE metadata SET metadata_value = metadata_value || :changes, updated_at = {_DB_NOW} WHERE id = :id"
        ).bindparams(bindparam("changes", type_=JSONB)), {"changes": changes, "id": grant_id})
        audit.write(self.uow.audit_connection, actor, ENTITY_TYPE, grant_id, "review", None,
                    {"member_id": current.member_id, "reviewed_at": now, "review_note": note,
                     "ended_early": current.live})
        return _grant(self._fetch(grant_id))
