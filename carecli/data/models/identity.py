"""Identity database: ``roles``, ``users``, ``tokens``, ``sessions`` (seed schema)."""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    Uuid,
    text,
)
from sqlalchemy.dialects.postgresql import INET, JSONB

from carecli.data.models.base import (
    ACTIVE_DELETED_FILTER,
    IdentityBase,
    deleted_column,
    in_list,
    now_column,
    pk_column,
)
from carecli.data.models.enums import TOKEN_TYPES


class Role(IdentityBase):
    __tablename__ = "roles"

    id = pk_column()
    name = Column(String(50), unique=True, nullable=False)
    description = Column(Text)
    permissions = Column(JSONB)
    deleted_at = deleted_column()
    created_at = now_column()
    updated_at = now_column()


class User(IdentityBase):
    __tablename__ = "users"
    __table_args__ = (
        Index("ix_users_role_id", "role_id"),
        Index("ix_users_name", "last_name", "first_name", "id", postgresql_where=ACTIVE_DELETED_FILTER),
    )

    id = pk_column()
    # The identity provider's subject (Auth0 user id).
    external_user_id = Column(String(255), unique=True, nullable=False)
    email = Column(String(255), unique=True, nullable=False)
    first_name = Column(String(100))
    last_name = Column(String(100))
    role_id = Column(Uuid, ForeignKey("roles.id"))
    is_active = Column(Boolean, server_default=text("true"))
    last_login_at = Column(DateTime)
    deleted_at = deleted_column()
    created_at = now_column()
    updated_at = now_column()


class Token(IdentityBase):
    __tablename__ = "tokens"
    __table_args__ = (
        CheckConstraint(in_list("token_type", TOKEN_TYPES), name="token_type"),
        Index("ix_tokens_user_id", "user_id"),
        # Presented tokens are looked up by hash.
        Index("ix_tokens_token_hash", "token_hash"),
        Index("ix_tokens_expires_at", "expires_at", postgresql_where=ACTIVE_DELETED_FILTER),
        # An SSH key (token_hash = its fingerprint) belongs to one user at a time (identity_0003).
        Index("ux_tokens_live_ssh_key", "token_hash", unique=True, postgresql_where=text(
            "token_type = 'ssh_key' AND deleted_at IS NULL AND is_revoked IS NOT TRUE")),
    )

    id = pk_column()
    user_id = Column(Uuid, ForeignKey("users.id"))
    token_type = Column(String(20), nullable=False)
    token_hash = Column(String(255), nullable=False)
    expires_at = Column(DateTime, nullable=False)
    scopes = Column(JSONB)
    is_revoked = Column(Boolean, server_default=text("false"))
    deleted_at = deleted_column()
    created_at = now_column()


class Session(IdentityBase):
    __tablename__ = "sessions"
    __table_args__ = (
        Index("ix_sessions_user_id", "user_id"),
        Index("ix_sessions_expires_at", "expires_at", postgresql_where=ACTIVE_DELETED_FILTER),
    )

    id = pk_column()
    user_id = Column(Uuid, ForeignKey("users.id"))
    session_token = Column(String(255), unique=True, nullable=False)
    ip_address = Column(INET)
    user_agent = Column(Text)
    expires_at = Column(DateTime, nullable=False)
    deleted_at = deleted_column()
    created_at = now_column()


#: What ``pending_platform_changes.kind`` may say.
PENDING_CHANGE_KINDS = ("deactivate_specialist", "reactivate_specialist", "audit")


class PendingPlatformChange(IdentityBase):
    """Our table (not in the seed): platform-side changes an identity change still owes.

    Written in the same identity transaction as the change; applied at once
    when the platform database is reachable, else by ``carecli sync``.
    """

    __tablename__ = "pending_platform_changes"
    __table_args__ = (
        CheckConstraint(in_list("kind", PENDING_CHANGE_KINDS), name="kind"),
        Index("ix_pending_platform_changes_user_id", "user_id"),
        # `carecli sync` walks the open ones in order.
        Index("ix_pending_platform_changes_open", "created_at", "id", postgresql_where=text("done_at IS NULL")),
    )

    id = pk_column()
    kind = Column(String(50), nullable=False)
    user_id = Column(Uuid, ForeignKey("users.id"))
    payload = Column(JSONB, nullable=False)
    created_at = Column(DateTime, server_default=text("now()"), nullable=False)
    attempts = Column(Integer, server_default=text("0"), nullable=False)
    last_error = Column(Text)
    done_at = Column(DateTime)
