"""Platform database, first revision: the seed's tables.

Creates members, specialists, call_records, insurance_plans,
member_insurance_plans, specialist_insurance_plans, metadata, risk_flags and
audit_logs exactly as ``shared/seed/datastores.md`` defines them, except for
the one foreign key that cannot exist: ``specialists.user_id`` refers to
``users(id)`` in the identity database, so the column is kept and the
application enforces the reference. Added for the DBA: indexes on foreign
keys and on the columns the app filters and sorts by (partial on
``deleted_at IS NULL`` where only live rows are searched), CHECK constraints
for the enumerated values the seed lists in its comments and for obvious
ranges, and one live primary plan per member.

Revision ID: platform_0001
Revises:
Create Date: 2026-11-25
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

# revision identifiers, used by Alembic.
revision: str = 'platform_0001'
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create the seed tables with their constraints and indexes."""
    op.create_table('audit_logs',
    sa.Column('id', sa.Uuid(), server_default=sa.text('gen_random_uuid()'), nullable=False),
    sa.Column('user_id', sa.Uuid(), nullable=True),
    sa.Column('entity_type', sa.String(length=50), nullable=False),
    sa.Column('entity_id', sa.Uuid(), nullable=False),
    sa.Column('action', sa.String(length=50), nullable=False),
    sa.Column('old_values', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.Column('new_values', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.Column('ip_address', postgresql.INET(), nullable=True),
    sa.Column('user_agent', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(), server_default=sa.text('now()'), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('audit_logs_pkey'))
    )
    op.create_index('ix_audit_logs_created_at', 'audit_logs', ['created_at'], unique=False)
    op.create_index('ix_audit_logs_entity', 'audit_logs', ['entity_type', 'entity_id', 'created_at'], unique=False)
    op.create_index('ix_audit_logs_user_id_created_at', 'audit_logs', ['user_id', 'created_at'], unique=False)
    op.create_table('insurance_plans',
    sa.Column('id', sa.Uuid(), server_default=sa.text('gen_random_uuid()'), nullable=False),
    sa.Column('plan_code', sa.String(length=50), nullable=False),
    sa.Column('plan_name', sa.String(length=255), nullable=False),
    sa.Column('plan_type', sa.String(length=50), nullable=True),
    sa.Column('coverage_details', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.Column('premium_amount', sa.Numeric(precision=10, scale=2), nullable=True),
    sa.Column('deductible_amount', sa.Numeric(precision=10, scale=2), nullable=True),
    sa.Column('copay_amount', sa.Numeric(precision=10, scale=2), nullable=True),
    sa.Column('is_active', sa.Boolean(), server_default=sa.text('true'), nullable=True),
    sa.Column('effective_date', sa.Date(), nullable=True),
    sa.Column('expiration_date', sa.Date(), nullable=True),
    sa.Column('deleted_at', sa.DateTime(), nullable=True),
    sa.Column('created_at', sa.DateTime(), server_default=sa.text('now()'), nullable=True),
    sa.Column('updated_at', sa.DateTime(), server_default=sa.text('now()'), nullable=True),
    sa.CheckConstraint('copay_amount >= 0', name=op.f('insurance_plans_copay_amount_check')),
    sa.CheckConstraint('deductible_amount >= 0', name=op.f('insurance_plans_deductible_amount_check')),
    sa.CheckConstraint('expiration_date >= effective_date', name=op.f('insurance_plans_expires_after_effective_check')),
    sa.CheckConstraint('premium_amount >= 0', name=op.f('insurance_plans_premium_amount_check')),
    sa.PrimaryKeyConstraint('id', name=op.f('insurance_plans_pkey')),
    sa.UniqueConstraint('plan_code', name=op.f('insurance_plans_plan_code_key'))
    )
    op.create_table('members',
    sa.Column('id', sa.Uuid(), server_default=sa.text('gen_random_uuid()'), nullable=False),
    sa.Column('encrypted_ssn', sa.LargeBinary(), nullable=True),
    sa.Column('encrypted_dob', sa.LargeBinary(), nullable=True),
    sa.Column('first_name', sa.String(length=100), nullable=False),
    sa.Column('last_name', sa.String(length=100), nullable=False),
    sa.Column('email', sa.String(length=255), nullable=True),
    sa.Column('phone', sa.String(length=20), nullable=True),
    sa.Column('address_line1', sa.String(length=255), nullable=True),
    sa.Column('address_line2', sa.String(length=255), nullable=True),
    sa.Column('city', sa.String(length=100), nullable=True),
    sa.Column('state', sa.String(length=2), nullable=True),
    sa.Column('zip_code', sa.String(length=10), nullable=True),
    sa.Column('status', sa.String(length=20), server_default=sa.text("'active'"), nullable=True),
    sa.Column('deleted_at', sa.DateTime(), nullable=True),
    sa.Column('created_at', sa.DateTime(), server_default=sa.text('now()'), nullable=True),
    sa.Column('updated_at', sa.DateTime(), server_default=sa.text('now()'), nullable=True),
    sa.CheckConstraint("status IN ('active', 'inactive', 'suspended')", name=op.f('members_status_check')),
    sa.PrimaryKeyConstraint('id', name=op.f('members_pkey'))
    )
    op.create_index('ix_members_email_lower', 'members', [sa.literal_column('lower(email::text) text_pattern_ops')],
                    unique=False, postgresql_where=sa.text('deleted_at IS NULL'))
    op.create_index('ix_members_name', 'members', ['last_name', 'first_name', 'id'], unique=False,
                    postgresql_where=sa.text('deleted_at IS NULL'))
    op.create_index('ix_members_phone', 'members', ['phone'], unique=False,
                    postgresql_where=sa.text('deleted_at IS NULL'))
    op.create_index('ix_members_status_name', 'members', ['status', 'last_name', 'first_name', 'id'], unique=False,
                    postgresql_where=sa.text('deleted_at IS NULL'))
    op.create_table('metadata',
    sa.Column('id', sa.Uuid(), server_default=sa.text('gen_random_uuid()'), nullable=False),
    sa.Column('entity_type', sa.String(length=50), nullable=False),
    sa.Column('entity_id', sa.Uuid(), nullable=False),
    sa.Column('metadata_key', sa.String(length=100), nullable=False),
    sa.Column('metadata_value', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.Column('deleted_at', sa.DateTime(), nullable=True),
    sa.Column('created_at', sa.DateTime(), server_default=sa.text('now()'), nullable=True),
    sa.Column('updated_at', sa.DateTime(), server_default=sa.text('now()'), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('metadata_pkey')),
    sa.UniqueConstraint('entity_type', 'entity_id', 'metadata_key',
                        name=op.f('metadata_entity_type_entity_id_metadata_key_key'))
    )
    # The seed's `user_id UUID REFERENCES users(id)`: users lives in the identity
    # database, so the column stays and the constraint cannot; carecli checks it.
    op.create_table('specialists',
    sa.Column('id', sa.Uuid(), server_default=sa.text('gen_random_uuid()'), nullable=False),
    sa.Column('user_id', sa.Uuid(), nullable=True),
    sa.Column('phone', sa.String(length=20), nullable=True),
    sa.Column('license_number', sa.String(length=50), nullable=True),
    sa.Column('is_active', sa.Boolean(), server_default=sa.text('true'), nullable=True),
    sa.Column('deleted_at', sa.DateTime(), nullable=True),
    sa.Column('created_at', sa.DateTime(), server_default=sa.text('now()'), nullable=True),
    sa.Column('updated_at', sa.DateTime(), server_default=sa.text('now()'), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('specialists_pkey'))
    )
    op.create_index('ix_specialists_license_number', 'specialists', ['license_number'], unique=False)
    op.create_index('ix_specialists_user_id', 'specialists', ['user_id'], unique=False)
    op.create_table('call_records',
    sa.Column('id', sa.Uuid(), server_default=sa.text('gen_random_uuid()'), nullable=False),
    sa.Column('member_id', sa.Uuid(), nullable=True),
    sa.Column('specialist_id', sa.Uuid(), nullable=True),
    sa.Column('call_type', sa.String(length=20), nullable=False),
    sa.Column('call_status', sa.String(length=20), nullable=False),
    sa.Column('scheduled_at', sa.DateTime(), nullable=True),
    sa.Column('started_at', sa.DateTime(), nullable=True),
    sa.Column('ended_at', sa.DateTime(), nullable=True),
    sa.Column('duration_seconds', sa.Integer(), nullable=True),
    sa.Column('call_notes', sa.Text(), nullable=True),
    sa.Column('outcome', sa.String(length=50), nullable=True),
    sa.Column('follow_up_required', sa.Boolean(), server_default=sa.text('false'), nullable=True),
    sa.Column('follow_up_date', sa.Date(), nullable=True),
    sa.Column('deleted_at', sa.DateTime(), nullable=True),
    sa.Column('created_at', sa.DateTime(), server_default=sa.text('now()'), nullable=True),
    sa.Column('updated_at', sa.DateTime(), server_default=sa.text('now()'), nullable=True),
    sa.CheckConstraint("call_status IN ('scheduled', 'completed', 'cancelled', 'no_answer')",
                       name=op.f('call_records_call_status_check')),
    sa.CheckConstraint("call_type IN ('outreach', 'follow_up', 'support')", name=op.f('call_records_call_type_check')),
    sa.CheckConstraint('duration_seconds >= 0', name=op.f('call_records_duration_seconds_check')),
    sa.CheckConstraint('ended_at >= started_at', name=op.f('call_records_ended_after_started_check')),
    sa.ForeignKeyConstraint(['member_id'], ['members.id'], name=op.f('call_records_member_id_fkey')),
    sa.ForeignKeyConstraint(['specialist_id'], ['specialists.id'], name=op.f('call_records_specialist_id_fkey')),
    sa.PrimaryKeyConstraint('id', name=op.f('call_records_pkey'))
    )
    op.create_index('ix_call_records_follow_ups', 'call_records', ['specialist_id', 'follow_up_date'], unique=False,
                    postgresql_where=sa.text('follow_up_required AND deleted_at IS NULL'))
    op.create_index('ix_call_records_member_id_scheduled_at', 'call_records', ['member_id', 'scheduled_at'],
                    unique=False)
    op.create_index('ix_call_records_specialist_id_scheduled_at', 'call_records', ['specialist_id', 'scheduled_at'],
                    unique=False)
    op.create_table('member_insurance_plans',
    sa.Column('id', sa.Uuid(), server_default=sa.text('gen_random_uuid()'), nullable=False),
    sa.Column('member_id', sa.Uuid(), nullable=False),
    sa.Column('insurance_plan_id', sa.Uuid(), nullable=False),
    sa.Column('enrollment_date', sa.Date(), nullable=False),
    sa.Column('termination_date', sa.Date(), nullable=True),
    sa.Column('status', sa.String(length=20), server_default=sa.text("'active'"), nullable=True),
    sa.Column('is_primary', sa.Boolean(), server_default=sa.text('false'), nullable=True),
    sa.Column('coverage_percentage', sa.Numeric(precision=5, scale=2), server_default=sa.text('100.00'), nullable=True),
    sa.Column('notes', sa.Text(), nullable=True),
    sa.Column('deleted_at', sa.DateTime(), nullable=True),
    sa.Column('created_at', sa.DateTime(), server_default=sa.text('now()'), nullable=True),
    sa.Column('updated_at', sa.DateTime(), server_default=sa.text('now()'), nullable=True),
    sa.CheckConstraint("status IN ('active', 'terminated', 'suspended')",
                       name=op.f('member_insurance_plans_status_check')),
    sa.CheckConstraint('coverage_percentage >= 0 AND coverage_percentage <= 100',
                       name=op.f('member_insurance_plans_coverage_percentage_check')),
    sa.CheckConstraint('termination_date >= enrollment_date',
                       name=op.f('member_insurance_plans_terminated_after_enrolled_check')),
    sa.ForeignKeyConstraint(['insurance_plan_id'], ['insurance_plans.id'],
                            name=op.f('member_insurance_plans_insurance_plan_id_fkey')),
    sa.ForeignKeyConstraint(['member_id'], ['members.id'], name=op.f('member_insurance_plans_member_id_fkey')),
    sa.PrimaryKeyConstraint('id', name=op.f('member_insurance_plans_pkey')),
    sa.UniqueConstraint('member_id', 'insurance_plan_id', 'enrollment_date',
                        name='member_insurance_plans_member_plan_enrollment_key')
    )
    op.create_index('ix_member_insurance_plans_insurance_plan_id', 'member_insurance_plans',
                    ['insurance_plan_id', 'member_id'], unique=False)
    op.create_index('uq_member_insurance_plans_one_primary', 'member_insurance_plans', ['member_id'], unique=True,
                    postgresql_where=sa.text("is_primary AND status = 'active' AND deleted_at IS NULL"))
    op.create_table('specialist_insurance_plans',
    sa.Column('id', sa.Uuid(), server_default=sa.text('gen_random_uuid()'), nullable=False),
    sa.Column('specialist_id', sa.Uuid(), nullable=False),
    sa.Column('insurance_plan_id', sa.Uuid(), nullable=False),
    sa.Column('notes', sa.Text(), nullable=True),
    sa.Column('deleted_at', sa.DateTime(), nullable=True),
    sa.Column('created_at', sa.DateTime(), server_default=sa.text('now()'), nullable=True),
    sa.Column('updated_at', sa.DateTime(), server_default=sa.text('now()'), nullable=True),
    sa.ForeignKeyConstraint(['insurance_plan_id'], ['insurance_plans.id'],
                            name=op.f('specialist_insurance_plans_insurance_plan_id_fkey')),
    sa.ForeignKeyConstraint(['specialist_id'], ['specialists.id'],
                            name=op.f('specialist_insurance_plans_specialist_id_fkey')),
    sa.PrimaryKeyConstraint('id', name=op.f('specialist_insurance_plans_pkey')),
    sa.UniqueConstraint('specialist_id', 'insurance_plan_id',
                        name=op.f('specialist_insurance_plans_specialist_id_insurance_plan_id_key'))
    )
    op.create_index('ix_specialist_insurance_plans_insurance_plan_id', 'specialist_insurance_plans',
                    ['insurance_plan_id', 'specialist_id'], unique=False)
    op.create_table('risk_flags',
    sa.Column('id', sa.Uuid(), server_default=sa.text('gen_random_uuid()'), nullable=False),
    sa.Column('call_record_id', sa.Uuid(), nullable=False),
    sa.Column('member_id', sa.Uuid(), nullable=False),
    sa.Column('specialist_id', sa.Uuid(), nullable=False),
    sa.Column('risk_type', sa.String(length=50), nullable=False),
    sa.Column('severity', sa.String(length=20), nullable=False),
    sa.Column('description', sa.Text(), nullable=False),
    sa.Column('deleted_at', sa.DateTime(), nullable=True),
    sa.Column('created_at', sa.DateTime(), server_default=sa.text('now()'), nullable=True),
    sa.Column('updated_at', sa.DateTime(), server_default=sa.text('now()'), nullable=True),
    sa.CheckConstraint("risk_type IN ('medical', 'financial', 'compliance', 'safety', 'other')",
                       name=op.f('risk_flags_risk_type_check')),
    sa.CheckConstraint("severity IN ('low', 'medium', 'high', 'critical')", name=op.f('risk_flags_severity_check')),
    sa.ForeignKeyConstraint(['call_record_id'], ['call_records.id'], name=op.f('risk_flags_call_record_id_fkey')),
    sa.ForeignKeyConstraint(['member_id'], ['members.id'], name=op.f('risk_flags_member_id_fkey')),
    sa.ForeignKeyConstraint(['specialist_id'], ['specialists.id'], name=op.f('risk_flags_specialist_id_fkey')),
    sa.PrimaryKeyConstraint('id', name=op.f('risk_flags_pkey'))
    )
    op.create_index('ix_risk_flags_call_record_id', 'risk_flags', ['call_record_id'], unique=False)
    op.create_index('ix_risk_flags_member_id_created_at', 'risk_flags', ['member_id', 'created_at'], unique=False)
    op.create_index('ix_risk_flags_specialist_id_created_at', 'risk_flags', ['specialist_id', 'created_at'],
                    unique=False)
    op.create_index('ix_risk_flags_urgent', 'risk_flags', ['member_id', 'created_at'], unique=False,
                    postgresql_where=sa.text("severity IN ('high', 'critical') AND deleted_at IS NULL"))


def downgrade() -> None:
    """Drop every table this revision created (their indexes go with them)."""
    op.drop_table("risk_flags")
    op.drop_table("specialist_insurance_plans")
    op.drop_table("member_insurance_plans")
    op.drop_table("call_records")
    op.drop_table("specialists")
    op.drop_table("metadata")
    op.drop_table("members")
    op.drop_table("insurance_plans")
    op.drop_table("audit_logs")
