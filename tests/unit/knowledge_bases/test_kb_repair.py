"""A crash mid-ingest or mid-delete leaves no orphan vectors or chunks once the service starts again.

The crash is a ``BaseException`` raised between the two sides of the store (after Chroma
took the vectors, before SQLite took the chunk rows; or after the rows went, before the
vectors did): nothing in the process gets to clean up, exactly as with ``kill -9``. Then
``repair`` runs, as the app and every worker do when they start.
"""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient

from atelier.api.app import create_app
from atelier.cloud.knowledge_bases import KnowledgeBaseService
from atelier.jobs.kb_ingest import KIND, KbIngestHandler
from atelier.store.jobs import JobQueue
from atelier.jobs.context import JobContext
from atelier.rag.indexing import Scope
from atelier.settings import Settings
from atelier.store import knowledge_bases as repo
from atelier.store.db import Database
from atelier.store.vectors import open_vector_store
from atelier.store.tables import Job, KbDocument, KnowledgeBase

TEXT = b"Backups run every night at two. The backup disk sits in the second rack. " * 30


class Crash(BaseException):
    """The process dies here (nothing after it runs, no handler catches it)."""


@pytest.fixture
def service(tmp_path, kb_engine, kb_catalog, kb_settings):
    """``start()`` → a TestClient on a fresh data dir (the app's lifespan runs repair); ``stop()`` ends it;
    ``crashed()`` forgets an app a ``Crash`` killed; ``peek()`` opens the database and store without repairing."""
    key = kb_settings.admin_key.get_secret_value()
    settings = Settings(data_dir=tmp_path / "data", cache_dir=tmp_path / "cache", admin_key=key, threads=1,
                        default_chat_model="scripted")
    running: list[TestClient] = []
    opened: list = []

    class Service:
        config = settings

        def start(self) -> TestClient:
            client = TestClient(create_app(settings, engine=kb_engine, catalog=kb_catalog),
                                headers={"Authorization": f"Bearer {key}"})
            client.__enter__()
            running.append(client)
            return client

        def stop(self) -> None:
            running.pop().__exit__(None, None, None)

        def crashed(self) -> None:
            running.pop()

        def peek(self):
            db = Database(settings.db_url)
            store = open_vector_store(settings, db)
            opened.append((db, store))
            return db, store

    yield Service()
    while running:
        running.pop().__exit__(None, None, None)
    for db, store in opened:
        store.close()
        db.dispose()


def _kb_and_doc(http: TestClient) -> tuple[str, str, Scope]:
    kb = http.post("/v1/knowledge-bases", json={"name": "ops", "embedding_model": "hash-embed", "chunk_size": 24,
                                                 "chunk_overlap": 0}).json()
    doc = http.post(f"/v1/knowledge-bases/{kb['id']}/documents", files={"file": ("ops.txt", TEXT)}).json()
    with http.app.state.services.db.session() as session:
        tenancy = session.get(KnowledgeBase, kb["id"]).tenancy_id
    return kb["id"], doc["id"], Scope(tenancy, kb["id"])


def _ingest_until_crash(http: TestClient, embedder, monkeypatch, lease_seconds: float) -> None:
    """Run the ingestion job and kill it after Chroma took the first batch's vectors, before the chunk rows."""
    state = http.app.state.services
    monkeypatch.setattr(state.vectors.keywords, "add", lambda *a, **k: (_ for _ in ()).throw(Crash()))
    queue = JobQueue(state.db)
    job = queue.claim("doomed-worker", [KIND], lease_seconds)
    handler = KbIngestHandler(state.db, state.objects, state.vectors, state.catalog, lambda spec: embedder)
    with pytest.raises(Crash):
        handler(JobContext(job, http.app.state.services.settings.data_path / "jobs", queue))
    monkeypatch.undo()


def test_crash_between_vectors_and_chunk_rows_leaves_nothing_after_restart(service, embedder, monkeypatch):
    http = service.start()
    kb_id, doc_id, scope = _kb_and_doc(http)
    _ingest_until_crash(http, embedder, monkeypatch, lease_seconds=0.2)
    vectors = http.app.state.services.vectors
    assert vectors.vectors.document_ids(scope) == {doc_id}  # Chroma has its vectors...
    assert vectors.keywords.document_ids(scope) == set()  # ...SQLite none of its chunks
    with http.app.state.services.db.session() as session:
        assert session.get(KbDocument, doc_id).state == "ingesting"
    service.stop()

    time.sleep(0.3)  # the dead worker's lease runs out
    http = service.start()  # the lifespan repairs
    vectors = http.app.state.services.vectors
    assert vectors.document_ids(scope) == set() and vectors.count(scope) == 0
    assert vectors.vectors.count(scope) == 0
    found = http.post(f"/v1/knowledge-bases/{kb_id}/query", json={"query": "backup disk rack", "mode": "dense"})
    assert found.status_code == 200 and found.json()["data"] == []


def test_repair_leaves_an_ingestion_under_a_live_lease_alone(service, embedder, monkeypatch):
    http = service.start()
    _, doc_id, scope = _kb_and_doc(http)
    _ingest_until_crash(http, embedder, monkeypatch, lease_seconds=30)
    state = http.app.state.services
    assert repo.repair(state.db, state.vectors, state.objects) == repo.Repaired()  # its worker may still be alive
    assert state.vectors.document_ids(scope) == {doc_id}
    with state.db.session() as session:  # the lease runs out: the worker is gone
        session.get(Job, session.get(KbDocument, doc_id).job_id).lease_expires_at = repo.utcnow()
    repaired = repo.repair(state.db, state.vectors, state.objects)
    assert repaired.orphan_documents == 1 and repaired.chunks_removed >= 1
    assert state.vectors.document_ids(scope) == set()


def test_the_retried_job_starts_clean_and_finishes(service, embedder, monkeypatch, kb_catalog):
    http = service.start()
    kb_id, doc_id, scope = _kb_and_doc(http)
    _ingest_until_crash(http, embedder, monkeypatch, lease_seconds=0.05)
    time.sleep(0.1)
    state = http.app.state.services
    queue = JobQueue(state.db)
    job = queue.claim("next-worker", [KIND], 30)
    assert job is not None and job.attempts == 2
    handler = KbIngestHandler(state.db, state.objects, state.vectors, kb_catalog, lambda spec: embedder)
    result = handler(JobContext(job, state.settings.data_path / "jobs", queue))
    assert result["chunks"] > 1 and state.vectors.vectors.count(scope) == state.vectors.keywords.count(scope) == result["chunks"]
    assert http.get(f"/v1/knowledge-bases/{kb_id}/documents/{doc_id}").json()["state"] == "ready"


def test_crash_while_deleting_a_document_leaves_nothing_after_restart(service, embedder, drain_for, monkeypatch):
    http = service.start()
    kb_id, doc_id, scope = _kb_and_doc(http)
    drain_for(http, embedder)
    vectors = http.app.state.services.vectors
    assert vectors.count(scope) > 0
    monkeypatch.setattr(vectors.vectors, "delete_documents", lambda *a, **k: (_ for _ in ()).throw(Crash()))
    with pytest.raises(Crash):
        http.delete(f"/v1/knowledge-bases/{kb_id}/documents/{doc_id}")
    monkeypatch.undo()
    service.crashed()
    _, left = service.peek()
    assert left.keywords.document_ids(scope) == set() and left.vectors.document_ids(scope) == {doc_id}
    http = service.start()
    assert http.app.state.services.vectors.document_ids(scope) == set()
    assert http.get(f"/v1/knowledge-bases/{kb_id}/documents/{doc_id}").status_code == 404


def test_crash_while_deleting_a_knowledge_base_is_finished_after_restart(service, embedder, drain_for, monkeypatch):
    http = service.start()
    kb_id, doc_id, scope = _kb_and_doc(http)
    drain_for(http, embedder)
    monkeypatch.setattr(repo, "finish_deletion", lambda *a, **k: (_ for _ in ()).throw(Crash()))
    with pytest.raises(Crash):
        http.delete(f"/v1/knowledge-bases/{kb_id}")
    monkeypatch.undo()
    service.crashed()
    db, left = service.peek()
    assert left.count(scope) > 0
    with db.session() as session:
        assert session.get(KnowledgeBase, kb_id).state == "deleting"  # invisible to readers from here on
    http = service.start()
    assert http.get(f"/v1/knowledge-bases/{kb_id}").status_code == 404
    assert http.app.state.services.vectors.document_ids(scope) == set()
    with http.app.state.services.db.session() as session:
        assert session.get(KnowledgeBase, kb_id) is None and session.get(KbDocument, doc_id) is None


def test_a_document_whose_job_gave_up_is_marked_failed(service):
    http = service.start()
    kb_id, doc_id, _ = _kb_and_doc(http)
    state = http.app.state.services
    with state.db.session() as session:
        job = session.get(Job, session.get(KbDocument, doc_id).job_id)
        job.state, job.error = "failed", "its worker was lost 5 times; giving up"
    doc = http.get(f"/v1/knowledge-bases/{kb_id}/documents/{doc_id}").json()
    assert (doc["state"], doc["error"]) == ("failed", "its worker was lost 5 times; giving up")


@pytest.fixture
def drain_for(kb_catalog):
    """``drain_for(http, embedder)``: run the app's queued ingestion jobs in this process."""
    from atelier.jobs.worker import Worker

    def run(http: TestClient, embedder) -> None:
        state = http.app.state.services
        handler = KbIngestHandler(state.db, state.objects, state.vectors, kb_catalog, lambda spec: embedder)
        worker = Worker(state.db, {KIND: handler}, data_dir=state.settings.data_path)
        while worker.run_once():
            pass

    return run


def test_a_worker_repairs_when_it_starts(service, embedder, monkeypatch):
    from atelier.jobs.handlers import build_handlers

    http = service.start()
    _, doc_id, scope = _kb_and_doc(http)
    _ingest_until_crash(http, embedder, monkeypatch, lease_seconds=0.05)
    time.sleep(0.1)
    service.stop()
    db, left = service.peek()
    assert left.vectors.document_ids(scope) == {doc_id}
    handlers = build_handlers(service.config, db)  # what `atelier worker` does first
    assert KIND in handlers
    assert left.document_ids(scope) == set()


def test_a_stale_read_never_fails_a_document_the_worker_made_ready(service, embedder, drain_for):
    http = service.start()
    kb_id, doc_id, _ = _kb_and_doc(http)
    db = http.app.state.services.db
    with db.session() as reader:  # an API request reads the row while the worker still ingests...
        stale = reader.get(KbDocument, doc_id)
        assert stale.state == "pending"
        drain_for(http, embedder)  # ...the worker finishes it meanwhile...
        with db.session() as other:  # ...and (say) a later retry of the job failed
            other.get(Job, stale.job_id).state = "failed"
        repo.sync_with_job(reader, stale)
        assert stale.state == "ready"
    assert http.get(f"/v1/knowledge-bases/{kb_id}/documents/{doc_id}").json()["state"] == "ready"


def test_an_upload_cut_off_before_its_job_was_queued_is_marked_failed(service, monkeypatch):
    http = service.start()
    kb = http.post("/v1/knowledge-bases", json={"name": "cut", "embedding_model": "hash-embed"}).json()
    monkeypatch.setattr(JobQueue, "submit", lambda *a, **k: (_ for _ in ()).throw(Crash()))
    monkeypatch.setattr(KnowledgeBaseService, "_remove_documents", lambda *a, **k: (_ for _ in ()).throw(Crash()))
    with pytest.raises(Crash):
        http.post(f"/v1/knowledge-bases/{kb['id']}/documents", files={"file": ("a.txt", b"some words here")})
    monkeypatch.undo()
    service.crashed()
    db, store = service.peek()
    with db.session() as session:
        (doc,) = session.query(KbDocument).all()
        assert (doc.state, doc.job_id) == ("pending", None)
        doc_id = doc.id
    state = http.app.state.services
    assert repo.repair(db, store, state.objects) == repo.Repaired()  # a fresh upload may be just about to queue
    later = repo.utcnow() + repo.UPLOAD_GRACE * 2
    assert repo.repair(db, store, state.objects, now=later).documents_failed == 1
    with db.session() as session:
        assert (session.get(KbDocument, doc_id).state, session.get(KbDocument, doc_id).error) == (
            "failed", repo.INTERRUPTED)
    http = service.start()
    again = http.post(f"/v1/knowledge-bases/{kb['id']}/documents", files={"file": ("a.txt", b"some words here")})
    assert again.status_code == 201 and again.json()["id"] != doc_id  # the failed one is replaced


def test_a_worker_that_takes_the_job_at_once_finds_the_row(service, embedder, drain_for, monkeypatch):
    http = service.start()
    kb = http.post("/v1/knowledge-bases", json={"name": "fast", "embedding_model": "hash-embed"}).json()
    attach = repo.attach_job

    def worker_first(db, doc_id, job_id):  # the worker claims and finishes the job before the API records it
        drain_for(http, embedder)
        return attach(db, doc_id, job_id)

    monkeypatch.setattr(repo, "attach_job", worker_first)
    sent = http.post(f"/v1/knowledge-bases/{kb['id']}/documents", files={"file": ("a.txt", b"quick brown fox")})
    assert sent.status_code == 201, sent.text
    doc = http.get(f"/v1/knowledge-bases/{kb['id']}/documents/{sent.json()['id']}").json()
    assert (doc["state"], doc["job_id"]) == ("ready", sent.json()["job_id"])
