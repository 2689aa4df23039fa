"""Job workers' presence: each worker process says it is alive, so health can tell jobs wait in vain.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05

Written by hand to match ``store/tables.py`` (``WorkerPresence``). A worker upserts its
row every few seconds while it runs (also while a long job runs) and deletes it when it
stops cleanly; a killed worker's row simply goes stale.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "workers",
        sa.Column("id", sa.String(100), nullable=False),
        sa.Column("kinds", sa.JSON(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_workers")),
    )


def downgrade() -> None:
    op.drop_table("workers")
