"""Platform: the retention purge may delete old audit rows, under strict conditions; deleted-row indexes.

``audit_logs`` stays append-only (platform_0003) with one controlled
exception for ``carecli retention purge --audit``: a DELETE passes the
trigger only when all of these hold:

* the transaction set ``carecli.audit_purge_before`` (``SET LOCAL``) to a
  timestamp;
* that timestamp is at least six years back (the HIPAA floor for audit
  documentation): no setting can make recent rows deletable;
* the row was created before it;
* the current role is (a member of) the table's owner: the app role has no
  DELETE grant anyway, and a role that was given one still cannot purge.

UPDATE and TRUNCATE are rejected as before.

Small partial indexes on ``deleted_at`` (only soft-deleted rows are in them)
let the purge find old deleted rows without scanning the live ones.

Revision ID: platform_0007
Revises: platform_0006
Create Date: 2026-11-26
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "platform_0007"
down_revision: str | Sequence[str] | None = "platform_0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: the earliest an audit row may ever be purged, whatever the configuration says
AUDIT_FLOOR_YEARS = 6

PURGED_TABLES = ("members", "specialists", "call_records", "insurance_plans", "member_insurance_plans",
                 "specialist_insurance_plans", "metadata", "risk_flags")

_APPEND_ONLY = """
    CREATE OR REPLACE FUNCTION carecli_audit_logs_append_only() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION 'audit_logs is append-only: % is not allowed', TG_OP
            USING ERRCODE = 'insufficient_privilege';
    END
    $$
"""

_WITH_PURGE = f"""
    CREATE OR REPLACE FUNCTION carecli_audit_logs_append_only() RETURNS trigger
    LANGUAGE plpgsql AS $$
    DECLARE
        setting text := current_setting('carecli.audit_purge_before', true);
        purge_before timestamp;
    BEGIN
        IF TG_OP = 'DELETE' AND setting IS NOT NULL AND setting <> '' THEN
            purge_before := setting::timestamp;
            IF purge_before <= (now() AT TIME ZONE 'UTC') - interval '{AUDIT_FLOOR_YEARS} years'
               AND OLD.created_at < purge_before
               AND pg_has_role(current_user, (SELECT relowner FROM pg_class WHERE oid = TG_RELID), 'MEMBER')
            THEN
                RETURN OLD;
            END IF;
        END IF;
        RAISE EXCEPTION 'audit_logs is append-only: % is not allowed', TG_OP
            USING ERRCODE = 'insufficient_privilege';
    END
    $$
"""


def upgrade() -> None:
    """Let the owner purge audit rows older than the floor; index soft-deleted rows."""
    op.execute(_WITH_PURGE)
    for table in PURGED_TABLES:
        op.create_index(f"ix_{table}_purgeable", table, ["deleted_at"],
                        postgresql_where=sa.text("deleted_at IS NOT NULL"))


def downgrade() -> None:
    """Back to strictly append-only; drop the indexes."""
    for table in PURGED_TABLES:
        op.drop_index(f"ix_{table}_purgeable", table_name=table)
    op.execute(_APPEND_ONLY)
