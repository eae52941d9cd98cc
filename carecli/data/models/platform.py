"""Platform database: members, specialists, calls, plans, enrollments, flags, metadata, audit."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    Numeric,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import INET, JSONB
from sqlalchemy.orm import Mapped, mapped_column

from carecli.data.models.base import (
    ACTIVE_DELETED_FILTER,
    NOW,
    PlatformBase,
    deleted_column,
    in_list,
    now_column,
    pk_column,
)
from carecli.data.models.enums import (
    CALL_STATUSES,
    CALL_TYPES,
    DATA_KEY_STATUSES,
    ENROLLMENT_STATUSES,
    MEMBER_STATUSES,
    RISK_TYPES,
    SEVERITIES,
)

MONEY = Numeric(10, 2)


class Member(PlatformBase):
    __tablename__ = "members"
    __table_args__ = (
        CheckConstraint(in_list("status", MEMBER_STATUSES), name="status"),
        # The status filter and the count of one status (platform_0013: it replaced
        # ix_members_status_name; ix_members_name and ix_members_phone went, unused).
        Index("ix_members_status", "status", postgresql_where=ACTIVE_DELETED_FILTER),
    )

    id: Mapped[uuid.UUID] = pk_column()
    # AES-256-GCM ciphertexts written by the application; never plaintext.
    encrypted_ssn: Mapped[bytes | None] = mapped_column(LargeBinary)
    encrypted_dob: Mapped[bytes | None] = mapped_column(LargeBinary)
    first_name: Mapped[str] = mapped_column(String(100))
    last_name: Mapped[str] = mapped_column(String(100))
    email: Mapped[str | None] = mapped_column(String(255))
    phone: Mapped[str | None] = mapped_column(String(20))
    address_line1: Mapped[str | None] = mapped_column(String(255))
    address_line2: Mapped[str | None] = mapped_column(String(255))
    city: Mapped[str | None] = mapped_column(String(100))
    state: Mapped[str | None] = mapped_column(String(2))
    zip_code: Mapped[str | None] = mapped_column(String(10))
    status: Mapped[str | None] = mapped_column(String(20), server_default=text("'active'"))
    deleted_at: Mapped[datetime | None] = deleted_column()
    created_at: Mapped[datetime | None] = now_column()
    updated_at: Mapped[datetime | None] = now_column()


# Case-insensitive prefix search by email ("ann.sm%") without contrib extensions.
Index(
    "ix_members_email_lower",
    func.lower(Member.email).label("email_lower"),
    postgresql_ops={"email_lower": "text_pattern_ops"},
    postgresql_where=ACTIVE_DELETED_FILTER,
)

# Member search (migrations platform_0004 and platform_0009, carecli.data.repositories.member_search):
# name order and last-name prefixes, case- and accent-insensitive (carecli_fold,
# our own SQL function) and byte-wise; not partial, so the planner has
# statistics on both expressions. The collation goes where an operator class
# would (rendered right after the expression): reflection drops an index
# element's COLLATE, so an expression carrying it would never compare equal in
# autogenerate.
_BYTEWISE = 'COLLATE "C"'
Index(
    "ix_members_name_folded",
    func.carecli_fold(Member.last_name).label("last_folded"),
    func.carecli_fold(Member.first_name).label("first_folded"),
    Member.id,
    postgresql_ops={"last_folded": _BYTEWISE, "first_folded": _BYTEWISE},
)
Index(
    "ix_members_first_name_keys",  # platform_0010: first-name prefixes sorted by an index-only scan
    func.carecli_fold(Member.first_name).label("first_folded"),
    func.carecli_fold(Member.last_name).label("last_folded"),
    Member.id,
    postgresql_ops={"first_folded": _BYTEWISE, "last_folded": _BYTEWISE},
    postgresql_where=ACTIVE_DELETED_FILTER,
    postgresql_include=["first_name", "last_name"],
)
# Phone numbers as digits only; not partial, for statistics.
Index(
    "ix_members_phone_digits",
    func.regexp_replace(Member.phone, text(r"'\D'"), text("''"), text("'g'")).label("phone_digits"),
    postgresql_ops={"phone_digits": "text_pattern_ops"},
)
# Newest / oldest first (created_at is nullable: NULL sorts as the oldest).
Index(
    "ix_members_created",
    func.coalesce(Member.created_at, text("'-infinity'::timestamp")),
    Member.id,
    postgresql_where=ACTIVE_DELETED_FILTER,
)


class Specialist(PlatformBase):
    __tablename__ = "specialists"
    __table_args__ = (
        # user_id points at identity.users(id) in the other database: no FK
        # can exist, the application checks it (see README, "Two databases").
        Index("ix_specialists_user_id", "user_id"),
        Index("ix_specialists_license_number", "license_number"),
    )

    id: Mapped[uuid.UUID] = pk_column()
    user_id: Mapped[uuid.UUID | None] = mapped_column()
    phone: Mapped[str | None] = mapped_column(String(20))
    license_number: Mapped[str | None] = mapped_column(String(50))
    is_active: Mapped[bool | None] = mapped_column(server_default=text("true"))
    deleted_at: Mapped[datetime | None] = deleted_column()
    created_at: Mapped[datetime | None] = now_column()
    updated_at: Mapped[datetime | None] = now_column()


class CallRecord(PlatformBase):
    __tablename__ = "call_records"
    __table_args__ = (
        CheckConstraint(in_list("call_type", CALL_TYPES), name="call_type"),
        CheckConstraint(in_list("call_status", CALL_STATUSES), name="call_status"),
        CheckConstraint("duration_seconds >= 0", name="duration_seconds"),
        CheckConstraint("ended_at >= started_at", name="ended_after_started"),
        # Full (not partial) so they also serve the foreign-key checks.
        Index("ix_call_records_member_id_scheduled_at", "member_id", "scheduled_at"),
        Index("ix_call_records_specialist_id_scheduled_at", "specialist_id", "scheduled_at"),
        # Worklist: my open follow-ups by date.
        Index("ix_call_records_follow_ups", "specialist_id", "follow_up_date",
              postgresql_where=text("follow_up_required AND deleted_at IS NULL")),
    )

    id: Mapped[uuid.UUID] = pk_column()
    member_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("members.id"))
    specialist_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("specialists.id"))
    call_type: Mapped[str] = mapped_column(String(20))
    call_status: Mapped[str] = mapped_column(String(20))
    scheduled_at: Mapped[datetime | None] = mapped_column()
    started_at: Mapped[datetime | None] = mapped_column()
    ended_at: Mapped[datetime | None] = mapped_column()
    duration_seconds: Mapped[int | None] = mapped_column()
    call_notes: Mapped[str | None] = mapped_column(Text)
    outcome: Mapped[str | None] = mapped_column(String(50))
    follow_up_required: Mapped[bool | None] = mapped_column(server_default=text("false"))
    follow_up_date: Mapped[date | None] = mapped_column()
    deleted_at: Mapped[datetime | None] = deleted_column()
    created_at: Mapped[datetime | None] = now_column()
    updated_at: Mapped[datetime | None] = now_column()


class InsurancePlan(PlatformBase):
    __tablename__ = "insurance_plans"
    __table_args__ = (
        CheckConstraint("premium_amount >= 0", name="premium_amount"),
        CheckConstraint("deductible_amount >= 0", name="deductible_amount"),
        CheckConstraint("copay_amount >= 0", name="copay_amount"),
        CheckConstraint("expiration_date >= effective_date", name="expires_after_effective"),
    )

    id: Mapped[uuid.UUID] = pk_column()
    plan_code: Mapped[str] = mapped_column(String(50), unique=True)
    plan_name: Mapped[str] = mapped_column(String(255))
    plan_type: Mapped[str | None] = mapped_column(String(50))
    coverage_details: Mapped[Any | None] = mapped_column(JSONB)
    premium_amount: Mapped[Decimal | None] = mapped_column(MONEY)
    deductible_amount: Mapped[Decimal | None] = mapped_column(MONEY)
    copay_amount: Mapped[Decimal | None] = mapped_column(MONEY)
    is_active: Mapped[bool | None] = mapped_column(server_default=text("true"))
    effective_date: Mapped[date | None] = mapped_column()
    expiration_date: Mapped[date | None] = mapped_column()
    deleted_at: Mapped[datetime | None] = deleted_column()
    created_at: Mapped[datetime | None] = now_column()
    updated_at: Mapped[datetime | None] = now_column()


class MemberInsurancePlan(PlatformBase):
    __tablename__ = "member_insurance_plans"
    __table_args__ = (
        # PostgreSQL would truncate the default name past 63 characters.
        UniqueConstraint("member_id", "insurance_plan_id", "enrollment_date",
                         name="member_insurance_plans_member_plan_enrollment_key"),
        CheckConstraint(in_list("status", ENROLLMENT_STATUSES), name="status"),
        CheckConstraint("coverage_percentage >= 0 AND coverage_percentage <= 100", name="coverage_percentage"),
        CheckConstraint("termination_date >= enrollment_date", name="terminated_after_enrolled"),
        Index("ix_member_insurance_plans_insurance_plan_id", "insurance_plan_id", "member_id"),
        # The worklist's newest live enrollments per plan (migration platform_0005).
        Index("ix_member_insurance_plans_plan_recent", "insurance_plan_id", text("enrollment_date DESC"), "id",
              postgresql_where=text("status = 'active' AND deleted_at IS NULL")),
        # A member has at most one live primary plan.
        Index("uq_member_insurance_plans_one_primary", "member_id", unique=True,
              postgresql_where=text("is_primary AND status = 'active' AND deleted_at IS NULL")),
    )

    id: Mapped[uuid.UUID] = pk_column()
    member_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("members.id"))
    insurance_plan_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("insurance_plans.id"))
    enrollment_date: Mapped[date] = mapped_column()
    termination_date: Mapped[date | None] = mapped_column()
    status: Mapped[str | None] = mapped_column(String(20), server_default=text("'active'"))
    is_primary: Mapped[bool | None] = mapped_column(server_default=text("false"))
    coverage_percentage: Mapped[Decimal | None] = mapped_column(Numeric(5, 2), server_default=text("100.00"))
    notes: Mapped[str | None] = mapped_column(Text)
    deleted_at: Mapped[datetime | None] = deleted_column()
    created_at: Mapped[datetime | None] = now_column()
    updated_at: Mapped[datetime | None] = now_column()


class SpecialistInsurancePlan(PlatformBase):
    __tablename__ = "specialist_insurance_plans"
    __table_args__ = (
        UniqueConstraint("specialist_id", "insurance_plan_id"),
        Index("ix_specialist_insurance_plans_insurance_plan_id", "insurance_plan_id", "specialist_id"),
    )

    id: Mapped[uuid.UUID] = pk_column()
    specialist_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("specialists.id"))
    insurance_plan_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("insurance_plans.id"))
    notes: Mapped[str | None] = mapped_column(Text)
    deleted_at: Mapped[datetime | None] = deleted_column()
    created_at: Mapped[datetime | None] = now_column()
    updated_at: Mapped[datetime | None] = now_column()


class Metadata(PlatformBase):
    """Per-entity facts (the seed's extension point), keyed by (type, id, key)."""

    __tablename__ = "metadata"
    __table_args__ = (
        UniqueConstraint("entity_type", "entity_id", "metadata_key"),
        # Natural keys of batch imports (migration platform_0006, carecli.data.bulk).
        Index("uq_metadata_member_number", "metadata_value", unique=True,
              postgresql_where=text("entity_type = 'member' AND metadata_key = 'external_member_number' "
                                    "AND deleted_at IS NULL")),
        Index("uq_metadata_ssn_blind_index", "metadata_value", unique=True,
              postgresql_where=text("entity_type = 'member' AND metadata_key = 'ssn_blind_index' "
                                    "AND deleted_at IS NULL")),
        Index("uq_metadata_external_id", "entity_type", "metadata_value", unique=True,
              postgresql_where=text("metadata_key = 'external_id' AND deleted_at IS NULL")),
        Index("uq_metadata_blind_index_key", "metadata_key", unique=True,
              postgresql_where=text("entity_type = 'blind_index_key' AND deleted_at IS NULL")),
        # Break-the-glass grants, for the review queue (platform_0008, carecli.data.repositories.emergency).
        Index("ix_metadata_emergency_access", "created_at",
              postgresql_where=text("starts_with(metadata_key, 'emergency_access:') AND entity_type = 'member' "
                                    "AND deleted_at IS NULL")),
    )

    id: Mapped[uuid.UUID] = pk_column()
    entity_type: Mapped[str] = mapped_column(String(50))
    entity_id: Mapped[uuid.UUID] = mapped_column()
    metadata_key: Mapped[str] = mapped_column(String(100))
    metadata_value: Mapped[Any | None] = mapped_column(JSONB)
    deleted_at: Mapped[datetime | None] = deleted_column()
    created_at: Mapped[datetime | None] = now_column()
    updated_at: Mapped[datetime | None] = now_column()


class RiskFlag(PlatformBase):
    __tablename__ = "risk_flags"
    __table_args__ = (
        CheckConstraint(in_list("risk_type", RISK_TYPES), name="risk_type"),
        CheckConstraint(in_list("severity", SEVERITIES), name="severity"),
        Index("ix_risk_flags_call_record_id", "call_record_id"),
        Index("ix_risk_flags_member_id_created_at", "member_id", "created_at"),
        Index("ix_risk_flags_specialist_id_created_at", "specialist_id", "created_at"),
        # Worklist: open high and critical flags.
        Index("ix_risk_flags_urgent", "member_id", "created_at",
              postgresql_where=text("severity IN ('high', 'critical') AND deleted_at IS NULL")),
    )

    id: Mapped[uuid.UUID] = pk_column()
    call_record_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("call_records.id"))
    member_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("members.id"))
    specialist_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("specialists.id"))
    risk_type: Mapped[str] = mapped_column(String(50))
    severity: Mapped[str] = mapped_column(String(20))
    description: Mapped[str] = mapped_column(Text)
    deleted_at: Mapped[datetime | None] = deleted_column()
    created_at: Mapped[datetime | None] = now_column()
    updated_at: Mapped[datetime | None] = now_column()


class AuditLog(PlatformBase):
    """Who did what to which record; never holds PHI values."""

    __tablename__ = "audit_logs"
    __table_args__ = (
        Index("ix_audit_logs_entity", "entity_type", "entity_id", "created_at"),
        Index("ix_audit_logs_user_id_created_at", "user_id", "created_at"),
        Index("ix_audit_logs_created_at", "created_at"),
        # Actions done under an emergency grant (platform_0008): only marked rows are indexed.
        Index("ix_audit_logs_emergency_access", text("(new_values ->> 'emergency_access')"),
              postgresql_where=text("(new_values ->> 'emergency_access') IS NOT NULL")),
    )

    id: Mapped[uuid.UUID] = pk_column()
    # identity.users(id) by value: the seed has no FK here either.
    user_id: Mapped[uuid.UUID | None] = mapped_column()
    entity_type: Mapped[str] = mapped_column(String(50))
    entity_id: Mapped[uuid.UUID] = mapped_column()
    action: Mapped[str] = mapped_column(String(50))
    old_values: Mapped[Any | None] = mapped_column(JSONB)
    new_values: Mapped[Any | None] = mapped_column(JSONB)
    ip_address: Mapped[str | None] = mapped_column(INET)
    user_agent: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime | None] = now_column()


class MemberNamePrefix(PlatformBase):
    """Our table (platform_0010): every prefix of every word inside a live member's names, in name order.

    ``lane`` of Murphy-Lane gives ``l``, ``la``, ``lan``, ``lane``. Written only by
    statement-level triggers on ``members`` (see the migration); read by member search.
    """

    __tablename__ = "member_name_prefixes"

    prefix: Mapped[str] = mapped_column(Text(collation="C"), primary_key=True)
    last_key: Mapped[str] = mapped_column(Text(collation="C"), primary_key=True)
    first_key: Mapped[str] = mapped_column(Text(collation="C"), primary_key=True)
    member_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    #: the member's, for the newest/oldest order (in the primary key's INCLUDE)
    created_at: Mapped[datetime | None] = mapped_column()


class DataKey(PlatformBase):
    """Our table (not in the seed): envelope data keys, stored only wrapped by a master key."""

    __tablename__ = "data_keys"
    __table_args__ = (
        CheckConstraint(in_list("status", DATA_KEY_STATUSES), name="status"),
        # Exactly one key encrypts new values.
        Index("uq_data_keys_one_primary", "status", unique=True, postgresql_where=text("status = 'primary'")),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    wrapped_key: Mapped[bytes] = mapped_column(LargeBinary)
    master_key_id: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(20), server_default=text("'active'"))
    created_at: Mapped[datetime] = mapped_column(server_default=NOW)
    retired_at: Mapped[datetime | None] = mapped_column()


class AuditSealKey(PlatformBase):
    """Our table (not in the seed): keys that MAC the audit seals, stored only wrapped by a master key."""

    __tablename__ = "audit_seal_keys"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    wrapped_key: Mapped[bytes] = mapped_column(LargeBinary)
    master_key_id: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(server_default=NOW)


class AuditSeal(PlatformBase):
    """Our table (not in the seed): the hash chain of seals over audit_logs (carecli.data.audit_seal)."""

    __tablename__ = "audit_seals"
    __table_args__ = (
        CheckConstraint("kind IN ('seal', 'purge')", name="kind"),
        Index("ix_audit_seals_key_id", "key_id"),
    )

    seal_no: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    kind: Mapped[str] = mapped_column(String(10))
    range_start: Mapped[datetime | None] = mapped_column()
    range_end: Mapped[datetime] = mapped_column()
    bound_id: Mapped[uuid.UUID | None] = mapped_column()
    row_count: Mapped[int] = mapped_column(BigInteger)
    manifest: Mapped[bytes] = mapped_column(LargeBinary)
    prev_head: Mapped[bytes] = mapped_column(LargeBinary)
    head: Mapped[bytes] = mapped_column(LargeBinary)
    mac: Mapped[bytes] = mapped_column(LargeBinary)
    key_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("audit_seal_keys.id"))
    sealed_at: Mapped[datetime] = mapped_column(server_default=NOW)



class DeferredIndex(PlatformBase):
    """Our table (not in the seed): secondary indexes a bulk load dropped, to build again after it
    (carecli.data.deferred_indexes); a row exists exactly while its index may be missing."""

    __tablename__ = "deferred_indexes"

    schema_name: Mapped[str] = mapped_column(String(63), primary_key=True)
    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    table_name: Mapped[str] = mapped_column(String(63))
    definition: Mapped[str] = mapped_column(Text)
    #: column number (as text) -> statistics target, for the columns that had one set (ALTER INDEX)
    column_statistics: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    deferred_at: Mapped[datetime] = mapped_column(server_default=NOW)
    by_run: Mapped[uuid.UUID] = mapped_column()
    #: what dropped it (e.g. "import members"): no values
    reason: Mapped[str] = mapped_column(String(100))
    #: the database session of the load that dropped it (pg_backend_pid() and its backend_start)
    owner_pid: Mapped[int] = mapped_column(Integer)
    owner_started: Mapped[datetime] = mapped_column(DateTime(timezone=True))

class ImportDigest(PlatformBase):
    """Our table (not in the seed): per member an import loaded, the keyed digest of the source record it was
    loaded from and the transaction ids its rows had then (platform_0015, carecli.data.bulk.digests), so a
    re-run of the file knows that row unchanged without parsing it."""

    __tablename__ = "import_digests"
    __table_args__ = (Index("ix_import_digests_digest", "digest"),)

    entity_type: Mapped[str] = mapped_column(String(50), primary_key=True)
    entity_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    #: HMAC-SHA-256 of the source record under a key derived from the blind-index key, first 128 bits
    digest: Mapped[uuid.UUID] = mapped_column()
    #: the xmin of the member's row and of its number and blind-index metadata rows ("-" for none), "/"-joined
    state: Mapped[str] = mapped_column(String(64))


# Retention purge (migration platform_0007, carecli.data.retention): only the
# soft-deleted rows, so the purge finds old ones without reading live ones.
for _purged in (Member, Specialist, CallRecord, InsurancePlan, MemberInsurancePlan, SpecialistInsurancePlan,
                Metadata, RiskFlag):
    Index(f"ix_{_purged.__tablename__}_purgeable", _purged.__table__.c.deleted_at,
          postgresql_where=text("deleted_at IS NOT NULL"))
