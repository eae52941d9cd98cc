"""Platform: index diet on members (every index left is used by a repository query).

Measured on 200,000 seeded members (PostgreSQL 15, ``benchmarks/search_bench.py``
then ``pg_stat_user_indexes``, and EXPLAIN of the repository queries):

* ``ix_members_name`` (last_name, first_name, id; live rows) is used by no
  query since ``platform_0004``/``platform_0009``: search sorts and pages by
  the folded names (``ix_members_name_folded``, ``ix_members_first_name_keys``).
  Dropped.
* ``ix_members_phone`` (phone; live rows) is never searched by: phone search
  matches digits only (``ix_members_phone_digits``). The planner only picked
  it as the smallest index to count live rows from; ``ix_members_status`` and
  ``ix_members_created`` serve those counts as well. Dropped.
* ``ix_members_status_name`` (status, last_name, first_name, id; live rows):
  only its leading ``status`` was ever used (the status filter and the count
  of one status); the raw names after it cannot give the folded order search
  sorts by. Replaced by ``ix_members_status`` (status; live rows): one short,
  deduplicated key per member instead of three columns.

Together these were ~3 s of the ~8.6 s members' indexes cost a 200,000-member
import (issue 19). The seed's own indexes (primary keys, metadata's
``UNIQUE(entity_type, entity_id, metadata_key)``) are untouched, and so are
metadata's and audit_logs' (each is used by a query, see the README).

The downgrade re-creates the three indexes exactly as ``platform_0001`` made them.

Revision ID: platform_0013
Revises: platform_0012
Create Date: 2026-12-10
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "platform_0013"
down_revision: str | Sequence[str] | None = "platform_0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_LIVE = sa.text("deleted_at IS NULL")


def upgrade() -> None:
    """Drop the members indexes no query uses; keep a status index of one column."""
    op.create_index("ix_members_status", "members", ["status"], unique=False, postgresql_where=_LIVE)
    op.drop_index("ix_members_status_name", table_name="members")
    op.drop_index("ix_members_phone", table_name="members")
    op.drop_index("ix_members_name", table_name="members")


def downgrade() -> None:
    """Re-create the three indexes exactly as platform_0001 did; drop the status index."""
    op.create_index("ix_members_name", "members", ["last_name", "first_name", "id"], unique=False,
                    postgresql_where=_LIVE)
    op.create_index("ix_members_phone", "members", ["phone"], unique=False, postgresql_where=_LIVE)
    op.create_index("ix_members_status_name", "members", ["status", "last_name", "first_name", "id"], unique=False,
                    postgresql_where=_LIVE)
    op.drop_index("ix_members_status", table_name="members")
