"""The audit trail of real requests, GET /v1/audit(/verify) scoping, and the key-ring routes."""

from __future__ import annotations

import uuid

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from atelier.errors import Unavailable
from atelier.security.api_keys import ADMIN_KEY_ID, issue_key
from atelier.store import repos
from atelier.store.tables import Policy, new_id, utcnow

KEYS_POLICY = "allow group Administrators to manage keys in tenancy"


@pytest.fixture(scope="module")
def db(app, client):
    return app.state.services.db


@pytest.fixture(scope="module")
def log(app, client):
    return app.state.services.audit.log


@pytest.fixture(scope="module")
def home(db) -> str:
    """The operator's tenancy, with a policy letting its administrators manage keys."""
    with db.session() as session:
        query = text("SELECT tenancy_id FROM api_keys WHERE id = :k")
        tenancy_id = session.execute(query, {"k": ADMIN_KEY_ID}).scalar()
        session.add(Policy(id=new_id("pol"), tenancy_id=tenancy_id, name="audit-test-keys", statements=KEYS_POLICY,
                           created_at=utcnow(), updated_at=utcnow()))  # fmt: skip
    return tenancy_id


def new_tenancy(db, name: str, role: str = "admin") -> tuple[str, str]:
    """A fresh tenancy and a raw key of ``role`` in it."""
    with db.session() as session:
        tenancy = repos.create_tenancy(session, f"{name}-{uuid.uuid4().hex[:8]}")
        _, raw = issue_key(session, tenancy.id, f"{name} key", role)
        return tenancy.id, raw


@pytest.fixture(scope="module")
def other(app, db) -> tuple[str, TestClient]:
    """Another tenancy and a client sending its administrator key."""
    tenancy_id, raw = new_tenancy(db, "other")
    return tenancy_id, TestClient(app, headers={"Authorization": f"Bearer {raw}"})


def entries_of(log, response) -> list:
    """The audit entries of one response's request, by its X-Request-Id."""
    request_id = response.headers["x-request-id"]
    assert request_id.startswith("req_") and len(request_id) == 36
    return log.query(None, request_id=request_id)


# --- what a request leaves in the log ---------------------------------------------------


def test_a_read_leaves_one_decision_entry_with_who_what_and_where(client, log, home):
    response = client.get("/v1/models/tiny")
    assert response.status_code == 200
    (entry,) = entries_of(log, response)
    assert entry.decision == "allow" and entry.status is None
    assert entry.action == "GET /v1/models/{model}" and entry.resource_id == "tiny"
    assert (entry.tenancy_id, entry.key_id, entry.principal_id) == (home, ADMIN_KEY_ID, ADMIN_KEY_ID)
    assert entry.source == "testclient"


def test_a_state_change_leaves_a_decision_and_an_outcome(client, log, home):
    response = client.post("/v1/key-ring/rotate")
    assert response.status_code == 200, response.text
    decision, outcome = entries_of(log, response)
    assert decision.decision == "allow" and decision.outcome == "policy"
    assert decision.statement.startswith("allow group Administrators to manage")  # the statement that allowed it
    assert decision.resource_type == "keys" and decision.action == "POST /v1/key-ring/rotate"
    assert (outcome.decision, outcome.status, outcome.outcome) == ("none", 200, "ok")
    assert (outcome.tenancy_id, outcome.key_id, outcome.source) == (home, ADMIN_KEY_ID, "testclient")
    assert outcome.prev_hash == decision.hash  # nothing came between them


def test_a_request_without_a_key_is_logged_without_a_principal(anon, log):
    response = anon.get("/v1/models")
    assert response.status_code == 401
    (entry,) = entries_of(log, response)
    assert (entry.tenancy_id, entry.principal_id, entry.key_id) == (None, None, None)
    assert (entry.action, entry.status, entry.outcome, entry.decision) == ("GET /v1/models", 401, "error", "none")
    assert entry.source == "testclient"


def test_a_refusal_leaves_a_deny_decision_and_its_status(app, db, log):
    tenancy_id, raw = new_tenancy(db, "users", role="user")
    user = TestClient(app, headers={"Authorization": f"Bearer {raw}"})
    response = user.post("/v1/key-ring/rotate")
    assert response.status_code == 403
    decision, outcome = entries_of(log, response)
    assert decision.decision == "deny" and decision.tenancy_id == tenancy_id and decision.statement is None
    assert (outcome.status, outcome.outcome) == (403, "error")
    assert app.state.services.keys.current_version(tenancy_id) is None  # nothing was done


def test_a_bad_body_without_a_key_is_logged_with_the_route_template(anon, log):
    response = anon.post("/v1/key-ring/retire", content=b"{bad", headers={"content-type": "application/json"})
    (entry,) = entries_of(log, response)
    assert (entry.action, entry.status, entry.principal_id) == ("POST /v1/key-ring/retire", response.status_code, None)


def test_unknown_urls_are_logged_and_unaudited_paths_are_not(client, log):
    response = client.get("/v1/no-such-thing")
    assert response.status_code == 404
    (entry,) = entries_of(log, response)
    assert (entry.action, entry.status) == ("GET /v1/no-such-thing", 404)
    for path in ("/health", "/openapi.json"):
        response = client.get(path)
        assert response.status_code == 200 and entries_of(log, response) == []


def test_no_prompt_or_completion_reaches_the_log(client, db, log, tmp_path):
    marker = f"zebra-{uuid.uuid4().hex}"
    response = client.post(
        "/v1/chat/completions",
        json={"model": "tiny", "messages": [{"role": "user", "content": f"Repeat {marker}"}], "max_tokens": 4},
    )
    assert response.status_code == 200, response.text
    answer = response.json()["choices"][0]["message"]["content"]
    assert len(entries_of(log, response)) == 2  # the decision and the outcome of a POST
    with db.engine.connect() as connection:
        dump = "\n".join(repr(tuple(row)) for row in connection.execute(text("SELECT * FROM audit_entries")))
    assert marker not in dump
    if len(answer.strip()) >= 16:  # a tiny random model's answer; long enough not to match by chance
        assert answer.strip() not in dump


def test_a_streamed_chat_gets_its_outcome_once_the_stream_ends(client, log):
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "stream": True}
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200 and response.text.endswith("data: [DONE]\n\n")
    decision, outcome = entries_of(log, response)
    assert (decision.decision, outcome.status, outcome.outcome) == ("allow", 200, "ok")


def test_a_log_that_cannot_be_written_refuses_the_request_before_any_work(app, client, log, home, monkeypatch):
    before = app.state.services.keys.current_version(home)

    def broken(event):
        raise Unavailable("disk full")

    monkeypatch.setattr(log, "append", broken)
    response = client.post("/v1/key-ring/rotate")
    assert response.status_code == 503 and response.headers["retry-after"]
    assert "audit log" in response.json()["error"]["message"]
    assert app.state.services.keys.current_version(home) == before
    chat = {"model": "tiny", "messages": [{"role": "user", "content": "x"}]}
    response = client.post("/v1/chat/completions", json=chat)
    assert response.status_code == 503


# --- GET /v1/audit -------------------------------------------------------------------------


def test_an_administrator_reads_only_its_own_tenancy(client, other, log, home):
    other_id, other_client = other
    assert other_client.get("/v1/models").status_code == 200
    mine = other_client.get("/v1/audit", params={"limit": 1000})
    assert mine.status_code == 200, mine.text
    data = mine.json()["data"]
    assert data and {e["tenancy_id"] for e in data} == {other_id}
    missing = other_client.get("/v1/audit", params={"tenancy_id": "ten_000000000000000000000000"})
    foreign = other_client.get("/v1/audit", params={"tenancy_id": home})
    assert foreign.status_code == missing.status_code == 404
    assert foreign.json()["error"].keys() == missing.json()["error"].keys()
    assert foreign.json()["error"]["message"].replace(home, "X") == missing.json()["error"]["message"].replace(
        "ten_000000000000000000000000", "X"
    )
    assert other_client.get("/v1/audit", params={"all": "true"}).status_code == 403


def test_the_operator_reads_any_tenancy_or_all(client, other):
    other_id, _ = other
    theirs = client.get("/v1/audit", params={"tenancy_id": other_id, "limit": 1000}).json()["data"]
    assert theirs and {e["tenancy_id"] for e in theirs} == {other_id}
    everything = client.get("/v1/audit", params={"all": "true", "limit": 1000}).json()["data"]
    tenancies = {e["tenancy_id"] for e in everything}
    assert other_id in tenancies and None in tenancies and len(tenancies) >= 3


def test_filters_and_paging(client):
    client.get("/v1/models")
    page = client.get("/v1/audit", params={"action": "GET /v1/models", "decision": "allow", "limit": 1}).json()
    (entry,) = page["data"]
    assert entry["action"] == "GET /v1/models" and entry["decision"] == "allow"
    assert page["next_after_seq"] == entry["seq"]
    following = client.get("/v1/audit", params={"after_seq": entry["seq"], "limit": 1000}).json()["data"]
    assert following and all(e["seq"] > entry["seq"] for e in following)
    assert client.get("/v1/audit", params={"status": 401, "all": "true"}).json()["data"]
    future = client.get("/v1/audit", params={"since": "2999-01-01T00:00:00"}).json()
    assert future == {"object": "list", "data": [], "next_after_seq": None}
    assert client.get("/v1/audit", params={"limit": 1001}).status_code == 400
    assert client.get("/v1/audit", params={"since": "0001-01-01T00:00:00+05:00"}).json()["error"]["param"] == "since"
    assert client.get("/v1/audit", params={"all": "true", "tenancy_id": "ten_x"}).status_code == 400


def test_verify_is_for_the_operator(client, other):
    report = client.get("/v1/audit/verify").json()
    assert report["ok"] is True and report["entries"] > 0 and report["problems"] == []
    assert other[1].get("/v1/audit/verify").status_code == 403


# --- the key ring -------------------------------------------------------------------------


def test_key_ring_show_rotate_rewrap_retire(app, client, home):
    objects = app.state.services.objects
    stored = [objects.put(home, "dataset", f"row {i}".encode()) for i in range(3)]
    ring = client.get("/v1/key-ring").json()
    current = ring["current_version"]
    assert ring["object"] == "key_ring" and ring["tenancy_id"] == home
    assert [v["version"] for v in ring["versions"]] == list(range(1, current + 1))
    assert all(set(v) == {"version", "state", "created_at"} for v in ring["versions"])  # no key material

    rotated = client.post("/v1/key-ring/rotate").json()
    assert rotated["current_version"] == current + 1
    assert rotated["versions"][-1] == {**rotated["versions"][-1], "version": current + 1, "state": "enabled"}

    rewrap = client.post("/v1/key-ring/rewrap")
    assert rewrap.status_code == 200, rewrap.text
    assert rewrap.json()["rewrapped"] >= len(stored) and rewrap.json()["current_version"] == current + 1
    assert client.post("/v1/key-ring/rewrap").json()["rewrapped"] == 0

    retired = client.post("/v1/key-ring/retire", json={"below": current + 1}).json()
    assert retired["min_decrypt_version"] == current + 1
    assert {v["version"]: v["state"] for v in retired["versions"]} == {
        **{v: "retired" for v in range(1, current + 1)}, current + 1: "enabled"
    }
    assert [objects.get(home, ref.id) for ref in stored] == [b"row 0", b"row 1", b"row 2"]

    bad = client.post("/v1/key-ring/retire", json={"below": current + 5})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "below"
    assert client.post("/v1/key-ring/retire", json={"below": 0}).status_code == 400


def test_key_ring_without_a_policy_and_before_the_first_object(app, db):
    tenancy_id, raw = new_tenancy(db, "ring")
    admin = TestClient(app, headers={"Authorization": f"Bearer {raw}"})
    with db.session() as session:
        session.execute(text("DELETE FROM policies WHERE tenancy_id = :t"), {"t": tenancy_id})
    assert admin.get("/v1/key-ring").status_code == 403  # no policy grants keys in that tenancy
    assert admin.post("/v1/key-ring/rotate").status_code == 403
    with db.session() as session:
        session.add(Policy(id=new_id("pol"), tenancy_id=tenancy_id, name="keys", statements=KEYS_POLICY,
                           created_at=utcnow(), updated_at=utcnow()))  # fmt: skip
    if app.state.services.keys.current_version(tenancy_id) is None:
        ring = admin.get("/v1/key-ring").json()
        assert (ring["current_version"], ring["versions"]) == (None, [])
        assert admin.post("/v1/key-ring/retire", json={"below": 1}).status_code == 404
    assert admin.post("/v1/key-ring/rotate").status_code == 200
    assert admin.get("/v1/key-ring").json()["current_version"] >= 1
