"""The ``kb-ingest`` handler on its own: batches and progress, stop requests, documents deleted meanwhile."""

from __future__ import annotations

import pytest

from atelier.jobs.kb_ingest import BATCH, KIND, KbIngestHandler
from atelier.store.jobs import JobQueue
from atelier.jobs.context import JobContext, JobStopped
from atelier.rag.indexing import Scope
from atelier.store.tables import KbDocument, KnowledgeBase

TEXT = "\n\n".join(f"Section {i} explains how the pump number {i} is serviced." for i in range(200)).encode()


@pytest.fixture
def job_for(kb_app, http, make_kb, kb_catalog, embedder, tmp_path):
    """``job_for(name)`` → (handler, context, kb id, document id, scope) for a freshly uploaded document."""
    state = kb_app.state.services

    def make(name: str):
        kb = make_kb(name, chunk_size=16, chunk_overlap=0)
        doc = http.post(f"/v1/knowledge-bases/{kb['id']}/documents", files={"file": ("pumps.txt", TEXT)}).json()
        queue = JobQueue(state.db)
        job = queue.claim("test-worker", [KIND], 30)
        assert job is not None and job.id == doc["job_id"]
        handler = KbIngestHandler(state.db, state.objects, state.vectors, kb_catalog, lambda spec: embedder)
        with state.db.session() as session:
            tenancy = session.get(KnowledgeBase, kb["id"]).tenancy_id
        return handler, JobContext(job, tmp_path, queue), kb["id"], doc["id"], Scope(tenancy, kb["id"])

    return make


def test_embeds_in_batches_of_search_documents(job_for, embedder, kb_app):
    handler, ctx, _, doc_id, scope = job_for("batches")
    embedder.calls.clear()
    result = handler(ctx)
    assert result["chunks"] > 2 * BATCH
    sizes = [n for n, kind in embedder.calls]
    assert all(kind == "search_document" for _, kind in embedder.calls)
    assert sizes == [BATCH] * (result["chunks"] // BATCH) + ([result["chunks"] % BATCH] if result["chunks"] % BATCH else [])
    assert kb_app.state.services.vectors.count(scope) == result["chunks"]
    with kb_app.state.services.db.session() as session:
        assert session.get(KbDocument, doc_id).chunk_count == result["chunks"]


def test_a_cancel_mid_ingest_removes_the_chunks_and_fails_the_document(job_for, kb_app):
    handler, ctx, _, doc_id, scope = job_for("cancelled")
    emit = ctx.emit

    def emit_then_cancel(message, data=None, **kw):
        emit(message, data, **kw)
        if data and data.get("chunks_done") == BATCH:
            ctx.request_stop("cancel_requested")

    ctx.emit = emit_then_cancel
    with pytest.raises(JobStopped):
        handler(ctx)
    assert kb_app.state.services.vectors.document_ids(scope) == set()
    with kb_app.state.services.db.session() as session:
        doc = session.get(KbDocument, doc_id)
        assert (doc.state, doc.error) == ("failed", "ingestion was cancelled")


def test_a_shutdown_mid_ingest_leaves_the_next_attempt_to_start_over(job_for, kb_app):
    handler, ctx, _, doc_id, scope = job_for("shutdown")
    emit = ctx.emit

    def emit_then_stop(message, data=None, **kw):
        emit(message, data, **kw)
        if data and data.get("chunks_done") == BATCH:
            ctx.request_stop("shutdown")

    ctx.emit = emit_then_stop
    with pytest.raises(JobStopped):
        handler(ctx)
    assert kb_app.state.services.vectors.count(scope) == BATCH  # kept for now: the job goes back to the queue
    again = handler(JobContext(ctx.job, ctx.workdir, JobQueue(kb_app.state.services.db)))
    assert kb_app.state.services.vectors.count(scope) == again["chunks"]
    with kb_app.state.services.db.session() as session:
        assert session.get(KbDocument, doc_id).state == "ready"


def test_a_document_deleted_during_ingestion_leaves_no_chunks(job_for, kb_app, http):
    handler, ctx, kb_id, doc_id, scope = job_for("deleted-meanwhile")
    emit = ctx.emit

    def emit_then_delete(message, data=None, **kw):
        emit(message, data, **kw)
        if data and data.get("chunks_done") == BATCH:  # the row goes while the worker still embeds
            with kb_app.state.services.db.session() as session:
                session.delete(session.get(KbDocument, doc_id))

    ctx.emit = emit_then_delete
    result = handler(ctx)
    assert "skipped" in result
    assert kb_app.state.services.vectors.document_ids(scope) == set()


def test_a_document_deleted_before_its_job_starts_is_skipped(job_for, kb_app):
    handler, ctx, _, doc_id, scope = job_for("deleted-before")
    with kb_app.state.services.db.session() as session:
        session.delete(session.get(KbDocument, doc_id))
    assert handler(ctx) == {"document_id": doc_id, "skipped": "the document or its knowledge base was deleted"}
    assert kb_app.state.services.vectors.count(scope) == 0
