"""Declarative bases for the two databases and the shared column helpers."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import TYPE_CHECKING, ClassVar

from sqlalchemy import MetaData, Table, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# PostgreSQL's own default constraint names, so a schema built from the seed's
# CREATE TABLE statements and one built by our migrations name things alike.
NAMING_CONVENTION = {
    "pk": "%(table_name)s_pkey",
    "uq": "%(table_name)s_%(column_0_N_name)s_key",
    "fk": "%(table_name)s_%(column_0_name)s_fkey",
    "ck": "%(table_name)s_%(constraint_name)s_check",
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
}

NOW = text("now()")
ACTIVE_DELETED_FILTER = text("deleted_at IS NULL")


class IdentityBase(DeclarativeBase):
    """Tables of the identity database (users, roles, tokens, sessions)."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)

    if TYPE_CHECKING:
        # DeclarativeBase types ``__table__`` as any FromClause; every class
        # here is mapped from ``__tablename__``, so it is a real Table.
        __table__: ClassVar[Table]


class PlatformBase(DeclarativeBase):
    """Tables of the platform database (members, calls, plans, audit, ...)."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)

    if TYPE_CHECKING:
        # DeclarativeBase types ``__table__`` as any FromClause; every class
        # here is mapped from ``__tablename__``, so it is a real Table.
        __table__: ClassVar[Table]


def pk_column() -> Mapped[uuid.UUID]:
    """``id UUID PRIMARY KEY DEFAULT gen_random_uuid()`` (built into PostgreSQL 13+)."""
    return mapped_column(primary_key=True, server_default=text("gen_random_uuid()"))


def now_column() -> Mapped[datetime | None]:
    """``TIMESTAMP DEFAULT NOW()`` (created_at, updated_at); timestamps are naive UTC."""
    return mapped_column(server_default=NOW)


def deleted_column() -> Mapped[datetime | None]:
    """Soft-delete marker: set instead of deleting the row."""
    return mapped_column()


def in_list(column: str, values: tuple[str, ...]) -> str:
    """SQL for a CHECK that ``column`` holds one of ``values`` (NULL passes)."""
    quoted = ", ".join(f"'{value}'" for value in values)
    return f"{column} IN ({quoted})"
