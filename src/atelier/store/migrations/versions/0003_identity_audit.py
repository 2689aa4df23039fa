"""Identity (compartments, users, groups), policies, audit log, alerts and tenancy limits.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23

Generated once with Alembic's autogenerate against 0002 and reviewed; never generated at
run time. API keys gain the user they act as and an expiry for their older secret.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('alerts',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('tenancy_id', sa.String(length=40), nullable=True),
    sa.Column('kind', sa.String(length=40), nullable=False),
    sa.Column('key_id', sa.String(length=40), nullable=True),
    sa.Column('source', sa.String(length=64), nullable=True),
    sa.Column('detail', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_alerts'))
    )
    with op.batch_alter_table('alerts', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_alerts_created_at'), ['created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_alerts_tenancy_id'), ['tenancy_id'], unique=False)

    op.create_table('audit_checkpoints',
    sa.Column('seq', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('hash', sa.String(length=64), nullable=False),
    sa.Column('signature', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('seq', name=op.f('pk_audit_checkpoints'))
    )
    op.create_table('audit_entries',
    sa.Column('seq', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('time', sa.DateTime(timezone=True), nullable=False),
    sa.Column('request_id', sa.String(length=64), nullable=False),
    sa.Column('tenancy_id', sa.String(length=40), nullable=True),
    sa.Column('principal_id', sa.String(length=40), nullable=True),
    sa.Column('key_id', sa.String(length=40), nullable=True),
    sa.Column('action', sa.String(length=120), nullable=False),
    sa.Column('resource_type', sa.String(length=40), nullable=True),
    sa.Column('resource_id', sa.String(length=120), nullable=True),
    sa.Column('decision', sa.String(length=16), nullable=False),
    sa.Column('statement', sa.Text(), nullable=True),
    sa.Column('outcome', sa.String(length=40), nullable=False),
    sa.Column('status', sa.Integer(), nullable=True),
    sa.Column('source', sa.String(length=64), nullable=True),
    sa.Column('prev_hash', sa.String(length=64), nullable=False),
    sa.Column('hash', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('seq', name=op.f('pk_audit_entries'))
    )
    with op.batch_alter_table('audit_entries', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_audit_entries_tenancy_id'), ['tenancy_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_audit_entries_time'), ['time'], unique=False)

    op.create_table('compartments',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('tenancy_id', sa.String(length=40), nullable=False),
    sa.Column('parent_id', sa.String(length=40), nullable=True),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('description', sa.String(length=400), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['parent_id'], ['compartments.id'], name=op.f('fk_compartments_parent_id_compartments')),
    sa.ForeignKeyConstraint(['tenancy_id'], ['tenancies.id'], name=op.f('fk_compartments_tenancy_id_tenancies')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_compartments')),
    sa.UniqueConstraint('tenancy_id', 'parent_id', 'name', name=op.f('uq_compartments_tenancy_id'))
    )
    with op.batch_alter_table('compartments', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_compartments_parent_id'), ['parent_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_compartments_tenancy_id'), ['tenancy_id'], unique=False)

    op.create_table('groups',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('tenancy_id', sa.String(length=40), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('description', sa.String(length=400), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['tenancy_id'], ['tenancies.id'], name=op.f('fk_groups_tenancy_id_tenancies')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_groups')),
    sa.UniqueConstraint('tenancy_id', 'name', name=op.f('uq_groups_tenancy_id'))
    )
    with op.batch_alter_table('groups', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_groups_tenancy_id'), ['tenancy_id'], unique=False)

    op.create_table('policies',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('tenancy_id', sa.String(length=40), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('description', sa.String(length=400), nullable=False),
    sa.Column('statements', sa.Text(), nullable=False),
    sa.Column('protected', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['tenancy_id'], ['tenancies.id'], name=op.f('fk_policies_tenancy_id_tenancies')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_policies')),
    sa.UniqueConstraint('tenancy_id', 'name', name=op.f('uq_policies_tenancy_id'))
    )
    with op.batch_alter_table('policies', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_policies_tenancy_id'), ['tenancy_id'], unique=False)

    op.create_table('tenancy_limits',
    sa.Column('tenancy_id', sa.String(length=40), nullable=False),
    sa.Column('requests_per_minute', sa.Integer(), nullable=True),
    sa.Column('concurrent_generations', sa.Integer(), nullable=True),
    sa.Column('tokens_per_minute', sa.Integer(), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['tenancy_id'], ['tenancies.id'], name=op.f('fk_tenancy_limits_tenancy_id_tenancies')),
    sa.PrimaryKeyConstraint('tenancy_id', name=op.f('pk_tenancy_limits'))
    )
    op.create_table('users',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('tenancy_id', sa.String(length=40), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('description', sa.String(length=400), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['tenancy_id'], ['tenancies.id'], name=op.f('fk_users_tenancy_id_tenancies')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_users')),
    sa.UniqueConstraint('tenancy_id', 'name', name=op.f('uq_users_tenancy_id'))
    )
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_users_tenancy_id'), ['tenancy_id'], unique=False)

    op.create_table('group_members',
    sa.Column('group_id', sa.String(length=40), nullable=False),
    sa.Column('user_id', sa.String(length=40), nullable=False),
    sa.Column('tenancy_id', sa.String(length=40), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['group_id'], ['groups.id'], name=op.f('fk_group_members_group_id_groups')),
    sa.ForeignKeyConstraint(['tenancy_id'], ['tenancies.id'], name=op.f('fk_group_members_tenancy_id_tenancies')),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_group_members_user_id_users')),
    sa.PrimaryKeyConstraint('group_id', 'user_id', name=op.f('pk_group_members'))
    )
    with op.batch_alter_table('group_members', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_group_members_tenancy_id'), ['tenancy_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_group_members_user_id'), ['user_id'], unique=False)

    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.add_column(sa.Column('user_id', sa.String(length=40), nullable=True))
        batch_op.add_column(sa.Column('secret_2_expires_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index(batch_op.f('ix_api_keys_user_id'), ['user_id'], unique=False)
        batch_op.create_foreign_key(batch_op.f('fk_api_keys_user_id_users'), 'users', ['user_id'], ['id'])


def downgrade() -> None:
    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('fk_api_keys_user_id_users'), type_='foreignkey')
        batch_op.drop_index(batch_op.f('ix_api_keys_user_id'))
        batch_op.drop_column('secret_2_expires_at')
        batch_op.drop_column('user_id')

    with op.batch_alter_table('group_members', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_group_members_user_id'))
        batch_op.drop_index(batch_op.f('ix_group_members_tenancy_id'))

    op.drop_table('group_members')
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_users_tenancy_id'))

    op.drop_table('users')
    op.drop_table('tenancy_limits')
    with op.batch_alter_table('policies', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_policies_tenancy_id'))

    op.drop_table('policies')
    with op.batch_alter_table('groups', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_groups_tenancy_id'))

    op.drop_table('groups')
    with op.batch_alter_table('compartments', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_compartments_tenancy_id'))
        batch_op.drop_index(batch_op.f('ix_compartments_parent_id'))

    op.drop_table('compartments')
    with op.batch_alter_table('audit_entries', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_audit_entries_time'))
        batch_op.drop_index(batch_op.f('ix_audit_entries_tenancy_id'))

    op.drop_table('audit_entries')
    op.drop_table('audit_checkpoints')
    with op.batch_alter_table('alerts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_alerts_tenancy_id'))
        batch_op.drop_index(batch_op.f('ix_alerts_created_at'))

    op.drop_table('alerts')
