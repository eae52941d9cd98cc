"""Typed SQLAlchemy mappings of the seed schema, one ``MetaData`` per database."""

from carecli.data.models.base import IdentityBase, PlatformBase
from carecli.data.models.identity import Role, Session, Token, User
from carecli.data.models.platform import (
    AuditLog,
    CallRecord,
    DataKey,
    InsurancePlan,
    Member,
    MemberInsurancePlan,
    MemberNamePrefix,
    Metadata,
    RiskFlag,
    Specialist,
    SpecialistInsurancePlan,
)

IDENTITY_METADATA = IdentityBase.metadata
PLATFORM_METADATA = PlatformBase.metadata

__all__ = [
    "IDENTITY_METADATA",
    "PLATFORM_METADATA",
    "AuditLog",
    "CallRecord",
    "DataKey",
    "MemberNamePrefix",
    "IdentityBase",
    "InsurancePlan",
    "Member",
    "MemberInsurancePlan",
    "Metadata",
    "PlatformBase",
    "RiskFlag",
    "Role",
    "Session",
    "Specialist",
    "SpecialistInsurancePlan",
    "Token",
    "User",
]
