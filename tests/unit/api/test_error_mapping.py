"""api/errors.py: every domain error's status and OpenAI error object, validation params,
unknown routes, wrong methods and unexpected exceptions (a generic, logged 500)."""

from __future__ import annotations

import logging

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import BaseModel, Field

from atelier.api.errors import install_error_handlers, param_from_loc, validation_payload
from atelier.errors import (
    Conflict,
    Forbidden,
    InvalidInput,
    NotFound,
    QuotaExceeded,
    TooLarge,
    Unauthenticated,
    Unavailable,
)

RAISED = {
    "invalid": InvalidInput("bad temperature", param="temperature"),
    "too_large": TooLarge("too big"),
    "unauthenticated": Unauthenticated("no key"),
    "forbidden": Forbidden("not allowed"),
    "not_found": NotFound("no such model", param="model", code="model_not_found"),
    "conflict": Conflict("busy"),
    "quota": QuotaExceeded("queue full", retry_after=0.2),
    "unavailable": Unavailable("loading", retry_after=7.5),
    "line": InvalidInput("bad JSONL", param="file", line=3),
}


class Body(BaseModel):
    temperature: float = Field(1.0, ge=0, le=2)


@pytest.fixture(scope="module")
def client():
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/raise/{name}")
    async def raise_domain(name: str):
        raise RAISED[name]

    @app.get("/boom")
    async def boom():
        raise RuntimeError("secret internal detail")

    @app.post("/body")
    async def body(payload: Body):
        return payload

    with TestClient(app) as c:
        yield c


@pytest.mark.parametrize(
    ("name", "status", "type_", "code", "param"),
    [
        ("invalid", 400, "invalid_request_error", "invalid_value", "temperature"),
        ("too_large", 413, "invalid_request_error", "payload_too_large", None),
        ("unauthenticated", 401, "authentication_error", "invalid_api_key", None),
        ("forbidden", 403, "permission_error", "forbidden", None),
        ("not_found", 404, "not_found_error", "model_not_found", "model"),
        ("conflict", 409, "conflict_error", "conflict", None),
        ("quota", 429, "rate_limit_error", "rate_limit_exceeded", None),
        ("unavailable", 503, "server_error", "unavailable", None),
    ],
)
def test_domain_errors_map_to_status_and_error_object(client, check_error, name, status, type_, code, param):
    error = check_error(client.get(f"/raise/{name}"), status, param=param, type_=type_)
    assert error["code"] == code
    assert error["message"] == RAISED[name].message


def test_unauthenticated_asks_for_a_bearer_key(client):
    assert client.get("/raise/unauthenticated").headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(("name", "retry_after"), [("quota", "1"), ("unavailable", "8")])
def test_retry_after_is_whole_seconds_at_least_one(client, name, retry_after):
    assert client.get(f"/raise/{name}").headers["retry-after"] == retry_after


def test_file_errors_carry_their_line(client, check_error):
    assert check_error(client.get("/raise/line"), 400, param="file")["line"] == 3


def test_unknown_route_is_a_404_error_object(client, check_error):
    error = check_error(client.get("/v1/nothing-here"), 404, type_="not_found_error")
    assert "/v1/nothing-here" in error["message"]


def test_wrong_method_is_a_405_error_object(client, check_error):
    response = client.delete("/body")
    error = check_error(response, 405)
    assert error["code"] == "method_not_allowed"
    assert response.headers["allow"] == "POST"


def test_unexpected_exception_is_a_generic_logged_500(client, check_error, caplog):
    with caplog.at_level(logging.ERROR, logger="atelier.api.errors"):
        error = check_error(client.get("/boom"), 500, type_="server_error")
    assert "secret internal detail" not in error["message"]
    assert any(r.exc_info and "secret internal detail" in str(r.exc_info[1]) for r in caplog.records)


def test_validation_error_names_the_param(client, check_error):
    error = check_error(client.post("/body", json={"temperature": 2.5}), 400, param="temperature")
    assert "less than or equal to 2" in error["message"]


def test_body_that_is_not_json(client, check_error):
    response = client.post("/body", content=b"{not json", headers={"content-type": "application/json"})
    error = check_error(response, 400)
    assert error["param"] is None
    assert "not valid JSON" in error["message"]


def test_body_sent_without_json_content_type(client, check_error):
    response = client.post("/body", content=b"temperature=1", headers={"content-type": "text/plain"})
    error = check_error(response, 400)
    assert error["param"] is None
    assert "application/json" in error["message"]


def test_missing_body(client, check_error):
    error = check_error(client.post("/body"), 400)
    assert error["param"] is None and error["code"] == "missing_body"


@pytest.mark.parametrize(
    ("loc", "param"),
    [
        (("body", "temperature"), "temperature"),
        (("body", "messages", 0, "role"), "messages[0].role"),
        (("body", "messages", 2, "content", "str"), "messages[2].content"),
        (("body", "messages", 1, "content", "list[ContentPart]", 0, "type"), "messages[1].content[0].type"),
        (("body", "stop", "list[str]", 4), "stop[4]"),
        (("body", "input", "function-after[_check(), union]"), "input"),
        (("query", "limit"), "limit"),
        (("body",), None),
    ],
)
def test_param_from_loc(loc, param):
    assert param_from_loc(loc) == param


def test_validation_payload_reports_missing_fields_and_counts_the_rest():
    errors = [
        {"type": "missing", "loc": ("body", "model"), "msg": "Field required"},
        {"type": "missing", "loc": ("body", "messages"), "msg": "Field required"},
    ]
    error = validation_payload(errors)["error"]
    assert error["param"] == "model"
    assert error["code"] == "missing_required_parameter"
    assert "1 more" in error["message"]
