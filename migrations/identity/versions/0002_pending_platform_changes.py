"""Identity database: pending_platform_changes, what the platform database still owes.

Not a seed table (the seed leaves room for ours). A user's deactivation or
reactivation also changes the platform database (their specialist record,
the audit rows of the change). Two databases cannot share a transaction, so
the identity transaction records those platform-side changes here; they are
applied at once when the platform database is reachable and otherwise by
``carecli sync`` later, then stamped ``done_at``.

Revision ID: identity_0002
Revises: identity_0001
Create Date: 2026-11-26
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "identity_0002"
down_revision: str | Sequence[str] | None = "identity_0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create pending_platform_changes with its kind CHECK and indexes."""
    op.create_table(
        "pending_platform_changes",
        sa.Column("id", sa.Uuid(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("kind", sa.String(length=50), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=True),
        sa.Column("payload", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("created_at", sa.DateTime(), server_default=sa.text("now()"), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("done_at", sa.DateTime(), nullable=True),
        sa.CheckConstraint("kind IN ('deactivate_specialist', 'reactivate_specialist', 'audit')",
                           name=op.f("pending_platform_changes_kind_check")),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("pending_platform_changes_user_id_fkey")),
        sa.PrimaryKeyConstraint("id", name=op.f("pending_platform_changes_pkey")),
    )
    op.create_index("ix_pending_platform_changes_user_id", "pending_platform_changes", ["user_id"], unique=False)
    op.create_index("ix_pending_platform_changes_open", "pending_platform_changes", ["created_at", "id"],
                    unique=False, postgresql_where=sa.text("done_at IS NULL"))


def downgrade() -> None:
    """Drop pending_platform_changes; refused while changes are still owed to the platform database."""
    owed = op.get_bind().execute(sa.text(
        "SELECT count(*) FROM pending_platform_changes WHERE done_at IS NULL")).scalar_one()
    if owed:
        raise RuntimeError(
            f"{owed} platform changes (specialist status, audit rows) are still pending; "
            "run `carecli sync` first so they are not lost."
        )
    op.drop_table("pending_platform_changes")
