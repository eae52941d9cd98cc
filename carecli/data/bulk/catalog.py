"""The kinds carecli imports and exports, and their file columns.

Export writes exactly these column names and import reads them, so a file
exported from one installation imports into another unchanged. Columns that
exist only in files (not in the table) are explained in the README: natural
keys kept in ``metadata``, references by code or e-mail instead of id, and
the member's plaintext SSN and date of birth.
"""

from __future__ import annotations

from carecli.errors import ConfigError

#: canonical kind name -> file columns, in export order
COLUMNS: dict[str, tuple[str, ...]] = {
    "members": (
        "id", "external_member_number", "first_name", "last_name", "ssn", "dob", "email", "phone",
        "address_line1", "address_line2", "city", "state", "zip_code", "status",
    ),
    "plans": (
        "id", "plan_code", "plan_name", "plan_type", "coverage_details", "premium_amount", "deductible_amount",
        "copay_amount", "is_active", "effective_date", "expiration_date",
    ),
    "enrollments": (
        "id", "member_id", "external_member_number", "plan_code", "enrollment_date", "termination_date", "status",
        "is_primary", "coverage_percentage", "notes",
    ),
    "specialists": ("id", "user_email", "phone", "license_number", "is_active", "plan_codes"),
    "calls": (
        "id", "external_id", "member_id", "external_member_number", "specialist_id", "specialist_email",
        "call_type", "call_status", "scheduled_at", "started_at", "ended_at", "duration_seconds", "call_notes",
        "outcome", "follow_up_required", "follow_up_date",
    ),
    "flags": (
        "id", "external_id", "call_record_id", "call_external_id", "member_id", "external_member_number",
        "specialist_id", "specialist_email", "risk_type", "severity", "description", "resolved", "resolved_at",
        "resolution_note",
    ),
}

#: columns export writes and import reads but ignores: a flag's resolution is made (and audited) in the app
READ_ONLY_COLUMNS: dict[str, tuple[str, ...]] = {"flags": ("resolved", "resolved_at", "resolution_note")}

#: what people may type for a kind
ALIASES: dict[str, str] = {
    "member": "members", "plan": "plans", "insurance-plans": "plans", "insurance_plans": "plans",
    "enrollment": "enrollments", "member-insurance-plans": "enrollments", "specialist": "specialists",
    "call": "calls", "call-records": "calls", "call_records": "calls", "flag": "flags",
    "risk-flags": "flags", "risk_flags": "flags",
}

#: the table each kind fills
TABLES: dict[str, str] = {
    "members": "members", "plans": "insurance_plans", "enrollments": "member_insurance_plans",
    "specialists": "specialists", "calls": "call_records", "flags": "risk_flags",
}

#: the audit log's entity type for each kind
ENTITY_TYPES: dict[str, str] = {
    "members": "member", "plans": "insurance_plan", "enrollments": "member_insurance_plan",
    "specialists": "specialist", "calls": "call_record", "flags": "risk_flag",
}

#: member columns that are PHI held encrypted: exported only with --include-phi
PHI_COLUMNS = ("ssn", "dob")

# Natural keys kept in the metadata table (entity_type, metadata_key); the value is a JSON string.
EXTERNAL_MEMBER_NUMBER = "external_member_number"
SSN_BLIND_INDEX = "ssn_blind_index"
EXTERNAL_ID = "external_id"


def kind_named(name: str) -> str:
    """The canonical kind for what a user typed, or a usage error listing the kinds."""
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key not in COLUMNS:
        raise ConfigError(f"unknown kind {name!r}", hint=f"kinds: {', '.join(COLUMNS)}")
    return key
