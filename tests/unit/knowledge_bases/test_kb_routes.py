"""``/v1/knowledge-bases`` and its documents end to end: app → service → job → worker → store → search."""

from __future__ import annotations

import io

import pytest

from atelier.store.jobs import JobQueue
from atelier.principal import Principal
from atelier.rag.indexing import Scope
from atelier.store.tables import Job, KbDocument, KnowledgeBase

GUIDE = (
    "# Disks\n\nTo add a disk, open the storage panel and press the add button. "
    "The new disk appears after a rescan.\n\n"
    "# Network\n\nThe network bridge forwards packets between the virtual machines and the host. "
    "Bridges need a free interface.\n"
).encode()
COOKING = b"Bake the bread at two hundred degrees for forty minutes. Let the dough rest overnight."


def test_create_list_get_delete(http, make_kb, check_error):
    kb = make_kb("manuals", description="product manuals")
    assert kb["id"].startswith("kb_") and kb["object"] == "knowledge_base"
    assert (kb["embedding_model"], kb["dimensions"], kb["chunk_size"], kb["chunk_overlap"], kb["search_breadth"]) == (
        "hash-embed", 64, 40, 5, 100)
    assert (kb["document_count"], kb["chunk_count"], kb["state"]) == (0, 0, "active")
    assert http.get(f"/v1/knowledge-bases/{kb['id']}").json() == kb
    assert kb["id"] in [k["id"] for k in http.get("/v1/knowledge-bases").json()["data"]]
    check_error(http.post("/v1/knowledge-bases", json={"name": "manuals", "embedding_model": "hash-embed"}), 409,
                param="name")
    deleted = http.delete(f"/v1/knowledge-bases/{kb['id']}")
    assert deleted.json() == {"id": kb["id"], "object": "knowledge_base", "deleted": True}
    check_error(http.get(f"/v1/knowledge-bases/{kb['id']}"), 404)
    assert kb["id"] not in [k["id"] for k in http.get("/v1/knowledge-bases").json()["data"]]


@pytest.mark.parametrize(
    ("body", "param"),
    [({"embedding_model": "tiny"}, "embedding_model"), ({"embedding_model": "nope"}, "embedding_model"),
     ({"chunk_size": 600}, "chunk_size"), ({"chunk_size": 8}, "chunk_size"), ({"chunk_size": 32, "chunk_overlap": 32}, None),
     ({"name": "bad name"}, "name"), ({"search_breadth": 0}, "search_breadth"), ({"extra": 1}, "extra")],
)
def test_create_refuses_bad_settings(http, check_error, body, param):
    error = check_error(http.post("/v1/knowledge-bases", json={"name": "kb-bad", "embedding_model": "hash-embed",
                                                               **body}), 400)
    if param is not None:
        assert error["param"] == param, error


def test_default_embedding_model_is_multilingual(http):
    created = http.post("/v1/knowledge-bases", json={"name": "default-model"})
    assert created.status_code == 201, created.text
    assert (created.json()["embedding_model"], created.json()["dimensions"]) == ("multilingual-e5-small", 384)


def test_upload_ingest_query(http, make_kb, upload, drain):
    kb = make_kb("guide")
    sent = upload(kb["id"], "guide.md", GUIDE, tags='["ops", "v2"]')
    assert sent.status_code == 201, sent.text
    doc = sent.json()
    assert (doc["state"], doc["filename"], doc["content_type"], doc["tags"], doc["version"]) == (
        "pending", "guide.md", "text/markdown", ["ops", "v2"], 1)
    assert doc["bytes"] == len(GUIDE) and len(doc["sha256"]) == 64 and doc["job_id"].startswith("job_")
    assert upload(kb["id"], "recipes.txt", COOKING, tags="food").status_code == 201
    assert drain() == 2

    ready = http.get(f"/v1/knowledge-bases/{kb['id']}/documents/{doc['id']}").json()
    assert ready["state"] == "ready" and ready["chunk_count"] >= 2 and ready["error"] is None, ready
    listed = http.get(f"/v1/knowledge-bases/{kb['id']}/documents").json()["data"]
    assert [d["filename"] for d in listed] == ["guide.md", "recipes.txt"]
    kb_now = http.get(f"/v1/knowledge-bases/{kb['id']}").json()
    assert kb_now["document_count"] == 2 and kb_now["chunk_count"] == sum(d["chunk_count"] for d in listed)

    for mode in ("dense", "keyword", "hybrid"):
        found = http.post(f"/v1/knowledge-bases/{kb['id']}/query",
                          json={"query": "how do I add a disk in the storage panel", "mode": mode, "top_k": 2})
        assert found.status_code == 200, found.text
        best = found.json()["data"][0]
        assert best["document_id"] == doc["id"] and "storage panel" in best["text"], (mode, best)
        assert best["heading"] == "Disks" and GUIDE.decode()[best["start"]:best["end"]] == best["text"]
        assert best["rank"] == 1 and best["tags"] == ["ops", "v2"]
    reranked = http.post(f"/v1/knowledge-bases/{kb['id']}/query",
                         json={"query": "bread dough", "rerank": True, "top_k": 1}).json()["data"]
    assert reranked[0]["filename"] == "recipes.txt"
    by_tag = http.post(f"/v1/knowledge-bases/{kb['id']}/query",
                       json={"query": "disk storage panel bread", "mode": "keyword", "filter": {"tags": ["food"]}})
    assert {p["filename"] for p in by_tag.json()["data"]} == {"recipes.txt"}
    by_doc = http.post(f"/v1/knowledge-bases/{kb['id']}/query",
                       json={"query": "disk bread", "mode": "dense", "filter": {"document_ids": [doc["id"]]}})
    assert {p["document_id"] for p in by_doc.json()["data"]} == {doc["id"]}


def test_progress_events_count_chunks(http, kb_app, make_kb, upload, drain):
    kb = make_kb("progress", chunk_size=16, chunk_overlap=0)
    text = "\n\n".join(f"Paragraph {i} talks about topic number {i} at some length." for i in range(150)).encode()
    doc = upload(kb["id"], "long.txt", text).json()
    drain()
    with kb_app.state.services.db.session() as session:
        job = session.get(Job, doc["job_id"])
        assert job.state == "succeeded" and job.result["chunks"] > 64, job.result
    principal = Principal(job.tenancy_id, "k", "admin")
    progress = [e.data for e in JobQueue(kb_app.state.services.db).events(principal, job.id, limit=1000)
                if e.data and e.data.get("type") == "progress"]
    total = job.result["chunks"]
    assert [p["chunks_done"] for p in progress] == [0, *range(64, total, 64), total]
    assert {p["chunks_total"] for p in progress} == {total}


def test_same_bytes_are_a_no_op_and_a_new_version_replaces_the_old(http, make_kb, upload, drain):
    kb = make_kb("versions")
    first = upload(kb["id"], "notes.txt", b"The blue key opens the shed.").json()
    drain()
    again = upload(kb["id"], "copy-of-notes.txt", b"The blue key opens the shed.")
    assert again.status_code == 200 and again.json()["id"] == first["id"] and again.json()["state"] == "ready"
    assert drain() == 0  # nothing queued

    second = upload(kb["id"], "notes.txt", b"The red key opens the garage.").json()
    assert (second["version"], second["replaces_id"]) == (2, first["id"])
    old_hit = http.post(f"/v1/knowledge-bases/{kb['id']}/query", json={"query": "blue key shed", "mode": "keyword"})
    assert [p["document_id"] for p in old_hit.json()["data"]] == [first["id"]]  # searched until replaced
    drain()
    docs = http.get(f"/v1/knowledge-bases/{kb['id']}/documents").json()["data"]
    assert [(d["id"], d["state"]) for d in docs] == [(second["id"], "ready")]
    gone = http.post(f"/v1/knowledge-bases/{kb['id']}/query", json={"query": "blue key shed", "mode": "keyword"})
    assert [p["document_id"] for p in gone.json()["data"]] == [second["id"]]  # "key" only: the old one is gone
    new_hit = http.post(f"/v1/knowledge-bases/{kb['id']}/query", json={"query": "red key garage", "mode": "keyword"})
    assert [p["document_id"] for p in new_hit.json()["data"]] == [second["id"]]
    assert http.get(f"/v1/knowledge-bases/{kb['id']}").json()["document_count"] == 1


def test_unreadable_document_fails_with_a_clear_error_and_a_retry_replaces_it(http, make_kb, upload, drain):
    kb = make_kb("broken")
    doc = upload(kb["id"], "report.pdf", b"%PDF-1.4 this is not really a pdf").json()
    drain()
    failed = http.get(f"/v1/knowledge-bases/{kb['id']}/documents/{doc['id']}").json()
    assert failed["state"] == "failed" and "report.pdf" in failed["error"], failed
    assert failed["chunk_count"] == 0
    retry = upload(kb["id"], "report.pdf", b"%PDF-1.4 this is not really a pdf")
    assert retry.status_code == 201 and retry.json()["id"] != doc["id"]
    ids = [d["id"] for d in http.get(f"/v1/knowledge-bases/{kb['id']}/documents").json()["data"]]
    assert ids == [retry.json()["id"]]


@pytest.mark.parametrize(
    ("filename", "data", "tags", "status", "param"),
    [("image.png", b"\x89PNG", None, 400, "file"), ("empty.txt", b"", None, 400, "file"),
     ("a.txt", b"x", '["bad tag!"]', 400, "tags"), ("a.txt", b"x", '{"a": 1}', 400, "tags")],
)
def test_upload_refuses_bad_files_and_tags(make_kb, upload, check_error, filename, data, tags, status, param):
    kb = make_kb(f"refuse-{abs(hash((filename, tags))) % 10_000}")
    check_error(upload(kb["id"], filename, data, tags=tags), status, param=param)


def test_upload_needs_multipart_and_respects_the_size_limit(http, make_kb, check_error, kb_settings):
    kb = make_kb("limits")
    check_error(http.post(f"/v1/knowledge-bases/{kb['id']}/documents", json={"file": "x"}), 400, param="file")
    big = io.BytesIO(b"a" * (kb_settings.max_body_bytes + 10))
    sent = http.post(f"/v1/knowledge-bases/{kb['id']}/documents", files={"file": ("big.txt", big)})
    assert sent.status_code == 201, sent.text[:200]  # over the JSON body limit, within max_file_bytes


def test_delete_document_removes_its_chunks(http, kb_app, make_kb, upload, drain):
    kb = make_kb("delete-doc")
    doc = upload(kb["id"], "guide.md", GUIDE).json()
    keep = upload(kb["id"], "recipes.txt", COOKING).json()
    drain()
    deleted = http.delete(f"/v1/knowledge-bases/{kb['id']}/documents/{doc['id']}")
    assert deleted.json() == {"id": doc["id"], "object": "knowledge_base.document", "deleted": True}
    assert http.get(f"/v1/knowledge-bases/{kb['id']}/documents/{doc['id']}").status_code == 404
    scope = Scope(_tenancy(kb_app, kb["id"]), kb["id"])
    assert kb_app.state.services.vectors.document_ids(scope) == {keep["id"]}
    found = http.post(f"/v1/knowledge-bases/{kb['id']}/query", json={"query": "disk storage panel"}).json()["data"]
    assert {p["document_id"] for p in found} == {keep["id"]}
    with kb_app.state.services.db.session() as session:
        assert session.get(KbDocument, doc["id"]) is None
    assert not kb_app.state.services.objects.exists(scope.tenancy_id, doc["id"])


def test_delete_knowledge_base_drops_vectors_chunks_and_documents(http, kb_app, make_kb, upload, drain):
    kb = make_kb("delete-kb")
    doc = upload(kb["id"], "guide.md", GUIDE).json()
    drain()
    tenancy = _tenancy(kb_app, kb["id"])
    scope = Scope(tenancy, kb["id"])
    assert kb_app.state.services.vectors.count(scope) > 0
    with kb_app.state.services.db.session() as session:
        object_id = session.get(KbDocument, doc["id"]).object_id
    assert http.delete(f"/v1/knowledge-bases/{kb['id']}").status_code == 200
    assert kb_app.state.services.vectors.count(scope) == 0 and kb_app.state.services.vectors.document_ids(scope) == set()
    assert not kb_app.state.services.objects.exists(tenancy, object_id)
    with kb_app.state.services.db.session() as session:
        assert session.get(KbDocument, doc["id"]) is None
    assert http.post(f"/v1/knowledge-bases/{kb['id']}/query", json={"query": "disk"}).status_code == 404


def test_deleting_a_document_while_it_is_pending_cancels_its_job(http, kb_app, make_kb, upload, drain):
    kb = make_kb("cancel")
    doc = upload(kb["id"], "guide.md", GUIDE).json()
    assert http.delete(f"/v1/knowledge-bases/{kb['id']}/documents/{doc['id']}").status_code == 200
    with kb_app.state.services.db.session() as session:
        assert session.get(Job, doc["job_id"]).state == "cancelled"
    assert drain() == 0


def _tenancy(app, kb_id: str) -> str:
    with app.state.services.db.session() as session:
        return session.get(KnowledgeBase, kb_id).tenancy_id


def test_policies_decide_per_operation_and_compartment(http, kb_app, make_kb, upload, drain):
    from fastapi.testclient import TestClient

    assert http.post("/v1/compartments", json={"name": "research"}).status_code == 201
    shared = make_kb("shared-manuals")
    hidden = make_kb("research-notes", compartment="research")
    assert hidden["compartment_id"] is not None
    upload(shared["id"], "guide.md", GUIDE)
    drain()
    user = http.post("/v1/users", json={"name": "reader"}).json()
    group = http.post("/v1/groups", json={"name": "kb-readers"}).json()
    assert http.post(f"/v1/groups/{group['id']}/members", json={"user_id": user["id"]}).status_code == 200
    statements = ("allow group kb-readers to read knowledge-bases in tenancy where target.name = 'shared-manuals'\n"
                  "allow group kb-readers to inspect knowledge-bases in tenancy where target.name = 'shared-manuals'")
    created = http.post("/v1/policies", json={"name": "kb-read", "statements": statements})
    assert created.status_code == 201, created.text
    key = http.post("/v1/api-keys", json={"name": "reader-key", "user_id": user["id"]}).json()["key"]
    reader = TestClient(kb_app, headers={"Authorization": f"Bearer {key}"})

    assert [k["id"] for k in reader.get("/v1/knowledge-bases").json()["data"]] == [shared["id"]]
    assert reader.get(f"/v1/knowledge-bases/{shared['id']}/documents").status_code == 200
    assert reader.get(f"/v1/knowledge-bases/{hidden['id']}").status_code == 404  # invisible: like a missing one
    assert reader.post(f"/v1/knowledge-bases/{shared['id']}/query", json={"query": "disk"}).status_code == 403
    assert upload(shared["id"], "x.txt", b"more text", client=reader).status_code == 403
    assert reader.post("/v1/knowledge-bases", json={"name": "mine"}).status_code == 403

    use = "allow group kb-readers to use knowledge-bases in tenancy where target.name = 'shared-manuals'"
    assert http.put(f"/v1/policies/{created.json()['id']}", json={"name": "kb-read", "statements": use}).status_code == 200
    found = reader.post(f"/v1/knowledge-bases/{shared['id']}/query", json={"query": "storage panel disk"})
    assert found.status_code == 200 and found.json()["data"], found.text
    assert reader.delete(f"/v1/knowledge-bases/{shared['id']}").status_code == 403  # delete needs manage
