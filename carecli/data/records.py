"""Plain, immutable records that repositories hand to callers (never live ORM objects).

A member record carries no SSN or date of birth, not even encrypted: only
whether they are on file. Getting them takes an audited reveal.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any


@dataclass(frozen=True)
class Member:
    id: uuid.UUID
    first_name: str
    last_name: str
    email: str | None
    phone: str | None
    address_line1: str | None
    address_line2: str | None
    city: str | None
    state: str | None
    zip_code: str | None
    status: str | None
    has_ssn: bool
    has_dob: bool
    deleted_at: datetime | None
    created_at: datetime | None
    updated_at: datetime | None

    def __repr__(self) -> str:
        # Contact details are PHI: a record that ends up in a log shows only its id.
        return f"Member(id={self.id}, status={self.status!r})"


@dataclass(frozen=True)
class Specialist:
    id: uuid.UUID
    user_id: uuid.UUID | None
    phone: str | None
    license_number: str | None
    is_active: bool | None
    deleted_at: datetime | None
    created_at: datetime | None
    updated_at: datetime | None


@dataclass(frozen=True)
class Call:
    id: uuid.UUID
    member_id: uuid.UUID | None
    specialist_id: uuid.UUID | None
    call_type: str
    call_status: str
    scheduled_at: datetime | None
    started_at: datetime | None
    ended_at: datetime | None
    duration_seconds: int | None
    call_notes: str | None
    outcome: str | None
    follow_up_required: bool | None
    follow_up_date: date | None
    deleted_at: datetime | None
    created_at: datetime | None
    updated_at: datetime | None


@dataclass(frozen=True)
class Plan:
    id: uuid.UUID
    plan_code: str
    plan_name: str
    plan_type: str | None
    coverage_details: Any
    premium_amount: Decimal | None
    deductible_amount: Decimal | None
    copay_amount: Decimal | None
    is_active: bool | None
    effective_date: date | None
    expiration_date: date | None
    deleted_at: datetime | None
    created_at: datetime | None
    updated_at: datetime | None


@dataclass(frozen=True)
class Enrollment:
    id: uuid.UUID
    member_id: uuid.UUID
    insurance_plan_id: uuid.UUID
    enrollment_date: date
    termination_date: date | None
    status: str | None
    is_primary: bool | None
    coverage_percentage: Decimal | None
    notes: str | None
    deleted_at: datetime | None
    created_at: datetime | None
    updated_at: datetime | None


@dataclass(frozen=True)
class SpecialistPlan:
    id: uuid.UUID
    specialist_id: uuid.UUID
    insurance_plan_id: uuid.UUID
    notes: str | None
    deleted_at: datetime | None
    created_at: datetime | None
    updated_at: datetime | None


@dataclass(frozen=True)
class RiskFlag:
    id: uuid.UUID
    call_record_id: uuid.UUID
    member_id: uuid.UUID
    specialist_id: uuid.UUID
    risk_type: str
    severity: str
    description: str
    deleted_at: datetime | None
    created_at: datetime | None
    updated_at: datetime | None


@dataclass(frozen=True)
class MetadataEntry:
    id: uuid.UUID
    entity_type: str
    entity_id: uuid.UUID
    metadata_key: str
    metadata_value: Any
    deleted_at: datetime | None
    created_at: datetime | None
    updated_at: datetime | None


@dataclass(frozen=True)
class AuditEntry:
    id: uuid.UUID
    user_id: uuid.UUID | None
    entity_type: str
    entity_id: uuid.UUID
    action: str
    old_values: Any
    new_values: Any
    ip_address: str | None
    user_agent: str | None
    created_at: datetime | None


@dataclass(frozen=True)
class Role:
    id: uuid.UUID
    name: str
    description: str | None
    permissions: Any
    deleted_at: datetime | None
    created_at: datetime | None
    updated_at: datetime | None


@dataclass(frozen=True)
class User:
    id: uuid.UUID
    external_user_id: str
    email: str
    first_name: str | None
    last_name: str | None
    role_id: uuid.UUID | None
    is_active: bool | None
    last_login_at: datetime | None
    deleted_at: datetime | None
    created_at: datetime | None
    updated_at: datetime | None


@dataclass(frozen=True)
class Token:
    """An API/refresh/access token's metadata; the token itself is never stored, only its hash."""

    id: uuid.UUID
    user_id: uuid.UUID | None
    token_type: str
    expires_at: datetime
    scopes: Any
    is_revoked: bool | None
    deleted_at: datetime | None
    created_at: datetime | None


@dataclass(frozen=True)
class Session:
    id: uuid.UUID
    user_id: uuid.UUID | None
    ip_address: str | None
    user_agent: str | None
    expires_at: datetime
    deleted_at: datetime | None
    created_at: datetime | None
