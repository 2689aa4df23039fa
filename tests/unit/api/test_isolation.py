"""Proofs (a) and (b) of the security issue, over the route list of the app itself.

(a) Isolation: tenancy B's administrator tries every route that takes an object id with the
ids of tenancy A's objects, in the path and in the body; nothing may succeed, path ids must
answer 404 exactly like a missing id, body ids 400. B's listings never show A's ids.
(b) Refusal: every route but ``/health`` refuses a request without a key, with a revoked key
and with an expired key (401).

A route whose path parameter has no entry in ``OWNED`` fails the test: a new kind of object
must say which of A's objects to try, so it cannot slip past.
"""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient

from atelier.api.route_table import ROUTES
from atelier.store.tables import ApiKey, CustomModel, utcnow

METHODS = {"get", "post", "put", "patch", "delete"}
PARAM = re.compile(r"{([^}]+)}")
SHARED = {"model"}
"""Path parameters naming shared objects (the base-model catalog is the same for every tenancy)."""
OPERATOR_ONLY = {key for key, rule in ROUTES.items() if rule.who == "operator"}
BODIES = {
    ("PATCH", "/v1/compartments/{compartment_id}"): {"description": "probe"},
    ("PATCH", "/v1/users/{user_id}"): {"description": "probe"},
    ("PATCH", "/v1/groups/{group_id}"): {"description": "probe"},
    ("PUT", "/v1/policies/{policy_id}"): {"name": "probe", "statements": "allow group Administrators to inspect files in tenancy"},
    ("POST", "/v1/api-keys/{key_id}/rotate"): {},
    ("POST", "/v1/groups/{group_id}/members"): {"user_id": "<own user_id>"},
    ("POST", "/v1/knowledge-bases/{knowledge_base_id}/query"): {"query": "probe"},
    ("POST", "/v1/knowledge-bases/{knowledge_base_id}/answer"): {"question": "probe"},
    ("PATCH", "/v1/clusters/{cluster_id}"): {"description": "probe"},
    ("PATCH", "/v1/endpoints/{endpoint_id}"): {"description": "probe"},
}
"""Valid bodies for routes with ids in the path, so that only the id can make them fail."""


def operations(app) -> list[tuple[str, str, dict]]:
    """(METHOD, template, OpenAPI operation) of every route of the app."""
    paths = app.openapi()["paths"]
    return [(m.upper(), path, op) for path, ops in paths.items() for m, op in ops.items() if m in METHODS]


class Tenancy:
    def __init__(self, client: TestClient, name: str):
        created = client.post("/v1/tenancies", json={"name": name})
        assert created.status_code == 201, created.text
        self.id = created.json()["id"]
        self.http = TestClient(client.app, headers={"Authorization": f"Bearer {created.json()['admin_key']}"})
        self.admin_user_id = created.json()["admin_user_id"]
        self.compartment_id = self.post("/v1/compartments", {"name": "eng"})["id"]
        self.user_id = self.post("/v1/users", {"name": "ada"})["id"]
        self.group_id = self.post("/v1/groups", {"name": "ml"})["id"]
        self.post(f"/v1/groups/{self.group_id}/members", {"user_id": self.user_id}, status=200)
        self.policy_id = self.post(
            "/v1/policies", {"name": "ml-files", "statements": "allow group ml to read files in compartment eng"}
        )["id"]
        self.key_id = self.post("/v1/api-keys", {"name": "ada-key", "user_id": self.user_id})["id"]
        sub = self.post("/v1/compartments", {"name": "sub", "parent": self.compartment_id})["id"]
        uploaded = self.http.post(
            "/v1/files", files={"file": ("train.jsonl", b'{"prompt": "a", "completion": "b"}\n')},
            data={"purpose": "fine-tune", "compartment": "eng"},
        )  # fmt: skip
        assert uploaded.status_code == 200, uploaded.text
        self.file_id = uploaded.json()["id"]
        raised = client.put(f"/v1/tenancies/{self.id}/limits", json={"units": {"small": 3}})  # 0 until the operator
        assert raised.status_code == 200, raised.text
        cluster = {"type": "fine-tuning", "unit_type": "small", "unit_count": 2, "base_model": "tiny"}
        self.cluster_id = self.post("/v1/clusters", {**cluster, "name": "ft"})["id"]
        self.hosting_cluster_id = self.post("/v1/clusters", {**cluster, "name": "host", "type": "hosting",
                                                             "unit_count": 1})["id"]
        self.endpoint_id = self.post("/v1/endpoints", {"name": "base", "cluster_id": self.hosting_cluster_id,
                                                       "model": "tiny"})["id"]
        job = self.post("/v1/fine_tuning/jobs", {"model": "tiny", "training_file": self.file_id}, status=200)
        self.fine_tuning_job_id = job["id"]  # failed validation (one example): a job all the same
        self.custom_model_id = add_custom_model(client.app, self.id, job["id"])
        self.evaluation_id = self.post("/v1/evaluations", {"model": "tiny", "test_file": self.file_id})["id"]
        self.knowledge_base_id = self.post("/v1/knowledge-bases", {"name": "docs", "compartment": "eng"})["id"]
        document = self.http.post(f"/v1/knowledge-bases/{self.knowledge_base_id}/documents",
                                  files={"file": ("notes.txt", f"Notes of {name}.".encode())})
        assert document.status_code == 201, document.text
        self.document_id = document.json()["id"]  # pending: no worker runs here
        listed = {kind: self.http.get(f"/v1/{kind}").json()["data"] for kind in ("groups", "policies", "api-keys")}
        self.all_owned = {  # every object of each kind, the built-in ones too
            "tenancy_id": [self.id],
            "compartment_id": [self.compartment_id, sub],
            "user_id": [self.user_id, self.admin_user_id],
            "group_id": [g["id"] for g in listed["groups"]],
            "policy_id": [p["id"] for p in listed["policies"]],
            "key_id": [k["id"] for k in listed["api-keys"]],
            "file_id": [self.file_id],
            "fine_tuning_job_id": [self.fine_tuning_job_id],
            "evaluation_id": [self.evaluation_id],
            "custom_model_id": [self.custom_model_id],
            "knowledge_base_id": [self.knowledge_base_id],
            "document_id": [self.document_id],
            "cluster_id": [self.cluster_id, self.hosting_cluster_id],
            "endpoint_id": [self.endpoint_id],
        }
        assert all(len(ids) >= 1 for ids in self.all_owned.values()), self.all_owned
        self.owned = {
            "tenancy_id": self.id,
            "compartment_id": self.compartment_id,
            "user_id": self.user_id,
            "group_id": self.group_id,
            "policy_id": self.policy_id,
            "key_id": self.key_id,
            "file_id": self.file_id,
            "fine_tuning_job_id": self.fine_tuning_job_id,
            "evaluation_id": self.evaluation_id,
            "custom_model_id": self.custom_model_id,
            "knowledge_base_id": self.knowledge_base_id,
            "document_id": self.document_id,
            "cluster_id": self.cluster_id,
            "endpoint_id": self.endpoint_id,
        }

    def post(self, path: str, body: dict, status: int = 201) -> dict:
        response = self.http.post(path, json=body)
        assert response.status_code == status, response.text
        return response.json()


@pytest.fixture(scope="module")
def tenancies(client):
    return Tenancy(client, "alpha"), Tenancy(client, "beta")


def add_custom_model(app, tenancy_id: str, job_id: str) -> str:
    """A custom model row and its sealed adapter object (what a finished fine-tuning job leaves)."""
    ref = app.state.services.objects.put(tenancy_id, "adapter", b"adapter bytes")
    row = CustomModel(tenancy_id=tenancy_id, name=f"ft:tiny:{job_id}", base_model="tiny", method="lora",
                      job_id=job_id, adapter_object_id=ref.id, trainable_params=1, total_params=10, metrics={},
                      curve=[])
    with app.state.services.db.session() as session:
        session.add(row)
        session.flush()
        return row.id


def fill(template: str, ids: dict[str, str]) -> str:
    return PARAM.sub(lambda m: ids[m[1]], template)


def test_listings_never_show_another_tenancys_ids(app, tenancies):
    """Runs first: later probes legitimately put A's ids into B's own audit entries."""
    a, b = tenancies
    listed = 0
    for method, template, _ in operations(app):
        if method != "GET" or PARAM.search(template) or (method, template) in OPERATOR_ONLY:
            continue
        response = b.http.get(template)
        if response.status_code != 200:
            continue
        listed += 1
        leaked = [v for v in a.owned.values() if v in response.text]
        assert not leaked, f"GET {template} shows tenancy A's ids {leaked}"
    assert listed >= 5


def test_cross_tenant_attempts_never_succeed(app, tenancies):
    a, b = tenancies
    attempts = succeeded = 0
    wrong: list[str] = []
    for method, template, _ in operations(app):
        params = PARAM.findall(template)
        if not params or set(params) <= SHARED:
            continue
        unknown = set(params) - set(a.owned) - SHARED
        assert not unknown, f"{method} {template}: add {unknown} to Tenancy.owned so isolation covers it"
        for param, theirs in ((p, t) for p in params for t in a.all_owned[p]):
            # One of A's objects in this slot, B's own objects in the others.
            ids = {**b.owned, param: theirs}
            path = fill(template, ids)
            body = BODIES.get((method, template))
            if body is not None:
                body = {k: b.owned["user_id"] if v == "<own user_id>" else v for k, v in body.items()}
            response = b.http.request(method, path, json=body if method in {"POST", "PUT", "PATCH"} else None)
            attempts += 1
            expected = 403 if (method, template) in OPERATOR_ONLY else 404
            if response.status_code < 400:
                succeeded += 1
            if response.status_code != expected:
                wrong.append(f"{method} {path} ({param} of A) -> {response.status_code} {response.text[:200]}")
    print(f"cross-tenant attempts (ids in paths): {attempts}, succeeded: {succeeded}")
    assert attempts >= 30
    assert succeeded == 0
    assert not wrong, "\n".join(wrong)


def test_ids_in_bodies_answer_400(app, tenancies):
    a, b = tenancies
    attempts = succeeded = 0
    probes = [
        ("POST", f"/v1/groups/{b.group_id}/members", {"user_id": a.user_id}, "user_id"),
        ("POST", "/v1/api-keys", {"name": "stolen", "user_id": a.user_id}, "user_id"),
        ("POST", "/v1/compartments", {"name": "sub", "parent": a.compartment_id}, "parent"),
        ("POST", "/v1/fine_tuning/jobs", {"model": "tiny", "training_file": a.file_id}, "training_file"),
        ("POST", "/v1/fine_tuning/jobs", {"model": "tiny", "training_file": b.file_id, "validation_file": a.file_id},
         "validation_file"),
        ("POST", "/v1/fine_tuning/jobs", {"model": "tiny", "training_file": b.file_id, "cluster_id": a.cluster_id},
         "cluster_id"),
        ("POST", "/v1/endpoints", {"name": "x", "cluster_id": a.hosting_cluster_id, "model": "tiny"}, "cluster_id"),
        ("POST", "/v1/endpoints", {"name": "x", "cluster_id": b.hosting_cluster_id, "model": a.custom_model_id},
         "model"),
    ]
    probes.append(("POST", "/v1/chat/completions", {"model": "tiny", "knowledge_base": a.knowledge_base_id,
                                                     "messages": [{"role": "user", "content": "hi"}]}, "knowledge_base"))
    for method, path, body, param in probes:
        response = b.http.request(method, path, json=body)
        attempts += 1
        succeeded += response.status_code < 400
        assert response.status_code == 400, (path, response.text)
        error = response.json()["error"]
        assert error["param"] == param and "not found or not authorized" in error["message"], error
    print(f"cross-tenant attempts (ids in bodies): {attempts}, succeeded: {succeeded}")
    assert succeeded == 0


def test_another_tenancys_object_looks_exactly_missing(app, tenancies):
    a, b = tenancies
    missing = {k: re.sub(r"_[0-9a-f]+$", "_" + "0" * 24, v) for k, v in a.owned.items()}
    compared = 0
    for method, template, _ in operations(app):
        params = PARAM.findall(template)
        if method != "GET" or not params or (method, template) in OPERATOR_ONLY or set(params) & SHARED:
            continue
        theirs = b.http.get(fill(template, {**b.owned, **{p: a.owned[p] for p in params}}))
        absent = b.http.get(fill(template, {**b.owned, **{p: missing[p] for p in params}}))
        assert theirs.status_code == absent.status_code == 404, template
        body_theirs, body_absent = theirs.json(), absent.json()
        for p in params:
            body_theirs["error"]["message"] = body_theirs["error"]["message"].replace(a.owned[p], "<id>")
            body_absent["error"]["message"] = body_absent["error"]["message"].replace(missing[p], "<id>")
        assert body_theirs == body_absent, template
        compared += 1
    assert compared >= 5


def test_a_search_of_another_tenancys_knowledge_base_looks_exactly_missing(app, tenancies):
    a, b = tenancies
    missing = "kb_" + "0" * 24
    for route, body in (("query", {"query": "notes"}), ("answer", {"question": "notes?"})):
        theirs = b.http.post(f"/v1/knowledge-bases/{a.knowledge_base_id}/{route}", json=body)
        absent = b.http.post(f"/v1/knowledge-bases/{missing}/{route}", json=body)
        assert theirs.status_code == absent.status_code == 404, theirs.text
        assert theirs.text.replace(a.knowledge_base_id, "<id>") == absent.text.replace(missing, "<id>")


@pytest.fixture(scope="module")
def bad_keys(app, tenancies):
    """A revoked and an expired key of tenancy B, both with valid secrets."""
    _, b = tenancies
    revoked = b.post("/v1/api-keys", {"name": "to-revoke"})
    assert b.http.delete(f"/v1/api-keys/{revoked['id']}").status_code == 200
    expired = b.post("/v1/api-keys", {"name": "to-expire"})
    with app.state.services.db.session() as session:
        session.get(ApiKey, expired["id"]).expires_at = utcnow() - timedelta(seconds=1)
    return {"revoked": revoked["key"], "expired": expired["key"]}


def test_every_route_but_health_refuses_missing_revoked_and_expired_keys(app, tenancies, bad_keys):
    _, b = tenancies
    refused = 0
    failures = []
    for method, template, _ in operations(app):
        if template == "/health":
            continue
        path = fill(template, {**b.owned, "model": "smollm2-135m-instruct"})
        for label, headers in (
            ("no key", {}),
            ("revoked", {"Authorization": f"Bearer {bad_keys['revoked']}"}),
            ("expired", {"Authorization": f"Bearer {bad_keys['expired']}"}),
        ):
            response = TestClient(app).request(
                method, path, headers=headers, json={} if method in {"POST", "PUT", "PATCH"} else None
            )
            if response.status_code != 401:
                failures.append(f"{label}: {method} {template} -> {response.status_code}")
            refused += response.status_code == 401
    print(f"requests refused without a valid key: {refused}")
    assert not failures, "\n".join(failures)
    assert refused >= 3 * 30
