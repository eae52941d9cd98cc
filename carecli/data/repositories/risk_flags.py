"""Risk flags raised from a call; member and specialist come from the call itself.

A flag is open until someone resolves it with a note. The seed's
``risk_flags`` table has no status column and stays as it is: a resolution
is a live ``metadata`` row (entity ``risk_flag``, key ``resolution``, value
``{"note", "by", "at"}``) on the flag. Re-opening soft-deletes that row
(resolving again revives it); every step is audited on the flag itself and
on the metadata row, and bumps the flag's ``updated_at`` so two people
resolving the same flag at once cannot both win.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select

from carecli.data.models.platform import CallRecord, Metadata
from carecli.data.models.platform import RiskFlag as RiskFlagTable
from carecli.data.permissions import Permission
from carecli.data.records import RiskFlag
from carecli.data.repositories.base import CLOCK_NOW, Repository
from carecli.data.rules import flag_call_problems, utc_now
from carecli.data.validation import check_reason
from carecli.errors import ValidationError

#: the metadata key (entity type ``risk_flag``) that holds a flag's resolution
RESOLUTION_KEY = "resolution"
METADATA = Metadata.__table__


@dataclass(frozen=True)
class FlagResolution:
    """How a flag was resolved: the note, who (a user id) and when (naive UTC)."""

    note: str
    by: uuid.UUID | None
    at: datetime | None

    def __repr__(self) -> str:  # the note is free text and may hold health information
        return f"FlagResolution(by={self.by}, at={self.at})"

    @classmethod
    def from_value(cls, value: Any) -> FlagResolution:
        value = value if isinstance(value, dict) else {}
        by, at = value.get("by"), value.get("at")
        try:
            by_id = uuid.UUID(str(by)) if by else None
        except ValueError:
            by_id = None
        try:
            when = datetime.fromisoformat(str(at)) if at else None
        except ValueError:
            when = None
        return cls(str(value.get("note") or ""), by_id, when)


class RiskFlagRepository(Repository[RiskFlag]):
    table = RiskFlagTable.__table__
    record_type = RiskFlag
    entity_type = "risk_flag"
    read_permission = Permission.MEMBERS_READ
    write_permission = Permission.FLAGS_WRITE
    protected = Repository.protected | {"member_id", "specialist_id", "call_record_id"}

    def raise_from_call(self, call_id: uuid.UUID, *, risk_type: str, severity: str, description: str) -> RiskFlag:
        """Flag a risk found on a call; the member and specialist are the call's.

        The call must have been held (completed, or attempted without an answer).
        """
        self.require(self.write_permission, "raise risk flags")
        call = self.require_live(CallRecord.__table__, call_id, "call_record_id")
        problems = flag_call_problems(call._mapping)
        if problems:
            raise ValidationError.of(problems)
        return self._insert(
            {"risk_type": risk_type, "severity": severity, "description": description},
            operation="raise risk flags",
            generated={"call_record_id": call.id, "member_id": call.member_id, "specialist_id": call.specialist_id},
        )

    def for_member(self, member_id: uuid.UUID) -> list[RiskFlag]:
        self.require(self.read_permission, "read risk flags", member_id)
        return self._list(self._select().where(self.table.c.member_id == member_id)
                          .order_by(self.table.c.created_at.desc(), self.table.c.id))

    def for_call(self, call_id: uuid.UUID) -> list[RiskFlag]:
        self.require(self.read_permission, "read risk flags", call_id)
        return self._list(self._select().where(self.table.c.call_record_id == call_id)
                          .order_by(self.table.c.created_at.desc(), self.table.c.id))

    def update(self, flag_id: uuid.UUID, expected_updated_at: datetime | None,
               changes: Mapping[str, Any]) -> RiskFlag:
        return self._update(flag_id, expected_updated_at, changes, operation="edit risk flags")

    # -- resolution --------------------------------------------------------------------------

    def resolutions(self, flag_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, FlagResolution]:
        """The resolution of each resolved flag among ``flag_ids`` (open flags are absent)."""
        ids = list(flag_ids)
        if not ids:
            return {}
        self.require(self.read_permission, "read risk flags")
        rows = self.connection.execute(
            select(METADATA.c.entity_id, METADATA.c.metadata_value).where(
                METADATA.c.entity_type == self.entity_type, METADATA.c.metadata_key == RESOLUTION_KEY,
                METADATA.c.entity_id.in_(ids), METADATA.c.deleted_at.is_(None)))
        return {row.entity_id: FlagResolution.from_value(row.metadata_value) for row in rows}

    def resolution(self, flag_id: uuid.UUID) -> FlagResolution | None:
        return self.resolutions([flag_id]).get(flag_id)

    def _touch(self, flag_id: uuid.UUID, expected_updated_at: datetime | None, operation: str,
               state: tuple[str, str]) -> RiskFlag:
        """Bump the flag's updated_at (refused as a conflict if it changed since read); audit the state change."""
        return self._update(flag_id, expected_updated_at, {}, operation=operation,
                            internal={"updated_at": CLOCK_NOW},
                            audit_values=({"resolution": state[0]}, {"resolution": state[1]}))

    def resolve(self, flag_id: uuid.UUID, expected_updated_at: datetime | None, note: str) -> RiskFlag:
        """Resolve an open flag with a note saying how."""
        self.require(self.write_permission, "resolve risk flags", flag_id)
        note = check_reason(note, field="resolution_note",
                            missing="Say how the flag was resolved (a few words are enough).")
        if self.resolution(flag_id) is not None:
            self._fetch(flag_id)  # a deleted flag says so first
            raise ValidationError("resolution_note", "already_resolved", "This flag is resolved already.")
        flag = self._touch(flag_id, expected_updated_at, "resolve risk flags", ("open", "resolved"))
        self.uow.metadata.put(self.entity_type, flag_id, RESOLUTION_KEY,
                              {"note": note, "by": str(self.uow.actor.user_id or ""),
                               "at": utc_now().isoformat(timespec="seconds")},
                              permission=self.write_permission, operation="resolve risk flags")
        return flag

    def reopen(self, flag_id: uuid.UUID, expected_updated_at: datetime | None, reason: str) -> RiskFlag:
        """Open a resolved flag again (the reason goes into the audit trail's metadata row)."""
        self.require(self.write_permission, "re-open risk flags", flag_id)
        reason = check_reason(reason, missing="Say why the flag is open again (a few words are enough).")
        if self.resolution(flag_id) is None:
            self._fetch(flag_id)
            raise ValidationError("reason", "not_resolved", "This flag is open already.")
        flag = self._touch(flag_id, expected_updated_at, "re-open risk flags", ("resolved", "open"))
        entry = self.uow.metadata.find(self.entity_type, flag_id, RESOLUTION_KEY)
        value = dict(entry.metadata_value or {}) if entry is not None else {}
        value.update({"reopened_because": reason, "reopened_by": str(self.uow.actor.user_id or ""),
                      "reopened_at": utc_now().isoformat(timespec="seconds")})
        self.uow.metadata.remove(self.entity_type, flag_id, RESOLUTION_KEY, value=value,
                                 permission=self.write_permission, operation="re-open risk flags")
        return flag
