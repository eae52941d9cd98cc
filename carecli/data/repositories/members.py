"""Members: contact details in the clear, SSN and date of birth encrypted, every PHI read audited."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from sqlalchemy import Row, select

from carecli.data.bulk.fields import FieldProblem, parse_phone
from carecli.data.crypto.phi import DateOfBirth, Ssn
from carecli.data.ids import new_id
from carecli.data.models.platform import Member as MemberTable
from carecli.data.permissions import Permission
from carecli.data.records import Member
from carecli.data.repositories.base import Repository
from carecli.data.validation import check_email, check_phone, check_state, check_zip
from carecli.errors import ValidationError

PHI_FIELDS = ("ssn", "dob")
MIN_REASON_LENGTH = 4
OLDEST_PLAUSIBLE_AGE_YEARS = 130


@dataclass(frozen=True)
class RevealedPhi:
    """What an audited reveal returns; the values stay masked until ``.reveal()``."""

    member_id: uuid.UUID
    ssn: Ssn | None
    dob: DateOfBirth | None


def check_name(values: Mapping[str, Any]) -> None:
    """Names are text a person typed: no control characters (a NUL or an escape sequence is a broken input)."""
    for name in ("first_name", "last_name"):
        value = values.get(name)
        if isinstance(value, str) and any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
            raise ValidationError(name, "control_character", "must not contain control characters")


def check_dob(dob: DateOfBirth | None) -> None:
    if dob is None:
        return
    value = dob.reveal()
    today = date.today()
    if value > today:
        raise ValidationError("dob", "not_future", "date of birth must not be in the future")
    if value.year < today.year - OLDEST_PLAUSIBLE_AGE_YEARS:
        raise ValidationError("dob", "plausible_age", f"date of birth is more than {OLDEST_PLAUSIBLE_AGE_YEARS} "
                              "years ago")


class MemberRepository(Repository[Member]):
    table = MemberTable.__table__
    record_type = Member
    entity_type = "member"
    read_permission = Permission.MEMBERS_READ
    write_permission = Permission.MEMBERS_WRITE
    protected = Repository.protected | {"encrypted_ssn", "encrypted_dob"}

    def to_record(self, row: Row[Any]) -> Member:
        m = row._mapping
        return Member(
            id=m["id"], first_name=m["first_name"], last_name=m["last_name"], email=m["email"],
            phone=m["phone"], address_line1=m["address_line1"], address_line2=m["address_line2"],
            city=m["city"], state=m["state"], zip_code=m["zip_code"], status=m["status"],
            has_ssn=m["encrypted_ssn"] is not None, has_dob=m["encrypted_dob"] is not None,
            deleted_at=m["deleted_at"], created_at=m["created_at"], updated_at=m["updated_at"],
        )

    def validate(self, values: Mapping[str, Any], current: Mapping[str, Any] | None) -> None:
        check_state(values.get("state"))
        check_zip(values.get("zip_code"))
        check_email(values.get("email"))
        if current is None or values.get("phone") != current.get("phone"):
            check_phone(values.get("phone"))  # stored numbers from before this rule are not refused on other edits
        check_name(values)

    @staticmethod
    def _normalised(values: Mapping[str, Any]) -> dict[str, Any]:
        """Contact details as import stores them: a phone in any common spelling becomes +1XXXXXXXXXX."""
        values = dict(values)
        phone = values.get("phone")
        if isinstance(phone, str):
            try:
                values["phone"] = parse_phone(phone) if phone.strip() else None
            except FieldProblem as problem:
                raise ValidationError("phone", problem.rule, problem.message) from None
        return values

    # -- reads -------------------------------------------------------------------

    def open(self, member_id: uuid.UUID, *, include_deleted: bool = False) -> Member:
        """Open a member's record: an audited PHI read of their contact details."""
        self.require(Permission.MEMBERS_READ, "open member records", member_id)
        row = self._fetch(member_id, include_deleted=include_deleted)
        self.uow.audit_read("member", member_id, {"purpose": "open", "fields": ["contact"]})
        return self.to_record(row)

    def reread(self, member_id: uuid.UUID, *, include_deleted: bool = False) -> Member:
        """The record again, within a visit that :meth:`open` already audited (not a new access).

        For a screen showing the member's file that reloads it after its own save or
        someone else's change: one visit, one audited read. Callers vouch that
        this actor opened the record with :meth:`open` for this visit (the Desk's
        ``MemberVisit``); anything else opens it.
        """
        self.require(Permission.MEMBERS_READ, "open member records", member_id)
        return self.to_record(self._fetch(member_id, include_deleted=include_deleted))

    def get(self, entity_id: uuid.UUID, *, include_deleted: bool = False) -> Member:
        """A member record always holds contact details: every get is an audited :meth:`open`."""
        return self.open(entity_id, include_deleted=include_deleted)

    def display_name(self, member_id: uuid.UUID) -> str:
        """"Last, First" for a heading (the name only, as lists show it: not an audited open)."""
        self.require(Permission.MEMBERS_READ, "read member names", member_id)
        row = self.connection.execute(select(self.table.c.first_name, self.table.c.last_name)
                                      .where(self.table.c.id == member_id)).first()
        return f"{row.last_name}, {row.first_name}" if row is not None else "unknown member"

    def reveal(self, member_id: uuid.UUID, fields: Iterable[str], reason: str) -> RevealedPhi:
        """Decrypt SSN and/or date of birth, after auditing who, which fields and why."""
        wanted = sorted(set(fields))
        unknown = [name for name in wanted if name not in PHI_FIELDS]
        if not wanted or unknown:
            raise ValidationError("fields", "enum", "choose ssn, dob or both")
        if self.uow.emergency_grant(member_id) is None:  # a live break-the-glass grant stands in for phi:reveal
            self.require(Permission.PHI_REVEAL, "reveal SSN or date of birth", member_id)
        reason = (reason or "").strip()
        if len(reason) < MIN_REASON_LENGTH:
            raise ValidationError("reason", "required", f"say why (at least {MIN_REASON_LENGTH} characters)")
        if len(reason) > 500:
            raise ValidationError("reason", "max_length", "must be at most 500 characters")
        row = self._fetch(member_id)
        # Audited and committed first: if this fails, nothing is decrypted.
        self.uow.audit_read("member", member_id, {"purpose": "reveal", "fields": wanted, "reason": reason})
        cipher = self.uow.reader_cipher()
        ssn = dob = None
        if "ssn" in wanted and row.encrypted_ssn is not None:
            ssn = cipher.decrypt_ssn(bytes(row.encrypted_ssn), member_id)
        if "dob" in wanted and row.encrypted_dob is not None:
            dob = cipher.decrypt_dob(bytes(row.encrypted_dob), member_id)
        return RevealedPhi(member_id, ssn, dob)

    # -- writes ------------------------------------------------------------------

    def create(self, values: Mapping[str, Any], *, ssn: Ssn | None = None, dob: DateOfBirth | None = None,
               member_id: uuid.UUID | None = None) -> Member:
        """Add a member; SSN and DOB are encrypted bound to the new id (made here, before insert)."""
        check_dob(dob)
        member_id = member_id or new_id()
        generated: dict[str, Any] = {}
        if ssn is not None or dob is not None:
            self.require(self.write_permission, "create members")
            cipher = self.uow.cipher()
            if ssn is not None:
                generated["encrypted_ssn"] = cipher.encrypt_ssn(ssn, member_id)
            if dob is not None:
                generated["encrypted_dob"] = cipher.encrypt_dob(dob, member_id)
        return self._insert(self._normalised(values), operation="create members", entity_id=member_id,
                            generated=generated)

    def update(self, member_id: uuid.UUID, expected_updated_at: datetime | None, changes: Mapping[str, Any], *,
               ssn: Ssn | None = None, dob: DateOfBirth | None = None) -> Member:
        """Change contact details, status or PHI; fails with a conflict if the row changed since read."""
        check_dob(dob)
        internal: dict[str, Any] = {}
        if ssn is not None or dob is not None:
            self.require(self.write_permission, "edit members", member_id)
            cipher = self.uow.cipher()
            if ssn is not None:
                internal["encrypted_ssn"] = cipher.encrypt_ssn(ssn, member_id)
            if dob is not None:
                internal["encrypted_dob"] = cipher.encrypt_dob(dob, member_id)
        changes = dict(changes)
        if isinstance(changes.get("phone"), str):
            stored = self.connection.execute(select(self.table.c.phone).where(self.table.c.id == member_id)).first()
            if stored is not None and stored.phone == changes["phone"]:
                # Sent back as stored (a form resends every field): not a change, so a number kept from
                # before the phone rule is not refused, nor parsed, on an edit of something else.
                del changes["phone"]
        return self._update(member_id, expected_updated_at, self._normalised(changes), operation="edit members",
                            internal=internal)

