"""The two databases' tables as SQLAlchemy Core ``Table`` objects, and the shared column helpers.

carecli reads and writes with Core statements only (``select(Member.id, ...)``, ``insert(AuditLog)``);
it maps no rows to objects. So a table is written as a class whose attributes are its ``Column``
objects, in the order of the seed's ``CREATE TABLE``, and :class:`TableModel` makes the ``Table``
from them when the class is made (``Member.__table__``; ``Member.first_name`` *is* that table's
column). The class stands for its table in a statement (``select(Member)``, ``update(Member)``)
through ``__clause_element__``, SQLAlchemy's own protocol for that.

Why not the ORM's declarative mapping: every process of ours starts by importing these, and the
mapping's cost (``sqlalchemy.orm`` itself, a mapper and instrumentation per class, the annotations
evaluated) was about a tenth of a second of the app's launch, for mapped classes nothing used.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import Column, DateTime, MetaData, Table, Uuid, text

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


class TableModel:
    """A table: subclasses set ``__tablename__``, optionally ``__table_args__`` (constraints and
    indexes, as for ``Table``), and one ``Column`` attribute per column, named by the attribute."""

    metadata: ClassVar[MetaData]
    __tablename__: ClassVar[str]
    __table_args__: ClassVar[tuple[Any, ...]] = ()
    __table__: ClassVar[Table]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__tablename__" not in cls.__dict__:  # a database's base class
            return
        columns: list[Column[Any]] = []
        for key, value in cls.__dict__.items():  # in the order written
            if isinstance(value, Column):
                if value.key is None:
                    value.key = key
                if value.name is None:
                    value.name = key
                columns.append(value)
        cls.__table__ = Table(cls.__tablename__, cls.metadata, *columns, *cls.__dict__.get("__table_args__", ()))

    @classmethod
    def __clause_element__(cls) -> Table:
        """The table, wherever a statement takes the class (``select(Member)``, ``update(Member)``)."""
        return cls.__table__


class IdentityBase(TableModel):
    """Tables of the identity database (users, roles, tokens, sessions)."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class PlatformBase(TableModel):
    """Tables of the platform database (members, calls, plans, audit, ...)."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def pk_column() -> Column[uuid.UUID]:
    """``id UUID PRIMARY KEY DEFAULT gen_random_uuid()`` (built into PostgreSQL 13+)."""
    return Column(Uuid, primary_key=True, server_default=text("gen_random_uuid()"))


def now_column() -> Column[datetime]:
    """``TIMESTAMP DEFAULT NOW()`` (created_at, updated_at); timestamps are naive UTC."""
    return Column(DateTime, server_default=NOW)


def deleted_column() -> Column[datetime]:
    """Soft-delete marker: set instead of deleting the row."""
    return Column(DateTime)


def in_list(column: str, values: tuple[str, ...]) -> str:
    """SQL for a CHECK that ``column`` holds one of ``values`` (NULL passes)."""
    quoted = ", ".join(f"'{value}'" for value in values)
    return f"{column} IN ({quoted})"
