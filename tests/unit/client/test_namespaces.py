"""``AtelierClient``'s namespaces: each method sends one request to its route, over ``httpx.MockTransport``.

A table of calls and the method, raw path, query and JSON body each must send; the answers
are canned. The routes themselves are tested against the real app in ``tests/unit/api`` and
through the CLI in ``tests/unit/cli``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from atelier.client import AtelierClient

Call = Callable[[AtelierClient], Any]
CASES: list[tuple[str, Call, str, str, dict[str, str], Any]] = [
    ("models.list", lambda c: c.models.list(), "GET", "/v1/models", {}, None),
    ("custom_models.list", lambda c: c.custom_models.list(), "GET", "/v1/custom-models", {}, None),
    ("custom_models.get", lambda c: c.custom_models.get("cm_1"), "GET", "/v1/custom-models/cm_1", {}, None),
    ("custom_models.delete", lambda c: c.custom_models.delete("cm/1"), "DELETE", "/v1/custom-models/cm%2F1", {},
     None),
    ("files.get", lambda c: c.files.get("file_1"), "GET", "/v1/files/file_1", {}, None),
    ("files.delete", lambda c: c.files.delete("file_1"), "DELETE", "/v1/files/file_1", {}, None),
    ("fine_tuning.jobs.create", lambda c: c.fine_tuning.jobs.create("m", "file_1", suffix="s"), "POST",
     "/v1/fine_tuning/jobs", {}, {"model": "m", "training_file": "file_1", "suffix": "s"}),
    ("fine_tuning.jobs.list", lambda c: c.fine_tuning.jobs.list(5), "GET", "/v1/fine_tuning/jobs", {"limit": "5"},
     None),
    ("fine_tuning.jobs.cancel", lambda c: c.fine_tuning.jobs.cancel("job_1"), "POST",
     "/v1/fine_tuning/jobs/job_1/cancel", {}, None),
    ("fine_tuning.jobs.events", lambda c: c.fine_tuning.jobs.events("job_1", 50), "GET",
     "/v1/fine_tuning/jobs/job_1/events", {"limit": "50"}, None),
    ("fine_tuning.jobs.checkpoints", lambda c: c.fine_tuning.jobs.checkpoints("job_1"), "GET",
     "/v1/fine_tuning/jobs/job_1/checkpoints", {"limit": "100"}, None),
    ("knowledge_bases.create", lambda c: c.knowledge_bases.create("kb", chunk_size=64, description=None), "POST",
     "/v1/knowledge-bases", {}, {"name": "kb", "chunk_size": 64}),
    ("knowledge_bases.get", lambda c: c.knowledge_bases.get("kb_1"), "GET", "/v1/knowledge-bases/kb_1", {}, None),
    ("knowledge_bases.query", lambda c: c.knowledge_bases.query("kb_1", "q", top_k=3, tags=["a"]), "POST",
     "/v1/knowledge-bases/kb_1/query", {}, {"query": "q", "top_k": 3, "filter": {"tags": ["a"]}}),
    ("knowledge_bases.ask", lambda c: c.knowledge_bases.ask("kb_1", "why?", model=None, top_k=2), "POST",
     "/v1/knowledge-bases/kb_1/answer", {}, {"question": "why?", "top_k": 2}),
    ("knowledge_bases.documents.list", lambda c: c.knowledge_bases.documents.list("kb_1"), "GET",
     "/v1/knowledge-bases/kb_1/documents", {}, None),
    ("knowledge_bases.documents.get", lambda c: c.knowledge_bases.documents.get("kb_1", "doc/1"), "GET",
     "/v1/knowledge-bases/kb_1/documents/doc%2F1", {}, None),
    ("knowledge_bases.documents.delete", lambda c: c.knowledge_bases.documents.delete("kb_1", "doc_1"), "DELETE",
     "/v1/knowledge-bases/kb_1/documents/doc_1", {}, None),
    ("clusters.list", lambda c: c.clusters.list(include_deleted=True), "GET", "/v1/clusters",
     {"include_deleted": "true"}, None),
    ("clusters.update", lambda c: c.clusters.update("dac_1", unit_count=2), "PATCH", "/v1/clusters/dac_1", {},
     {"unit_count": 2}),
    ("endpoints.list", lambda c: c.endpoints.list("dac_1"), "GET", "/v1/endpoints", {"cluster_id": "dac_1"}, None),
    ("costs.metered", lambda c: c.costs.metered(), "GET", "/v1/costs", {}, None),
    ("tenancies.get", lambda c: c.tenancies.get("ten_1"), "GET", "/v1/tenancies/ten_1", {}, None),
    ("tenancies.set_limits", lambda c: c.tenancies.set_limits("ten_1", 5, units={"small": 2}), "PUT",
     "/v1/tenancies/ten_1/limits", {},
     {"requests_per_minute": 5, "concurrent_generations": None, "tokens_per_minute": None, "units": {"small": 2}}),
    ("compartments.create", lambda c: c.compartments.create("ml", parent="eng"), "POST", "/v1/compartments", {},
     {"name": "ml", "parent": "eng"}),
    ("compartments.update", lambda c: c.compartments.update("cmp_1", description="d"), "PATCH",
     "/v1/compartments/cmp_1", {}, {"description": "d"}),
    ("users.get", lambda c: c.users.get("usr_1"), "GET", "/v1/users/usr_1", {}, None),
    ("users.update", lambda c: c.users.update("usr_1", name="ann"), "PATCH", "/v1/users/usr_1", {}, {"name": "ann"}),
    ("groups.get", lambda c: c.groups.get("grp_1"), "GET", "/v1/groups/grp_1", {}, None),
    ("groups.remove_member", lambda c: c.groups.remove_member("grp_1", "usr/2"), "DELETE",
     "/v1/groups/grp_1/members/usr%2F2", {}, None),
    ("api_keys.get", lambda c: c.api_keys.get("key_1"), "GET", "/v1/api-keys/key_1", {}, None),
    ("api_keys.revoke", lambda c: c.api_keys.revoke("a/b"), "DELETE", "/v1/api-keys/a%2Fb", {}, None),
    ("policies.replace", lambda c: c.policies.replace("pol_1", "p", "allow ..."), "PUT", "/v1/policies/pol_1", {},
     {"name": "p", "statements": "allow ..."}),
    ("key_ring.get", lambda c: c.key_ring.get(), "GET", "/v1/key-ring", {}, None),
    ("audit.entries", lambda c: c.audit.entries(limit=3, all=True, decision=None, tenancy_id=None), "GET",
     "/v1/audit", {"limit": "3", "all": "true"}, None),
    ("audit.verify", lambda c: c.audit.verify(), "GET", "/v1/audit/verify", {}, None),
    ("alerts.list", lambda c: c.alerts.list(kind="spike", since=None), "GET", "/v1/alerts", {"kind": "spike"}, None),
    ("health", lambda c: c.health(), "GET", "/health", {}, None),
]  # fmt: skip


@pytest.mark.parametrize(("call", "method", "path", "params", "body"), [case[1:] for case in CASES],
                         ids=[case[0] for case in CASES])
def test_each_namespace_method_sends_its_request(call: Call, method: str, path: str, params: dict, body: Any):
    sent: list[httpx.Request] = []

    def respond(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200, json={"object": "list", "data": [], "id": "x"})

    with AtelierClient("http://atelier.test", "sk-key", transport=httpx.MockTransport(respond)) as client:
        call(client)
    [request] = sent
    assert (request.method, request.url.raw_path.split(b"?")[0].decode()) == (method, path)
    assert dict(request.url.params) == params
    assert (json.loads(request.content) if request.content else None) == body


def test_files_list_follows_the_pages():
    pages = [{"data": [{"id": "file_2"}], "has_more": True, "last_id": "file_2"},
             {"data": [{"id": "file_1"}], "has_more": False, "last_id": "file_1"}]  # fmt: skip
    sent: list[httpx.Request] = []

    def respond(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200, json=pages[len(sent) - 1])

    client = AtelierClient("http://atelier.test", transport=httpx.MockTransport(respond))
    assert [f["id"] for f in client.files.list("fine-tune")] == ["file_2", "file_1"]
    assert [dict(r.url.params) for r in sent] == [{"purpose": "fine-tune"}, {"purpose": "fine-tune", "after": "file_2"}]


def test_uploads_are_multipart_and_bytes_need_a_filename(tmp_path):
    sent: list[httpx.Request] = []

    def respond(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(201, json={"id": "doc_1"})

    client = AtelierClient("http://atelier.test", transport=httpx.MockTransport(respond))
    source = tmp_path / "notes.md"
    source.write_text("# notes")
    assert client.knowledge_bases.documents.add("kb_1", source, tags=["a", "b"]) == ({"id": "doc_1"}, True)
    assert client.knowledge_bases.documents.add("kb_1", b"hi", filename="hi.txt")[1] is True
    with pytest.raises(ValueError, match="filename"):
        client.knowledge_bases.documents.add("kb_1", b"hi")
    assert all(r.headers["content-type"].startswith("multipart/form-data") for r in sent)
    assert b'filename="notes.md"' in sent[0].content and b"a,b" in sent[0].content
    assert b'filename="hi.txt"' in sent[1].content
