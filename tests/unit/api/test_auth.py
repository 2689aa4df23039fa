"""Bearer keys on every /v1 route (401 otherwise), /health open, the scheme in OpenAPI."""

from __future__ import annotations

import pytest

V1_ROUTES = [
    ("post", "/v1/chat/completions"),
    ("post", "/v1/completions"),
    ("post", "/v1/embeddings"),
    ("get", "/v1/models"),
    ("get", "/v1/models/tiny"),
    ("post", "/v1/tokenize"),
]


@pytest.mark.parametrize(("method", "path"), V1_ROUTES)
def test_every_v1_route_needs_a_key(anon, check_error, method, path):
    response = getattr(anon, method)(path)
    error = check_error(response, 401, type_="authentication_error")
    assert response.headers["www-authenticate"] == "Bearer"
    assert "API key" in error["message"]


@pytest.mark.parametrize(
    "header",
    ["Bearer wrong-key-0123456789abcdef", "Bearer atl_key_00000000_aaaaaaaaaaaaaaaaaaaa", "Bearer short", "Bearer "],
)
def test_wrong_keys_are_401(anon, check_error, header):
    check_error(anon.get("/v1/models", headers={"Authorization": header}), 401, type_="authentication_error")


def test_another_scheme_is_401_saying_bearer(anon, check_error):
    error = check_error(anon.get("/v1/models", headers={"Authorization": "Basic dXNlcjpwYXNz"}), 401)
    assert "Bearer" in error["message"]


def test_the_admin_key_works(anon):
    assert anon.get("/v1/models", headers={"Authorization": "Bearer test-admin-key-123456"}).status_code == 200


def test_health_needs_no_key(anon):
    response = anon.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok" and "engine" in body and body["version"]


def test_openapi_describes_the_bearer_scheme(anon):
    doc = anon.get("/openapi.json").json()
    assert doc["info"]["title"] == "Atelier"
    schemes = doc["components"]["securitySchemes"]
    assert any(s["type"] == "http" and s["scheme"] == "bearer" for s in schemes.values())
    name = next(iter(schemes))
    for method, path in V1_ROUTES:
        path = path.replace("/tiny", "/{model}")
        assert {name: []} in doc["paths"][path][method]["security"], path
    assert "security" not in doc["paths"]["/health"]["get"]
