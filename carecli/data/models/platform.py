"""Platform database: members, specialists, calls, plans, enrollments, flags, metadata, audit."""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    Numeric,
    String,
    Text,
    UniqueConstraint,
    Uuid,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import INET, JSONB
from sqlalchemy.sql.elements import Label

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

    id = pk_column()
    # AES-256-GCM ciphertexts written by the application; never plaintext.
    encrypted_ssn = Column(LargeBinary)
    encrypted_dob = Column(LargeBinary)
    first_name = Column(String(100), nullable=False)
    last_name = Column(String(100), nullable=False)
    email = Column(String(255))
    phone = Column(String(20))
    address_line1 = Column(String(255))
    address_line2 = Column(String(255))
    city = Column(String(100))
    state = Column(String(2))
    zip_code = Column(String(10))
    status = Column(String(20), server_default=text("'active'"))
    deleted_at = deleted_column()
    created_at = now_column()
    updated_at = now_column()


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

    id = pk_column()
    user_id = Column(Uuid)
    phone = Column(String(20))
    license_number = Column(String(50))
    is_active = Column(Boolean, server_default=text("true"))
    deleted_at = deleted_column()
    created_at = now_column()
    updated_at = now_column()


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

    id = pk_column()
    member_id = Column(Uuid, ForeignKey("members.id"))
    specialist_id = Column(Uuid, ForeignKey("specialists.id"))
    call_type = Column(String(20), nullable=False)
    call_status = Column(String(20), nullable=False)
    scheduled_at = Column(DateTime)
    started_at = Column(DateTime)
    ended_at = Column(DateTime)
    duration_seconds = Column(Integer)
    call_notes = Column(Text)
    outcome = Column(String(50))
    follow_up_required = Column(Boolean, server_default=text("false"))
    follow_up_date = Column(Date)
    deleted_at = deleted_column()
    created_at = now_column()
    updated_at = now_column()


class InsurancePlan(PlatformBase):
    __tablename__ = "insurance_plans"
    __table_args__ = (
        CheckConstraint("premium_amount >= 0", name="premium_amount"),
        CheckConstraint("deductible_amount >= 0", name="deductible_amount"),
        CheckConstraint("copay_amount >= 0", name="copay_amount"),
        CheckConstraint("expiration_date >= effective_date", name="expires_after_effective"),
    )

    id = pk_column()
    plan_code = Column(String(50), unique=True, nullable=False)
    plan_name = Column(String(255), nullable=False)
    plan_type = Column(String(50))
    coverage_details = Column(JSONB)
    premium_amount = Column(MONEY)
    deductible_amount = Column(MONEY)
    copay_amount = Column(MONEY)
    is_active = Column(Boolean, server_default=text("true"))
    effective_date = Column(Date)
    expiration_date = Column(Date)
    deleted_at = deleted_column()
    created_at = now_column()
    updated_at = now_column()


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

    id = pk_column()
    member_id = Column(Uuid, ForeignKey("members.id"), nullable=False)
    insurance_plan_id = Column(Uuid, ForeignKey("insurance_plans.id"), nullable=False)
    enrollment_date = Column(Date, nullable=False)
    termination_date = Column(Date)
    status = Column(String(20), server_default=text("'active'"))
    is_primary = Column(Boolean, server_default=text("false"))
    coverage_percentage = Column(Numeric(5, 2), server_default=text("100.00"))
    notes = Column(Text)
    deleted_at = deleted_column()
    created_at = now_column()
    updated_at = now_column()


class SpecialistInsurancePlan(PlatformBase):
    __tablename__ = "specialist_insurance_plans"
    __table_args__ = (
        UniqueConstraint("specialist_id", "insurance_plan_id"),
        Index("ix_specialist_insurance_plans_insurance_plan_id", "insurance_plan_id", "specialist_id"),
    )

    id = pk_column()
    specialist_id = Column(Uuid, ForeignKey("specialists.id"), nullable=False)
    insurance_plan_id = Column(Uuid, ForeignKey("insurance_plans.id"), nullable=False)
    notes = Column(Text)
    deleted_at = deleted_column()
    created_at = now_column()
    updated_at = now_column()


#: a natural key (the import's member number, SSN blind index, external id) as its unique indexes hold it:
#: the JSON string's text, compared byte by byte (platform_0016); lookups by natural key name this expression
NATURAL_KEY_SQL = "(metadata_value #>> '{}') COLLATE \"C\""


class Metadata(PlatformBase):
    """Per-entity facts (the seed's extension point), keyed by (type, id, key)."""

    __tablename__ = "metadata"
    __table_args__ = (
        UniqueConstraint("entity_type", "entity_id", "metadata_key"),
        Index("uq_metadata_blind_index_key", "metadata_key", unique=True,
              postgresql_where=text("entity_type = 'blind_index_key' AND deleted_at IS NULL")),
        # Break-the-glass grants, for the review queue (platform_0008, carecli.data.repositories.emergency).
        Index("ix_metadata_emergency_access", "created_at",
              postgresql_where=text("starts_with(metadata_key, 'emergency_access:') AND entity_type = 'member' "
                                    "AND deleted_at IS NULL")),
    )

    id = pk_column()
    entity_type = Column(String(50), nullable=False)
    entity_id = Column(Uuid, nullable=False)
    metadata_key = Column(String(100), nullable=False)
    metadata_value = Column(JSONB)
    deleted_at = deleted_column()
    created_at = now_column()
    updated_at = now_column()


# Natural keys of batch imports (migration platform_0006, carecli.data.bulk), over the value's text in
# byte order (platform_0016: JSONB comparisons made them the dearest part of a load); the collation goes
# where an operator class would (see ix_members_name_folded).
def _natural_key(label: str) -> Label[Any]:
    return Metadata.metadata_value.op("#>>")(text("'{}'")).label(label)


Index("uq_metadata_member_number", _natural_key("number_text"), unique=True,
      postgresql_ops={"number_text": _BYTEWISE},
      postgresql_where=text("entity_type = 'member' AND metadata_key = 'external_member_number' "
                            "AND deleted_at IS NULL"))
Index("uq_metadata_ssn_blind_index", _natural_key("blind_text"), unique=True,
      postgresql_ops={"blind_text": _BYTEWISE},
      postgresql_where=text("entity_type = 'member' AND metadata_key = 'ssn_blind_index' AND deleted_at IS NULL"))
Index("uq_metadata_external_id", Metadata.entity_type, _natural_key("external_text"), unique=True,
      postgresql_ops={"external_text": _BYTEWISE},
      postgresql_where=text("metadata_key = 'external_id' AND deleted_at IS NULL"))


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

    id = pk_column()
    call_record_id = Column(Uuid, ForeignKey("call_records.id"), nullable=False)
    member_id = Column(Uuid, ForeignKey("members.id"), nullable=False)
    specialist_id = Column(Uuid, ForeignKey("specialists.id"), nullable=False)
    risk_type = Column(String(50), nullable=False)
    severity = Column(String(20), nullable=False)
    description = Column(Text, nullable=False)
    deleted_at = deleted_column()
    created_at = now_column()
    updated_at = now_column()


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

    id = pk_column()
    # identity.users(id) by value: the seed has no FK here either.
    user_id = Column(Uuid)
    entity_type = Column(String(50), nullable=False)
    entity_id = Column(Uuid, nullable=False)
    action = Column(String(50), nullable=False)
    old_values = Column(JSONB)
    new_values = Column(JSONB)
    ip_address = Column(INET)
    user_agent = Column(Text)
    created_at = now_column()


class MemberNamePrefix(PlatformBase):
    """Our table (platform_0010): every prefix of every word inside a live member's names, in name order.

    ``lane`` of Murphy-Lane gives ``l``, ``la``, ``lan``, ``lane``. Written only by
    statement-level triggers on ``members`` (see the migration); read by member search.
    """

    __tablename__ = "member_name_prefixes"

    prefix = Column(Text(collation="C"), primary_key=True)
    last_key = Column(Text(collation="C"), primary_key=True)
    first_key = Column(Text(collation="C"), primary_key=True)
    member_id = Column(Uuid, primary_key=True)
    #: the member's, for the newest/oldest order (in the primary key's INCLUDE)
    created_at = Column(DateTime)


class DataKey(PlatformBase):
    """Our table (not in the seed): envelope data keys, stored only wrapped by a master key."""

    __tablename__ = "data_keys"
    __table_args__ = (
        CheckConstraint(in_list("status", DATA_KEY_STATUSES), name="status"),
        # Exactly one key encrypts new values.
        Index("uq_data_keys_one_primary", "status", unique=True, postgresql_where=text("status = 'primary'")),
    )

    id = Column(Uuid, primary_key=True)
    wrapped_key = Column(LargeBinary, nullable=False)
    master_key_id = Column(String(64), nullable=False)
    status = Column(String(20), server_default=text("'active'"), nullable=False)
    created_at = Column(DateTime, server_default=NOW, nullable=False)
    retired_at = Column(DateTime)


class AuditSealKey(PlatformBase):
    """Our table (not in the seed): keys that MAC the audit seals, stored only wrapped by a master key."""

    __tablename__ = "audit_seal_keys"

    id = Column(Uuid, primary_key=True)
    wrapped_key = Column(LargeBinary, nullable=False)
    master_key_id = Column(String(64), nullable=False)
    created_at = Column(DateTime, server_default=NOW, nullable=False)


class AuditSeal(PlatformBase):
    """Our table (not in the seed): the hash chain of seals over audit_logs (carecli.data.audit_seal)."""

    __tablename__ = "audit_seals"
    __table_args__ = (
        CheckConstraint("kind IN ('seal', 'purge')", name="kind"),
        Index("ix_audit_seals_key_id", "key_id"),
    )

    seal_no = Column(BigInteger, primary_key=True, autoincrement=False)
    kind = Column(String(10), nullable=False)
    range_start = Column(DateTime)
    range_end = Column(DateTime, nullable=False)
    bound_id = Column(Uuid)
    row_count = Column(BigInteger, nullable=False)
    manifest = Column(LargeBinary, nullable=False)
    prev_head = Column(LargeBinary, nullable=False)
    head = Column(LargeBinary, nullable=False)
    mac = Column(LargeBinary, nullable=False)
    key_id = Column(Uuid, ForeignKey("audit_seal_keys.id"), nullable=False)
    sealed_at = Column(DateTime, server_default=NOW, nullable=False)



class DeferredIndex(PlatformBase):
    """Our table (not in the seed): secondary indexes a bulk load dropped, to build again after it
    (carecli.data.deferred_indexes); a row exists exactly while its index may be missing."""

    __tablename__ = "deferred_indexes"

    schema_name = Column(String(63), primary_key=True)
    name = Column(String(63), primary_key=True)
    table_name = Column(String(63), nullable=False)
    definition = Column(Text, nullable=False)
    #: column number (as text) -> statistics target, for the columns that had one set (ALTER INDEX)
    column_statistics = Column(JSONB, server_default=text("'{}'::jsonb"), nullable=False)
    deferred_at = Column(DateTime, server_default=NOW, nullable=False)
    by_run = Column(Uuid, nullable=False)
    #: what dropped it (e.g. "import members"): no values
    reason = Column(String(100), nullable=False)
    #: the database session of the load that dropped it (pg_backend_pid() and its backend_start)
    owner_pid = Column(Integer, nullable=False)
    owner_started = Column(DateTime(timezone=True), nullable=False)

class ImportDigest(PlatformBase):
    """Our table (not in the seed): per member an import loaded, the keyed digest of the source record it was
    loaded from and the transaction ids its rows had then (platform_0015, carecli.data.bulk.digests), so a
    re-run of the file knows that row unchanged without parsing it."""

    __tablename__ = "import_digests"
    __table_args__ = (Index("ix_import_digests_digest", "digest"),)

    entity_type = Column(String(50), primary_key=True)
    entity_id = Column(Uuid, primary_key=True)
    #: HMAC-SHA-256 of the source record under a key derived from the blind-index key, first 128 bits
    digest = Column(Uuid, nullable=False)
    #: the xmin of the member's row and of its number and blind-index metadata rows ("-" for none), "/"-joined
    state = Column(String(64), nullable=False)


# Retention purge (migration platform_0007, carecli.data.retention): only the
# soft-deleted rows, so the purge finds old ones without reading live ones.
for _purged in (Member, Specialist, CallRecord, InsurancePlan, MemberInsurancePlan, SpecialistInsurancePlan,
                Metadata, RiskFlag):
    Index(f"ix_{_purged.__tablename__}_purgeable", _purged.__table__.c.deleted_at,
          postgresql_where=text("deleted_at IS NOT NULL"))
