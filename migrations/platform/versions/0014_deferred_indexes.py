"""Platform: deferred_indexes, the record of secondary indexes a bulk load dropped to build after the data.

A large import (``carecli import``, see carecli/data/deferred_indexes.py)
drops the secondary, non-unique indexes carecli's migrations made on
``members``, ``metadata`` and ``audit_logs``, loads, then builds them again the
way pg_restore does. Each dropped index's exact definition
(``pg_get_indexdef``) and the statistics targets of its columns are written
here in the transaction that drops it, so a load killed at any point leaves
what is needed to build it again; the row is deleted in the transaction that
builds the index. ``owner_pid``/``owner_started`` name the database session
of the load that dropped it: while that session lives the index is its to
build, once it is gone anyone may (the next import, ``carecli db upgrade``,
``carecli db rebuild-indexes``).

The downgrade first builds every index still recorded (so no index is lost
with the record), then drops the table.

Revision ID: platform_0014
Revises: platform_0013
Create Date: 2026-12-17
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from carecli.data.deferred_indexes import checked_definition

revision: str = "platform_0014"
down_revision: str | Sequence[str] | None = "platform_0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "deferred_indexes",
        sa.Column("schema_name", sa.String(length=63), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("table_name", sa.String(length=63), nullable=False),
        sa.Column("definition", sa.Text(), nullable=False),
        sa.Column("column_statistics", postgresql.JSONB(astext_type=sa.Text()),
                  server_default=sa.text("'{}'::jsonb"), nullable=False),
        sa.Column("deferred_at", sa.DateTime(), server_default=sa.text("now()"), nullable=False),
        sa.Column("by_run", sa.Uuid(), nullable=False),
        sa.Column("reason", sa.String(length=100), nullable=False),
        sa.Column("owner_pid", sa.Integer(), nullable=False),
        sa.Column("owner_started", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("schema_name", "name", name=op.f("deferred_indexes_pkey")),
    )


def downgrade() -> None:
    """Build every index still recorded (a load killed while they were dropped), then drop the record."""
    bind = op.get_bind()
    rows = bind.execute(sa.text(
        "SELECT d.definition, d.schema_name, d.name, d.column_statistics, d.table_name FROM deferred_indexes d "
        "ORDER BY d.table_name, d.name")).all()
    for definition, schema, name, statistics, table in rows:
        qualified = bind.execute(sa.text("SELECT quote_ident(:s) || '.' || quote_ident(:n)"),
                                 {"s": schema, "n": name}).scalar_one()
        exists = bind.execute(sa.text("SELECT to_regclass(:q) IS NOT NULL"), {"q": qualified}).scalar_one()
        if not exists:
            # As recorded (never through a parameter parser), once known to be that index's CREATE INDEX.
            bind.exec_driver_sql(checked_definition(bind, definition, schema, name, table))
            for column, target in sorted((statistics or {}).items(), key=lambda item: int(item[0])):
                bind.exec_driver_sql(f"ALTER INDEX {qualified} ALTER COLUMN {int(column)} "
                                     f"SET STATISTICS {int(target)}")
    op.drop_table("deferred_indexes")
