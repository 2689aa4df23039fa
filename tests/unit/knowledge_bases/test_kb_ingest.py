"""The ``kb-ingest`` handler on its own: batches and progress, stop requests, documents deleted meanwhile."""

from __future__ import annotations

import numpy as np
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


def test_overlapped_ingestion_stores_what_sequential_ingestion_stores(job_for, kb_app, embedder, monkeypatch):
    """The same document through the overlapped pipeline and through a plain embed-then-write loop."""
    from atelier.jobs import kb_ingest

    def plain_loop(batches, embed, write, *, written=None, check=None):
        for batch in batches:
            check()
            vectors = embed(batch)
            write(batch, vectors)
            written(batch)
        return len(batches)

    store = kb_app.state.services.vectors
    writes: dict[str, list] = {}
    add = store.add

    def recording_add(scope, chunks, vectors):
        writes.setdefault(scope.knowledge_base_id, []).append(
            ([(c.position, c.text, c.start, c.end, c.heading, c.tags) for c in chunks], np.array(vectors)))
        add(scope, chunks, vectors)

    monkeypatch.setattr(store, "add", recording_add)
    handler, ctx, _, doc_a, scope_a = job_for("overlapped")
    events_a = _progress(ctx)
    overlapped = handler(ctx)
    monkeypatch.setattr(kb_ingest, "embed_and_write", plain_loop)
    handler, ctx, _, doc_b, scope_b = job_for("sequential")
    events_b = _progress(ctx)
    sequential = handler(ctx)
    assert overlapped["chunks"] == sequential["chunks"] > 2 * BATCH
    assert events_a == events_b  # the same progress events, in the same order
    a, b = writes[scope_a.knowledge_base_id], writes[scope_b.knowledge_base_id]
    assert len(a) == len(b) == -(-overlapped["chunks"] // BATCH)  # the same writes, in the same order
    for (chunks_a, vectors_a), (chunks_b, vectors_b) in zip(a, b):
        assert chunks_a == chunks_b
        np.testing.assert_array_equal(vectors_a, vectors_b)
    ids = [f"{doc_a}:{i}" for i in range(overlapped["chunks"])]
    rows_a = store.keywords.rows(scope_a, ids)
    rows_b = store.keywords.rows(scope_b, [i.replace(doc_a, doc_b) for i in ids])
    assert [(r.position, r.text) for r in rows_a.values()] == [(r.position, r.text) for r in rows_b.values()]
    assert store.count(scope_a) == store.count(scope_b) == overlapped["chunks"]
    for question in ("pump number 7", "how is the pump serviced", "Section 199"):
        assert [h.chunk.position for h in store.keyword(scope_a, question, 10)] == [
            h.chunk.position for h in store.keyword(scope_b, question, 10)]


def _progress(ctx) -> list[tuple[int, int]]:
    """Records (chunks_done, chunks_total) of the progress events the handler emits on ``ctx``."""
    seen: list[tuple[int, int]] = []
    emit = ctx.emit

    def record(message, data=None, **kw):
        if data and data.get("type") == "progress":
            seen.append((data["chunks_done"], data["chunks_total"]))
        emit(message, data, **kw)

    ctx.emit = record
    return seen
