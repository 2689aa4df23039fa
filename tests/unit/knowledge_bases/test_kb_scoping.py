"""Every vector-store call made for a caller carries the caller's tenancy: no chunk of tenancy B is
reachable from tenancy A, whatever ids, filters, modes or routes A chooses."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from atelier.jobs.kb_ingest import KIND, KbIngestHandler
from atelier.cloud.grounding import Grounding
from atelier.cloud.knowledge_bases import KnowledgeBaseService
from atelier.jobs.worker import Worker
from atelier.rag.answer import NO_ANSWER
from atelier.store.tables import KnowledgeBase

SECRET = b"Project Nightingale launches on the fourth of May from the northern hangar."
MINE = b"The cafeteria opens at eight and serves soup on Fridays."
STORE_METHODS = ("create", "add", "delete_documents", "drop", "dense", "keyword", "document_ids", "count")


class RecordingStore:
    """Forwards to the real store and records ``(method, scope)`` of every call."""

    def __init__(self, store):
        self.store = store
        self.calls: list[tuple[str, object]] = []

    def __getattr__(self, name):
        target = getattr(self.store, name)
        if name not in STORE_METHODS:
            return target

        def call(scope, *args, **kwargs):
            self.calls.append((name, scope))
            return target(scope, *args, **kwargs)

        return call


@pytest.fixture
def recorded(kb_app, http, monkeypatch, kb_catalog, embedder):
    services = kb_app.state.services
    store = RecordingStore(services.vectors)
    knowledge_bases = KnowledgeBaseService(services.db, services.objects, store, services.catalog)
    monkeypatch.setattr(services, "vectors", store)
    monkeypatch.setattr(services, "knowledge_bases", knowledge_bases)
    monkeypatch.setattr(services, "grounding", Grounding(knowledge_bases, services.engine, services.catalog,
                                                         services.generation, services.settings.default_chat_model))
    handler = KbIngestHandler(services.db, services.objects, store, kb_catalog, lambda spec: embedder)
    worker = Worker(services.db, {KIND: handler}, data_dir=services.settings.data_path)

    def drain() -> None:
        while worker.run_once():
            pass

    return store, drain


def _tenancy_of(app, kb_id: str) -> str:
    with app.state.services.db.session() as session:
        return session.get(KnowledgeBase, kb_id).tenancy_id


def test_no_chunk_of_b_is_reachable_from_a(kb_app, http, recorded):
    store, drain = recorded
    created = http.post("/v1/tenancies", json={"name": "scoping-b"}).json()
    b = TestClient(kb_app, headers={"Authorization": f"Bearer {created['admin_key']}"})
    options = {"embedding_model": "hash-embed", "chunk_size": 40, "chunk_overlap": 0}
    b_kb = b.post("/v1/knowledge-bases", json={"name": "launch", **options}).json()
    b_doc = b.post(f"/v1/knowledge-bases/{b_kb['id']}/documents", files={"file": ("plan.txt", SECRET)},
                   data={"tags": "secret"}).json()
    a_kb = http.post("/v1/knowledge-bases", json={"name": "scoping-a", **options}).json()
    a_doc = http.post(f"/v1/knowledge-bases/{a_kb['id']}/documents", files={"file": ("menu.txt", MINE)}).json()
    drain()
    assert b.get(f"/v1/knowledge-bases/{b_kb['id']}/documents/{b_doc['id']}").json()["state"] == "ready"
    a_tenancy = _tenancy_of(kb_app, a_kb["id"])
    assert a_tenancy != _tenancy_of(kb_app, b_kb["id"])

    store.calls.clear()
    question = "When does Project Nightingale launch from the northern hangar?"
    responses = []
    for mode in ("dense", "keyword", "hybrid"):
        for rerank in (False, True):
            for chosen in ({}, {"document_ids": [b_doc["id"]]}, {"tags": ["secret"]},
                           {"document_ids": [b_doc["id"], a_doc["id"]], "tags": ["secret"]}):
                response = http.post(f"/v1/knowledge-bases/{a_kb['id']}/query", json={
                    "query": question, "mode": mode, "rerank": rerank, "top_k": 10, "filter": chosen})
                assert response.status_code == 200, response.text
                assert {p["document_id"] for p in response.json()["data"]} <= {a_doc["id"]}
                responses.append(response)
    answer = http.post(f"/v1/knowledge-bases/{a_kb['id']}/answer",
                       json={"question": question, "filter": {"document_ids": [b_doc["id"]]}})
    assert answer.json()["answer"] == NO_ANSWER
    chat = http.post("/v1/chat/completions", json={"model": "scripted", "messages": [
        {"role": "user", "content": question}], "knowledge_base": {"id": a_kb["id"], "document_ids": [b_doc["id"]]}})
    assert chat.json()["citations"] == []
    responses += [answer, chat]
    for path, body in ((f"/v1/knowledge-bases/{b_kb['id']}/query", {"query": question}),
                       (f"/v1/knowledge-bases/{b_kb['id']}/answer", {"question": question})):
        responses.append(http.post(path, json=body))
        assert responses[-1].status_code == 404
    responses.append(http.post("/v1/chat/completions", json={
        "model": "scripted", "messages": [{"role": "user", "content": question}], "knowledge_base": b_kb["id"]}))
    assert responses[-1].status_code == 400
    responses.append(http.delete(f"/v1/knowledge-bases/{b_kb['id']}/documents/{b_doc['id']}"))
    responses.append(http.delete(f"/v1/knowledge-bases/{a_kb['id']}/documents/{b_doc['id']}"))
    assert [r.status_code for r in responses[-2:]] == [404, 404]

    assert all("Nightingale" not in r.text and "hangar" not in r.text for r in responses)
    assert len(store.calls) >= 24
    assert {scope.tenancy_id for _, scope in store.calls} == {a_tenancy}
    assert {scope.knowledge_base_id for _, scope in store.calls} == {a_kb["id"]}
    assert b.post(f"/v1/knowledge-bases/{b_kb['id']}/query", json={"query": question}).json()["data"][0][
        "document_id"] == b_doc["id"]  # B's chunks are there all along
