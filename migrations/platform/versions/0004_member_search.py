"""Platform: indexes for the member browser's search (carecli.data.repositories.member_search).

No contrib extension is needed: every index is a plain b-tree.

* ``ix_members_name_lower`` — the browser's name order, case-insensitive and
  byte-wise (``lower(...) COLLATE "C"``, the same on every server whatever its
  locale), ending in ``id`` for keyset paging. Because the order is "C", a
  last-name prefix (``smi%``) is a contiguous range of this index: a page of
  matches is read in order and the scan stops after one page, however many
  Smiths there are. Not partial, on purpose: PostgreSQL keeps statistics on
  index expressions only for non-partial indexes, and the planner needs them
  for ``lower(first_name)`` / ``lower(last_name)`` to choose between walking
  this index and a bitmap of matches (1% of members are soft-deleted: the
  queries filter them).
* ``ix_members_first_name_lower`` — first-name prefixes (partial: its
  statistics come from the index above).
* ``ix_members_phone_digits`` — phone numbers as digits only, so
  ``(555) 012-34`` finds ``+1 555 012 3456``; not partial, for statistics
  (``555`` matches nearly everyone, ``5550123`` a handful).
* ``ix_members_created`` — newest / oldest first, keyset on
  ``(coalesce(created_at, '-infinity'), id)`` (``created_at`` is nullable).

E-mail prefixes use ``ix_members_email_lower`` from the first revision.

Revision ID: platform_0004
Revises: platform_0003
Create Date: 2026-11-26
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "platform_0004"
down_revision: str | Sequence[str] | None = "platform_0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create the search indexes (plain CREATE INDEX: an empty or small table at migration time)."""
    op.create_index(
        "ix_members_name_lower", "members",
        [sa.literal_column('lower(last_name::text) COLLATE "C"'),
         sa.literal_column('lower(first_name::text) COLLATE "C"'), "id"],
        unique=False,
    )
    op.create_index(
        "ix_members_first_name_lower", "members",
        [sa.literal_column('lower(first_name::text) COLLATE "C"')],
        unique=False, postgresql_where=sa.text("deleted_at IS NULL"),
    )
    op.create_index(
        "ix_members_phone_digits", "members",
        [sa.literal_column("regexp_replace(phone::text, '\\D', '', 'g') text_pattern_ops")],
        unique=False,
    )
    op.create_index(
        "ix_members_created", "members",
        [sa.literal_column("COALESCE(created_at, '-infinity'::timestamp)"), "id"],
        unique=False, postgresql_where=sa.text("deleted_at IS NULL"),
    )
    # Statistics on the new index expressions exist only after an ANALYZE, and
    # autovacuum would not run one on a table that did not change; without
    # them the planner guesses 0.5% for every prefix. A sample: well under a
    # second on a million members.
    op.execute("ANALYZE members")


def downgrade() -> None:
    """Drop the search indexes."""
    op.drop_index("ix_members_created", table_name="members")
    op.drop_index("ix_members_phone_digits", table_name="members")
    op.drop_index("ix_members_first_name_lower", table_name="members")
    op.drop_index("ix_members_name_lower", table_name="members")
