"""AuditMiddleware on a bare app: request ids, which requests get an outcome entry, final statuses."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse
from fastapi.testclient import TestClient

from atelier.api.audit_trail import AuditMiddleware, AuditTrail, needs_outcome
from atelier.api.errors import install_error_handlers
from atelier.principal import Principal
from atelier.security.audit import AuditLog
from atelier.store.db import Database

PRINCIPAL = Principal("ten_a", "key_a", "admin", "usr_a")


@pytest.fixture
def log(tmp_path):
    db = Database(f"sqlite:///{tmp_path / 'a.db'}")
    db.migrate()
    yield AuditLog(db, b"k" * 32, head_file=tmp_path / "audit.head")
    db.dispose()


@pytest.fixture
def client(log):
    app = FastAPI()
    app.state.services = SimpleNamespace(audit=AuditTrail(log))  # the one part the middleware reads

    def decide(request: Request) -> None:
        request.state.route_template = request.scope["route"].path
        request.state.principal = PRINCIPAL
        app.state.services.audit.record_decision(request, PRINCIPAL, decision="allow", statement=None, outcome="test")

    @app.get("/v1/things/{thing_id}/parts/{part}")
    def read(thing_id: str, part: str, request: Request) -> dict:
        decide(request)
        return {"request_id": request.state.request_id}

    @app.post("/v1/things")
    def create(request: Request) -> dict:
        decide(request)
        return {}

    @app.get("/v1/boom")
    def boom(request: Request) -> dict:
        decide(request)
        raise RuntimeError("bug")

    @app.get("/v1/stream")
    def stream(request: Request) -> StreamingResponse:
        decide(request)
        return StreamingResponse(iter([b"a", b"b", b"c"]), media_type="text/plain")

    @app.get("/health")
    def health() -> dict:
        return {}

    install_error_handlers(app)
    app.add_middleware(AuditMiddleware)
    return TestClient(app, raise_server_exceptions=False)


def of(log, response):
    return log.query(None, request_id=response.headers["x-request-id"])


def test_the_request_id_is_in_the_header_the_route_and_every_entry(client, log):
    response = client.get("/v1/things/t1/parts/p9")
    assert response.json()["request_id"] == response.headers["x-request-id"]
    (entry,) = of(log, response)  # a read with a decision: no outcome entry
    assert (entry.action, entry.resource_id, entry.principal_id, entry.key_id) == (
        "GET /v1/things/{thing_id}/parts/{part}", "t1", "usr_a", "key_a"
    )
    assert client.get("/v1/things/t1/parts/p9").headers["x-request-id"] != response.headers["x-request-id"]


def test_a_write_gets_an_outcome(client, log):
    response = client.post("/v1/things")
    decision, outcome = of(log, response)
    assert (outcome.status, outcome.outcome, outcome.tenancy_id) == (200, "ok", "ten_a")


def test_an_unexpected_error_is_logged_with_its_final_500(client, log):
    response = client.get("/v1/boom")
    assert response.status_code == 500 and response.headers["x-request-id"]
    decision, outcome = of(log, response)
    assert (outcome.status, outcome.outcome) == (500, "error")


def test_a_stream_passes_through_and_gets_no_outcome_when_read(client, log):
    response = client.get("/v1/stream")
    assert response.text == "abc"
    assert len(of(log, response)) == 1


def test_unknown_urls_get_an_entry_health_does_not(client, log):
    assert [e.status for e in of(log, client.get("/v1/nothing"))] == [404]
    response = client.get("/health")
    assert response.status_code == 200 and of(log, response) == []
    refused = client.get("/metrics")  # a refused scrape is logged (here: no such route, 404)
    assert [e.status for e in of(log, refused)] == [404]


def test_an_outcome_that_cannot_be_written_is_logged_and_the_response_stands(client, log, monkeypatch, caplog):
    monkeypatch.setattr(log, "append", lambda event: (_ for _ in ()).throw(RuntimeError("disk full")))
    with caplog.at_level(logging.ERROR, logger="atelier.api.audit_trail"):
        response = client.get("/v1/nothing")
    assert response.status_code == 404
    assert "audit outcome of GET /v1/nothing (status 404) could not be written" in caplog.text


@pytest.mark.parametrize(
    ("method", "status", "decided", "expected"),
    [
        ("GET", 200, True, False),
        ("GET", 200, False, True),
        ("POST", 200, True, True),
        ("DELETE", 204, True, True),
        ("GET", 401, False, True),
        ("GET", 403, True, True),
        ("GET", 404, True, True),
        ("POST", 409, True, True),
        ("POST", 413, False, True),
        ("GET", 429, False, True),
        ("GET", 503, True, True),
        ("HEAD", 304, True, False),
    ],
)
def test_which_requests_get_an_outcome(method, status, decided, expected):
    assert needs_outcome(method, status, decided) is expected
