"""Platform: the import's natural-key indexes compare text, not JSONB.

``uq_metadata_member_number``, ``uq_metadata_ssn_blind_index`` and
``uq_metadata_external_id`` (``platform_0006``) indexed ``metadata_value``
itself, a JSONB. Every insert into them compares JSONB values, which
PostgreSQL does through its generic container comparison (an iterator per
side, per comparison): on a 200,000-member load those two indexes of the
member keys cost 1.7 s of the 3.3 s a binary COPY of the 400,000 metadata rows
into the real table takes (PG 15, 2 cores; issue 19). Indexed as the value's
text, ``(metadata_value #>> '{}') COLLATE "C"`` (byte order, no locale), the
same COPY takes 2.5 s.

The keys are JSON strings (the import writes nothing else under these
metadata keys), and a JSON string's ``#>> '{}'`` is the string itself, so
what is unique stays what it was. The lookups (``carecli.data.bulk.kinds.
metadata_owners``) and the blind-index backfill's ``ON CONFLICT`` name the
same expression, so they still read these indexes. Were two live rows to hold
values of different JSON types with one text (a number 123 and a string
"123", which no carecli path writes), the upgrade would stop on the unique
violation and change nothing.

The downgrade re-creates the three indexes exactly as ``platform_0006`` did.

Revision ID: platform_0016
Revises: platform_0015
Create Date: 2026-12-07
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "platform_0016"
down_revision: str | Sequence[str] | None = "platform_0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_LIVE = "deleted_at IS NULL"
_KEY_TEXT = sa.literal_column("(metadata_value #>> '{}') COLLATE \"C\"")
#: name -> (leading columns, predicate)
_INDEXES = {
    "uq_metadata_member_number": (
        [], f"entity_type = 'member' AND metadata_key = 'external_member_number' AND {_LIVE}"),
    "uq_metadata_ssn_blind_index": (
        [], f"entity_type = 'member' AND metadata_key = 'ssn_blind_index' AND {_LIVE}"),
    "uq_metadata_external_id": (["entity_type"], f"metadata_key = 'external_id' AND {_LIVE}"),
}


def upgrade() -> None:
    """Each index again, over the value's text in byte order."""
    for name, (leading, where) in _INDEXES.items():
        op.drop_index(name, table_name="metadata")
        op.create_index(name, "metadata", [*leading, _KEY_TEXT], unique=True, postgresql_where=sa.text(where))


def downgrade() -> None:
    """Back to platform_0006's indexes over the JSONB value."""
    for name, (leading, where) in _INDEXES.items():
        op.drop_index(name, table_name="metadata")
        op.create_index(name, "metadata", [*leading, "metadata_value"], unique=True, postgresql_where=sa.text(where))
