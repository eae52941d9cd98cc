"""Identity database: ``roles``, ``users``, ``tokens``, ``sessions`` (seed schema)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import CheckConstraint, ForeignKey, Index, String, Text, text
from sqlalchemy.dialects.postgresql import INET, JSONB
from sqlalchemy.orm import Mapped, mapped_column

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

    id: Mapped[uuid.UUID] = pk_column()
    name: Mapped[str] = mapped_column(String(50), unique=True)
    description: Mapped[str | None] = mapped_column(Text)
    permissions: Mapped[Any | None] = mapped_column(JSONB)
    deleted_at: Mapped[datetime | None] = deleted_column()
    created_at: Mapped[datetime | None] = now_column()
    updated_at: Mapped[datetime | None] = now_column()


class User(IdentityBase):
    __tablename__ = "users"
    __table_args__ = (
        Index("ix_users_role_id", "role_id"),
        Index("ix_users_name", "last_name", "first_name", "id", postgresql_where=ACTIVE_DELETED_FILTER),
    )

    id: Mapped[uuid.UUID] = pk_column()
    # The identity provider's subject (Auth0 user id).
    external_user_id: Mapped[str] = mapped_column(String(255), unique=True)
    email: Mapped[str] = mapped_column(String(255), unique=True)
    first_name: Mapped[str | None] = mapped_column(String(100))
    last_name: Mapped[str | None] = mapped_column(String(100))
    role_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("roles.id"))
    is_active: Mapped[bool | None] = mapped_column(server_default=text("true"))
    last_login_at: Mapped[datetime | None] = mapped_column()
    deleted_at: Mapped[datetime | None] = deleted_column()
    created_at: Mapped[datetime | None] = now_column()
    updated_at: Mapped[datetime | None] = now_column()


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

    id: Mapped[uuid.UUID] = pk_column()
    user_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id"))
    token_type: Mapped[str] = mapped_column(String(20))
    token_hash: Mapped[str] = mapped_column(String(255))
    expires_at: Mapped[datetime] = mapped_column()
    scopes: Mapped[Any | None] = mapped_column(JSONB)
    is_revoked: Mapped[bool | None] = mapped_column(server_default=text("false"))
    deleted_at: Mapped[datetime | None] = deleted_column()
    created_at: Mapped[datetime | None] = now_column()


class Session(IdentityBase):
    __tablename__ = "sessions"
    __table_args__ = (
        Index("ix_sessions_user_id", "user_id"),
        Index("ix_sessions_expires_at", "expires_at", postgresql_where=ACTIVE_DELETED_FILTER),
    )

    id: Mapped[uuid.UUID] = pk_column()
    user_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id"))
    session_token: Mapped[str] = mapped_column(String(255), unique=True)
    ip_address: Mapped[str | None] = mapped_column(INET)
    user_agent: Mapped[str | None] = mapped_column(Text)
    expires_at: Mapped[datetime] = mapped_column()
    deleted_at: Mapped[datetime | None] = deleted_column()
    created_at: Mapped[datetime | None] = now_column()


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

    id: Mapped[uuid.UUID] = pk_column()
    kind: Mapped[str] = mapped_column(String(50))
    user_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id"))
    payload: Mapped[Any] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(server_default=text("now()"))
    attempts: Mapped[int] = mapped_column(server_default=text("0"))
    last_error: Mapped[str | None] = mapped_column(Text)
    done_at: Mapped[datetime | None] = mapped_column()
