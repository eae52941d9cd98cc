"""Platform: sealed audit history (our tables; the seed's audit_logs is unchanged).

``audit_seal_keys`` holds the seal keys, random 256-bit HMAC keys wrapped by
the master key like the data keys. ``audit_seals`` is a hash chain of seals:
each covers the audit rows created in ``[range_start, range_end)`` (a seal),
or records audit rows a retention purge removed (a purge seal), with a
manifest of the rows (id, created_at, digest), the previous seal's head, its
own head and an HMAC of the head under a seal key. It is append-only for
every role, as audit_logs is (see carecli/data/audit_seal.py).

Revision ID: platform_0012
Revises: platform_0011
Create Date: 2026-12-03
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "platform_0012"
down_revision: str | Sequence[str] | None = "platform_0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create the seal keys, the seals, and the seals' append-only triggers."""
    op.create_table(
        "audit_seal_keys",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("wrapped_key", sa.LargeBinary(), nullable=False),
        sa.Column("master_key_id", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("audit_seal_keys_pkey")),
    )
    op.create_table(
        "audit_seals",
        sa.Column("seal_no", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("kind", sa.String(length=10), nullable=False),
        sa.Column("range_start", sa.DateTime(), nullable=True),
        sa.Column("range_end", sa.DateTime(), nullable=False),
        sa.Column("bound_id", sa.Uuid(), nullable=True),
        sa.Column("row_count", sa.BigInteger(), nullable=False),
        sa.Column("manifest", sa.LargeBinary(), nullable=False),
        sa.Column("prev_head", sa.LargeBinary(), nullable=False),
        sa.Column("head", sa.LargeBinary(), nullable=False),
        sa.Column("mac", sa.LargeBinary(), nullable=False),
        sa.Column("key_id", sa.Uuid(), nullable=False),
        sa.Column("sealed_at", sa.DateTime(), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("kind IN ('seal', 'purge')", name=op.f("audit_seals_kind_check")),
        sa.ForeignKeyConstraint(["key_id"], ["audit_seal_keys.id"], name=op.f("audit_seals_key_id_fkey")),
        sa.PrimaryKeyConstraint("seal_no", name=op.f("audit_seals_pkey")),
    )
    op.create_index("ix_audit_seals_key_id", "audit_seals", ["key_id"])
    # The seals are history: nobody changes or removes one (the purge adds a purge seal instead).
    op.execute(
        """
        CREATE FUNCTION carecli_audit_seals_append_only() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'audit_seals is append-only: % is not allowed', TG_OP
                USING ERRCODE = 'insufficient_privilege';
        END
        $$
        """
    )
    op.execute("CREATE TRIGGER audit_seals_no_update_delete BEFORE UPDATE OR DELETE ON audit_seals "
               "FOR EACH ROW EXECUTE FUNCTION carecli_audit_seals_append_only()")
    op.execute("CREATE TRIGGER audit_seals_no_truncate BEFORE TRUNCATE ON audit_seals "
               "FOR EACH STATEMENT EXECUTE FUNCTION carecli_audit_seals_append_only()")


def downgrade() -> None:
    """Drop the seals and their keys (the audit rows stay; they are no longer sealed)."""
    op.execute("DROP TRIGGER audit_seals_no_truncate ON audit_seals")
    op.execute("DROP TRIGGER audit_seals_no_update_delete ON audit_seals")
    op.execute("DROP FUNCTION carecli_audit_seals_append_only()")
    op.drop_index("ix_audit_seals_key_id", table_name="audit_seals")
    op.drop_table("audit_seals")
    op.drop_table("audit_seal_keys")
