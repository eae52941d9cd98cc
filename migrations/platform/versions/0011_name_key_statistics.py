"""Platform: statistics on the folded names detailed enough that name searches get the same plan every day.

The planner reads the statistics of ``carecli_fold(last_name)`` and
``carecli_fold(first_name)`` from the expression indexes that hold them
(``ix_members_name_folded``, ``ix_members_first_name_keys``). With the
default statistics target (100: a 30,000-row sample, 100 common values, 100
histogram buckets) a name prefix's estimate depends on where the bucket
bounds happen to fall: on 1M members ``smi`` (3,836 members) was estimated at
95, 97, 98 and 9,638 rows by five ANALYZEs in a row. The plan a search gets
(read its matches then sort them, or walk the creation order and test each
row; an exact count or an estimate) then changed from one ANALYZE to the
next: ``'smi', newest first`` took 9 ms after one and 33 ms after another.

A target of 1,000 on these four index columns keeps up to 1,000 common
names with their frequencies (the common names are the expensive prefixes),
and the estimates stay within a few percent (3,722-3,970 for ``smi`` over
five ANALYZEs). ANALYZE of members samples 300,000 rows instead of 30,000:
on 1M members 4.5 s instead of 0.4 s, in autovacuum's background.

Revision ID: platform_0011
Revises: platform_0010
Create Date: 2026-12-03
"""
from collections.abc import Sequence

from alembic import op

revision: str = "platform_0011"
down_revision: str | Sequence[str] | None = "platform_0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: (index, column number) of each folded name
NAME_KEYS = (("ix_members_name_folded", 1), ("ix_members_name_folded", 2),
             ("ix_members_first_name_keys", 1), ("ix_members_first_name_keys", 2))
STATISTICS_TARGET = 1000


def _set(target: int) -> None:
    for index, column in NAME_KEYS:
        op.execute(f"ALTER INDEX {index} ALTER COLUMN {column} SET STATISTICS {target}")


def upgrade() -> None:
    _set(STATISTICS_TARGET)
    op.execute("ANALYZE members")


def downgrade() -> None:
    """Back to the server's default statistics target for these columns."""
    _set(-1)
    op.execute("ANALYZE members")
