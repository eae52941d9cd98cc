"""Platform: natural keys for batch imports, kept in ``metadata`` and indexed.

Imports match incoming rows to existing records on keys that other systems
know: a member's external member number, a keyed hash of their SSN (the
blind index; the SSN itself is encrypted with a random nonce and cannot be
compared), and an external id for call records and risk flags. They live in
``metadata`` as JSON strings; these partial unique indexes make the lookups
index scans and make a second live record with the same key impossible,
even with two imports running at once. The blind-index key itself (wrapped
by the master key) is one live ``metadata`` row, also unique.

Revision ID: platform_0006
Revises: platform_0005
Create Date: 2026-11-25
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "platform_0006"
down_revision: str | Sequence[str] | None = "platform_0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_LIVE = "deleted_at IS NULL"


def upgrade() -> None:
    """Add the natural-key indexes on metadata."""
    op.create_index("uq_metadata_member_number", "metadata", ["metadata_value"], unique=True,
                    postgresql_where=sa.text(f"entity_type = 'member' AND metadata_key = 'external_member_number' "
                                             f"AND {_LIVE}"))
    op.create_index("uq_metadata_ssn_blind_index", "metadata", ["metadata_value"], unique=True,
                    postgresql_where=sa.text(f"entity_type = 'member' AND metadata_key = 'ssn_blind_index' "
                                             f"AND {_LIVE}"))
    op.create_index("uq_metadata_external_id", "metadata", ["entity_type", "metadata_value"], unique=True,
                    postgresql_where=sa.text(f"metadata_key = 'external_id' AND {_LIVE}"))
    op.create_index("uq_metadata_blind_index_key", "metadata", ["metadata_key"], unique=True,
                    postgresql_where=sa.text(f"entity_type = 'blind_index_key' AND {_LIVE}"))


def downgrade() -> None:
    """Drop them."""
    for name in ("uq_metadata_blind_index_key", "uq_metadata_external_id", "uq_metadata_ssn_blind_index",
                 "uq_metadata_member_number"):
        op.drop_index(name, table_name="metadata")
