"""The scale-out path end to end: metadata in PostgreSQL (Alembic) and knowledge bases in pgvector.

A real PostgreSQL server (``postgres_server``) hosts both: the migrations must reach head
and match ``store/tables.py`` exactly (no autogenerate difference), go back down to an
empty schema and up again; then ``atelier serve`` runs on it, unchanged except for two
settings, and a knowledge base goes through create → ingest → query (a French question over
English text) → delete, with the chunks checked in the database itself.
"""

from __future__ import annotations

import time
import uuid

import pytest
from sqlalchemy import create_engine, inspect, text

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _alembic_config(connection):
    from alembic.config import Config

    from atelier.store.db import MIGRATIONS_DIR

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    config.attributes["connection"] = connection
    return config


def test_migrations_reach_head_match_the_tables_and_go_back_down(postgres_server):
    from alembic import command
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from atelier.store.db import Database
    from atelier.store.tables import Base

    db = Database(postgres_server.create_database(f"meta_{uuid.uuid4().hex[:12]}"))
    try:
        db.migrate()
        db.migrate()  # a no-op at head
        with db.engine.connect() as conn:
            assert set(Base.metadata.tables) <= set(inspect(conn).get_table_names())
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
        with db.engine.begin() as conn:
            command.downgrade(_alembic_config(conn), "base")
        with db.engine.connect() as conn:
            assert set(inspect(conn).get_table_names()) <= {"alembic_version"}
        db.migrate()
        with db.engine.connect() as conn:
            assert set(Base.metadata.tables) <= set(inspect(conn).get_table_names())
    finally:
        db.dispose()


def _wait_ready(http, kb_id: str, document_id: str, timeout: float = 300.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        document = http.get(f"/v1/knowledge-bases/{kb_id}/documents/{document_id}").json()
        if document["state"] in ("ready", "failed"):
            return document
        time.sleep(0.5)
    raise AssertionError(f"document {document_id} not ingested in {timeout} s: {document}")


def test_server_runs_on_postgresql_with_pgvector_knowledge_bases(postgres_server, make_server):
    import httpx

    url = postgres_server.create_database(f"serve_{uuid.uuid4().hex[:12]}")
    server = make_server({"ATELIER_DATABASE_URL": url, "ATELIER_VECTOR_STORE": "pgvector"})
    inspector = create_engine(url)
    headers = {"Authorization": f"Bearer {server.env['ATELIER_ADMIN_KEY']}"}
    try:
        with httpx.Client(base_url=server.base_url, headers=headers, timeout=300.0) as http:
            upload = http.post(
                "/v1/files", data={"purpose": "fine-tune"},
                files={"file": ("t.jsonl", b'{"messages": [{"role": "user", "content": "hi"}]}\n')},
            )
            assert upload.status_code == 200, upload.text
            assert [f["id"] for f in http.get("/v1/files").json()["data"]] == [upload.json()["id"]]

            kb = http.post("/v1/knowledge-bases", json={"name": "pg-kb"})
            assert kb.status_code == 201, kb.text
            kb_id = kb.json()["id"]
            document = (
                "# Volcanoes\n\nA volcano erupts when magma rises through the crust. Lava cools into basalt.\n\n"
                "# Bread\n\nBread dough rises when yeast ferments the sugars in the flour.\n"
            )
            added = http.post(
                f"/v1/knowledge-bases/{kb_id}/documents", data={"tags": "nature"},
                files={"file": ("nature.md", document.encode(), "text/markdown")},
            )
            assert added.status_code == 201, added.text
            document_id = added.json()["id"]
            ready = _wait_ready(http, kb_id, document_id)
            assert ready["state"] == "ready", ready
            assert ready["chunk_count"] >= 2

            for mode in ("dense", "keyword", "hybrid"):
                query = "Comment la pâte à pain lève-t-elle ?" if mode == "dense" else "How does bread dough rise?"
                found = http.post(f"/v1/knowledge-bases/{kb_id}/query", json={"query": query, "mode": mode, "top_k": 2})
                assert found.status_code == 200, found.text
                top = found.json()["data"][0]
                assert top["document_id"] == document_id and "Bread dough" in top["text"], (mode, top)

            with inspector.connect() as conn:
                rows = conn.execute(
                    text("SELECT count(*) FROM kb_vector_chunks WHERE knowledge_base_id = :k"), {"k": kb_id}
                ).scalar_one()
                assert rows == ready["chunk_count"]
                assert conn.execute(text("SELECT count(*) FROM kb_chunks")).scalar_one() == 0  # SQLite FTS side unused

            assert http.delete(f"/v1/knowledge-bases/{kb_id}/documents/{document_id}").status_code == 200
            with inspector.connect() as conn:
                assert conn.execute(
                    text("SELECT count(*) FROM kb_vector_chunks WHERE knowledge_base_id = :k"), {"k": kb_id}
                ).scalar_one() == 0
            assert http.delete(f"/v1/knowledge-bases/{kb_id}").status_code == 200
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                with inspector.connect() as conn:
                    left = conn.execute(
                        text("SELECT count(*) FROM kb_vector_collections WHERE knowledge_base_id = :k"), {"k": kb_id}
                    ).scalar_one()
                if left == 0:
                    break
                time.sleep(0.5)
            assert left == 0
    finally:
        inspector.dispose()
