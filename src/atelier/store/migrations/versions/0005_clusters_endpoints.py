"""Dedicated AI clusters, endpoints and per-tenancy unit limits; the cluster a fine-tuning job runs on.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23

Written by hand to match ``store/tables.py`` (``test_models_match_migration`` compares
them); never generated at run time. ``jobs.cluster_id`` is a plain indexed column (see
``upgrade``).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "tenancy_unit_limits",
        sa.Column("tenancy_id", sa.String(length=40), nullable=False),
        sa.Column("unit_type", sa.String(length=32), nullable=False),
        sa.Column("units", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("units >= 0", name=op.f("ck_tenancy_unit_limits_units")),
        sa.ForeignKeyConstraint(
            ["tenancy_id"], ["tenancies.id"], name=op.f("fk_tenancy_unit_limits_tenancy_id_tenancies")
        ),
        sa.PrimaryKeyConstraint("tenancy_id", "unit_type", name=op.f("pk_tenancy_unit_limits")),
    )
    op.create_table(
        "clusters",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("tenancy_id", sa.String(length=40), nullable=False),
        sa.Column("compartment_id", sa.String(length=40), nullable=True),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("description", sa.String(length=400), nullable=False),
        sa.Column("type", sa.String(length=16), nullable=False),
        sa.Column("unit_type", sa.String(length=32), nullable=False),
        sa.Column("unit_count", sa.Integer(), nullable=False),
        sa.Column("base_model", sa.String(length=100), nullable=False),
        sa.Column("state", sa.String(length=24), nullable=False),
        sa.Column("state_details", sa.String(length=400), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("active_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("type IN ('hosting', 'fine-tuning')", name=op.f("ck_clusters_type")),
        sa.CheckConstraint("unit_count >= 1", name=op.f("ck_clusters_unit_count")),
        sa.ForeignKeyConstraint(
            ["compartment_id"], ["compartments.id"], name=op.f("fk_clusters_compartment_id_compartments")
        ),
        sa.ForeignKeyConstraint(["tenancy_id"], ["tenancies.id"], name=op.f("fk_clusters_tenancy_id_tenancies")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_clusters")),
    )
    with op.batch_alter_table("clusters", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_clusters_state"), ["state"], unique=False)
        batch_op.create_index(batch_op.f("ix_clusters_tenancy_id"), ["tenancy_id"], unique=False)

    op.create_table(
        "endpoints",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("tenancy_id", sa.String(length=40), nullable=False),
        sa.Column("compartment_id", sa.String(length=40), nullable=True),
        sa.Column("cluster_id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("description", sa.String(length=400), nullable=False),
        sa.Column("base_model", sa.String(length=100), nullable=False),
        sa.Column("custom_model_id", sa.String(length=40), nullable=True),
        sa.Column("state", sa.String(length=24), nullable=False),
        sa.Column("state_details", sa.String(length=400), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["cluster_id"], ["clusters.id"], name=op.f("fk_endpoints_cluster_id_clusters")),
        sa.ForeignKeyConstraint(
            ["compartment_id"], ["compartments.id"], name=op.f("fk_endpoints_compartment_id_compartments")
        ),
        sa.ForeignKeyConstraint(["tenancy_id"], ["tenancies.id"], name=op.f("fk_endpoints_tenancy_id_tenancies")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_endpoints")),
    )
    with op.batch_alter_table("endpoints", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_endpoints_cluster_id"), ["cluster_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_endpoints_custom_model_id"), ["custom_model_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_endpoints_state"), ["state"], unique=False)
        batch_op.create_index(batch_op.f("ix_endpoints_tenancy_id"), ["tenancy_id"], unique=False)

    # No foreign key on jobs.cluster_id: SQLite can add one only by copying ``jobs``, which
    # means dropping a table that job events and custom models point at. Cluster rows are
    # never deleted (a deleted cluster keeps its row), so the id always names one.
    op.add_column("jobs", sa.Column("cluster_id", sa.String(length=40), nullable=True))
    op.create_index(op.f("ix_jobs_cluster_id"), "jobs", ["cluster_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_jobs_cluster_id"), table_name="jobs")
    op.drop_column("jobs", "cluster_id")  # SQLite 3.35+ drops a plain column in place

    with op.batch_alter_table("endpoints", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_endpoints_tenancy_id"))
        batch_op.drop_index(batch_op.f("ix_endpoints_state"))
        batch_op.drop_index(batch_op.f("ix_endpoints_custom_model_id"))
        batch_op.drop_index(batch_op.f("ix_endpoints_cluster_id"))
    op.drop_table("endpoints")

    with op.batch_alter_table("clusters", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_clusters_tenancy_id"))
        batch_op.drop_index(batch_op.f("ix_clusters_state"))
    op.drop_table("clusters")
    op.drop_table("tenancy_unit_limits")
