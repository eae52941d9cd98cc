"""Writing audit rows, with PHI reduced to the fact that it changed.

Changes are audited in the same transaction as the change. PHI reads are
audited in a transaction of their own, committed before the value is handed
out: if that insert fails, the caller gets an error and no value (fail
closed), and an audit row once written cannot be rolled back by whatever the
caller does next.
"""

from __future__ import annotations

import ipaddress
import uuid
from collections.abc import Iterable, Mapping
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, Engine, func, insert

from carecli.data.actor import Actor
from carecli.data.ids import new_id
from carecli.data.models.platform import AuditLog

AUDIT = AuditLog.__table__

# Values that never go into audit_logs: PHI (SSN, DOB, member identity and
# contact details) and free text that may carry health information. Their
# field names are recorded, their values replaced by this marker.
REDACTED = "[redacted]"
SENSITIVE_FIELDS: dict[str, frozenset[str]] = {
    "member": frozenset({
        "encrypted_ssn", "encrypted_dob", "ssn", "dob", "first_name", "last_name", "email", "phone",
        "address_line1", "address_line2", "city", "state", "zip_code",
    }),
    "call_record": frozenset({"call_notes"}),
    "risk_flag": frozenset({"description"}),
    "member_insurance_plan": frozenset({"notes"}),
    "specialist_insurance_plan": frozenset({"notes"}),
    "metadata": frozenset({"metadata_value"}),
    "specialist": frozenset({"phone"}),
    # Secrets of the identity database: only that they changed.
    "token": frozenset({"token_hash"}),
    "session": frozenset({"session_token"}),
    # Break-the-glass grants: the reason and the reviewer's note are free text.
    "emergency_access": frozenset({"reason", "review_note"}),
}
#: the key of the emergency marker in ``new_values``: the id of the grant an action was done under
EMERGENCY_MARKER = "emergency_access"
_ALWAYS_SKIPPED = frozenset({"created_at", "updated_at"})


# clock_timestamp(), not the column default now(): rows written in one
# transaction (a delete and its restore) must still sort in the order they happened.
_INSERT = insert(AUDIT).values(created_at=func.clock_timestamp().op("AT TIME ZONE")("UTC"))


def _json_value(value: Any) -> Any:
    if isinstance(value, (uuid.UUID, Decimal, ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return str(value)
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return REDACTED
    return value


def audit_values(entity_type: str, values: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """``values`` made safe for the audit log: sensitive fields reduced to a marker."""
    if values is None:
        return None
    sensitive = SENSITIVE_FIELDS.get(entity_type, frozenset())
    safe: dict[str, Any] = {}
    for name, value in values.items():
        if name in _ALWAYS_SKIPPED:
            continue
        if name in sensitive:
            safe[name] = None if value is None else REDACTED
        else:
            safe[name] = _json_value(value)
    return safe


def changed_fields(old: Mapping[str, Any], new: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Only the fields whose value differs, before and after."""
    names = [name for name in new if name not in _ALWAYS_SKIPPED and old.get(name) != new.get(name)]
    return {name: old.get(name) for name in names}, {name: new.get(name) for name in names}


def audit_row(actor: Actor, entity_type: str, entity_id: uuid.UUID, action: str,
              old_values: Mapping[str, Any] | None = None,
              new_values: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One ``audit_logs`` row (values made safe); an actor under an emergency grant marks it with the grant."""
    safe_new = audit_values(entity_type, new_values)
    if actor.emergency_grant is not None:
        safe_new = {**(safe_new or {}), EMERGENCY_MARKER: str(actor.emergency_grant)}
    return {
        "id": new_id(),
        "user_id": actor.user_id,
        "entity_type": entity_type,
        "entity_id": entity_id,
        "action": action,
        "old_values": audit_values(entity_type, old_values),
        "new_values": safe_new,
        "ip_address": actor.ip_address,
        "user_agent": actor.user_agent,
    }


def write(connection: Connection, actor: Actor, entity_type: str, entity_id: uuid.UUID, action: str,
          old_values: Mapping[str, Any] | None = None, new_values: Mapping[str, Any] | None = None) -> None:
    """Insert one audit row in the caller's transaction."""
    connection.execute(_INSERT, [audit_row(actor, entity_type, entity_id, action, old_values, new_values)])


def write_many(connection: Connection, rows: Iterable[dict[str, Any]]) -> None:
    batch = list(rows)
    if batch:
        connection.execute(_INSERT, batch)


def write_committed(engine: Engine, actor: Actor, entity_type: str, entity_id: uuid.UUID, action: str,
                    new_values: Mapping[str, Any] | None = None) -> None:
    """Insert and commit one audit row in its own transaction (PHI reads, denials)."""
    with engine.begin() as connection:
        write(connection, actor, entity_type, entity_id, action, None, new_values)
