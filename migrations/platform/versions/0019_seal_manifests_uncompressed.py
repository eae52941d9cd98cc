"""Platform: audit seal manifests are stored without compression (``STORAGE EXTERNAL``).

A seal's manifest is 40 bytes per audit row it covers, up to 100,000 rows: about
4 MB, half of it hashes and random id bits. PostgreSQL compressed each with pglz
on the way in, to 68 % of its size, and that took most of a seal's insert: six
manifests of 90,000 rows went into a table in 850 ms compressed and in 140-190 ms
stored as they are (PG 15, 2 cores). An import of 1M members writes 3M audit rows
and so 30 manifests, about 3.5 s of the server's CPU, in the last seconds of the
load, when the server is the bottleneck (index builds, ``ANALYZE``, the last
seal). The cost of not compressing is space: 40 bytes kept per audit row instead
of about 27, next to the 360 or so of the audit row itself.

``EXTERNAL`` keeps large values out of line in the TOAST table, as before, only
uncompressed. Manifests written before stay compressed and read as before: a
value's compression is its own, not the column's. The downgrade puts back the
default (``EXTENDED``).

Revision ID: platform_0019
Revises: platform_0018
Create Date: 2026-12-07
"""
from collections.abc import Sequence

from alembic import op

revision: str = "platform_0019"
down_revision: str | Sequence[str] | None = "platform_0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("ALTER TABLE audit_seals ALTER COLUMN manifest SET STORAGE EXTERNAL")


def downgrade() -> None:
    """Back to platform_0018: manifests compressed when they are large."""
    op.execute("ALTER TABLE audit_seals ALTER COLUMN manifest SET STORAGE EXTENDED")
