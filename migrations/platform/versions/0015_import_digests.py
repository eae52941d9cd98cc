"""Platform: import_digests, how a re-run of an import file recognises the rows it already loaded.

For each member an import loaded, ``import_digests`` keeps a keyed digest of
the source record it was loaded from (HMAC-SHA-256 under a key derived from
the blind-index key, truncated to 128 bits and held as a uuid) and the
``state`` of the rows it then left: the transaction ids (``xmin``) of the
member's row and of its external-member-number and blind-index metadata
rows. A re-run whose record has the same digest, for a member whose rows
still have those transaction ids (nobody changed them since, by any path),
is unchanged without being parsed, matched or decrypted
(:mod:`carecli.data.bulk.digests`). Anything else, including a dump and
restore (new transaction ids), takes the full path, which records the
digest again.

One row per member (the primary key); the digest index serves the lookup by
digest. No foreign key: members are never deleted but by the retention
purge, which deletes their digests with them, and a digest of a member that
is gone matches nothing.

Revision ID: platform_0015
Revises: platform_0014
Create Date: 2026-12-05
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "platform_0015"
down_revision: str | Sequence[str] | None = "platform_0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "import_digests",
        sa.Column("entity_type", sa.String(length=50), nullable=False),
        sa.Column("entity_id", sa.Uuid(), nullable=False),
        sa.Column("digest", sa.Uuid(), nullable=False),
        sa.Column("state", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("entity_type", "entity_id", name=op.f("import_digests_pkey")),
    )
    op.create_index("ix_import_digests_digest", "import_digests", ["digest"])


def downgrade() -> None:
    op.drop_index("ix_import_digests_digest", table_name="import_digests")
    op.drop_table("import_digests")
