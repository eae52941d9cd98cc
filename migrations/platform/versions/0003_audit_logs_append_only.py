"""Platform: audit_logs is append-only.

Triggers reject UPDATE, DELETE and TRUNCATE on audit_logs for every role,
the table owner included (a superuser can still drop triggers: that is what
`carecli db grants` and least-privilege roles are for).

Revision ID: platform_0003
Revises: platform_0002
Create Date: 2026-11-25
"""
from collections.abc import Sequence

from alembic import op

revision: str = "platform_0003"
down_revision: str | Sequence[str] | None = "platform_0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add the rejecting function and its row and statement triggers."""
    op.execute(
        """
        CREATE FUNCTION carecli_audit_logs_append_only() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'audit_logs is append-only: % is not allowed', TG_OP
                USING ERRCODE = 'insufficient_privilege';
        END
        $$
        """
    )
    op.execute(
        "CREATE TRIGGER audit_logs_no_update_delete BEFORE UPDATE OR DELETE ON audit_logs "
        "FOR EACH ROW EXECUTE FUNCTION carecli_audit_logs_append_only()"
    )
    op.execute(
        "CREATE TRIGGER audit_logs_no_truncate BEFORE TRUNCATE ON audit_logs "
        "FOR EACH STATEMENT EXECUTE FUNCTION carecli_audit_logs_append_only()"
    )


def downgrade() -> None:
    """Remove the triggers and their function."""
    op.execute("DROP TRIGGER audit_logs_no_truncate ON audit_logs")
    op.execute("DROP TRIGGER audit_logs_no_update_delete ON audit_logs")
    op.execute("DROP FUNCTION carecli_audit_logs_append_only()")
