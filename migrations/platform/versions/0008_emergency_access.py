"""Platform: indexes for break-the-glass emergency access.

Grants live in ``metadata`` (one row per grant, ``metadata_key =
'emergency_access:<grant id>'`` on the member); the review queue lists them
through a small partial index instead of scanning every member's metadata.
Actions done under a grant carry its id in ``audit_logs.new_values
->> 'emergency_access'``; a partial expression index (only marked rows are in
it, so ordinary audit inserts pay nothing) counts and lists them.

Revision ID: platform_0008
Revises: platform_0007
Create Date: 2026-12-02
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "platform_0008"
down_revision: str | Sequence[str] | None = "platform_0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

GRANTS = "starts_with(metadata_key, 'emergency_access:') AND entity_type = 'member' AND deleted_at IS NULL"
MARKER = "(new_values ->> 'emergency_access')"


def upgrade() -> None:
    """Add the grant and marker indexes."""
    op.create_index("ix_metadata_emergency_access", "metadata", ["created_at"],
                    postgresql_where=sa.text(GRANTS))
    op.create_index("ix_audit_logs_emergency_access", "audit_logs", [sa.text(MARKER)],
                    postgresql_where=sa.text(f"{MARKER} IS NOT NULL"))


def downgrade() -> None:
    """Drop them."""
    op.drop_index("ix_audit_logs_emergency_access", table_name="audit_logs")
    op.drop_index("ix_metadata_emergency_access", table_name="metadata")
