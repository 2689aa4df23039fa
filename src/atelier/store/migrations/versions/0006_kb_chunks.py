"""Knowledge-base chunks: the keyword side of the embedded vector store.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23

Written by hand to match ``store/tables.py`` (``KbChunk``). The SQLite FTS5 index over
these rows is one virtual table per knowledge base, created by ``store/keywords.py`` when
the knowledge base is created (like its Chroma collection): BM25 statistics (document
count, average length, term frequencies) are then those of that knowledge base alone, so
neither scores nor query time depend on other tenancies' documents. FTS5 exists only on
SQLite; on PostgreSQL the pgvector store keeps its own schema and full-text index.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "kb_chunks",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("tenancy_id", sa.String(length=40), nullable=False),
        sa.Column("knowledge_base_id", sa.String(length=40), nullable=False),
        sa.Column("document_id", sa.String(length=40), nullable=False),
        sa.Column("chunk_id", sa.String(length=80), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("start", sa.Integer(), nullable=False),
        sa.Column("end", sa.Integer(), nullable=False),
        sa.Column("heading", sa.Text(), nullable=False),
        sa.Column("filename", sa.String(length=255), nullable=False),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["tenancy_id"], ["tenancies.id"], name=op.f("fk_kb_chunks_tenancy_id_tenancies")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_kb_chunks")),
        sa.UniqueConstraint("tenancy_id", "knowledge_base_id", "chunk_id", name=op.f("uq_kb_chunks_tenancy_id")),
    )
    op.create_index("ix_kb_chunks_document", "kb_chunks", ["tenancy_id", "knowledge_base_id", "document_id"])


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        # the per-knowledge-base FTS5 tables index kb_chunks rows: drop them with it
        names = bind.exec_driver_sql(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'kb\\_fts\\_%' ESCAPE '\\' "
            "AND sql LIKE 'CREATE VIRTUAL TABLE%'"
        ).scalars().all()
        for name in names:
            op.execute(sa.text(f'DROP TABLE IF EXISTS "{name}"'))
    op.drop_index("ix_kb_chunks_document", table_name="kb_chunks")
    op.drop_table("kb_chunks")
