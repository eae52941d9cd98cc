"""Platform: the data_keys table for envelope encryption of PHI.

Not a seed table (the seed leaves room for ours): each row is a random
256-bit data key wrapped by a master key, identified inside every ciphertext
by its id. One row is 'primary' (encrypts new values), older ones are
'active' until no value uses them, then 'retired' (kept for old backups).

Revision ID: platform_0002
Revises: platform_0001
Create Date: 2026-11-25
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "platform_0002"
down_revision: str | Sequence[str] | None = "platform_0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create data_keys with one-primary enforcement."""
    op.create_table(
        "data_keys",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("wrapped_key", sa.LargeBinary(), nullable=False),
        sa.Column("master_key_id", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=20), server_default=sa.text("'active'"), nullable=False),
        sa.Column("created_at", sa.DateTime(), server_default=sa.text("now()"), nullable=False),
        sa.Column("retired_at", sa.DateTime(), nullable=True),
        sa.CheckConstraint("status IN ('primary', 'active', 'retired')", name=op.f("data_keys_status_check")),
        sa.PrimaryKeyConstraint("id", name=op.f("data_keys_pkey")),
    )
    op.create_index("uq_data_keys_one_primary", "data_keys", ["status"], unique=True,
                    postgresql_where=sa.text("status = 'primary'"))


def downgrade() -> None:
    """Drop data_keys; refused while any member value is encrypted, which would become unreadable."""
    encrypted = op.get_bind().execute(sa.text(
        "SELECT count(*) FROM members WHERE encrypted_ssn IS NOT NULL OR encrypted_dob IS NOT NULL"
    )).scalar_one()
    if encrypted:
        raise RuntimeError(
            f"{encrypted} members have encrypted SSN/DOB; dropping data_keys would make them unreadable. "
            "Clear those columns first if that is really intended."
        )
    op.drop_table("data_keys")
