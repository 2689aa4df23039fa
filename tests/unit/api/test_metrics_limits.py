"""Limits, metrics and alerts through the app: 429 with Retry-After, generation slots and token
charges on the real routes, /metrics for the operator only, /v1/alerts, 413 on /v1 bodies."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from atelier.api.streaming import SSEResponse
from atelier.cloud.generation import Generation
from atelier.engine.types import TokenEvent, Usage
from atelier.principal import Principal

OPERATOR = {"Authorization": "Bearer test-admin-key-123456"}
CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 4, "temperature": 0}


def new_tenancy(client: TestClient, name: str) -> tuple[str, TestClient]:
    created = client.post("/v1/tenancies", json={"name": name})
    assert created.status_code == 201, created.text
    body = created.json()
    return body["id"], TestClient(client.app, headers={"Authorization": f"Bearer {body['admin_key']}"})


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """``{(sample name, sorted labels): value}`` of a Prometheus text exposition."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest.fixture(scope="module")
def tenant(client) -> tuple[str, TestClient]:
    return new_tenancy(client, "metered")


# --- request limits -----------------------------------------------------------------------


def test_requests_over_the_limit_get_429_with_retry_after(make_app, engine, check_error):
    app = make_app(engine=engine, rate_requests_per_minute=6)
    with TestClient(app, headers=OPERATOR) as op:
        tenancy_id, beta = new_tenancy(op, "beta")  # operator request 1
        put = op.put(f"/v1/tenancies/{tenancy_id}/limits", json={"requests_per_minute": 2})  # 2
        assert put.status_code == 200, put.text
        got = op.get(f"/v1/tenancies/{tenancy_id}/limits").json()  # 3
        assert got["requests_per_minute"] == 2 and got["tokens_per_minute"] is None
        assert got["effective"] == {"requests_per_minute": 2, "concurrent_generations": 32, "tokens_per_minute": 200_000}
        assert [beta.get("/v1/models").status_code for _ in range(2)] == [200, 200]
        error = check_error(beta.get("/v1/models"), 429, type_="rate_limit_error")
        assert "2 requests per minute" in error["message"]
        assert [op.get("/v1/models").status_code for _ in range(3)] == [200, 200, 200]  # 4, 5, 6: its own window
        refused = op.get("/v1/models")
        check_error(refused, 429)
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        refusals = app.state.services.audit.log.query(None, status=429)  # both refusals are in the audit log
        assert len(refusals) == 2 and refusals[0].tenancy_id == tenancy_id and refusals[1].tenancy_id != tenancy_id


def test_limits_routes_are_for_the_operator(client, tenant, check_error):
    tenancy_id, admin = tenant
    check_error(client.get("/v1/tenancies/ten_000000000000000000000000/limits"), 404, param="tenancy_id")
    check_error(client.put("/v1/tenancies/ten_000000000000000000000000/limits", json={}), 404)
    check_error(admin.get(f"/v1/tenancies/{tenancy_id}/limits"), 403)
    check_error(admin.put(f"/v1/tenancies/{tenancy_id}/limits", json={"requests_per_minute": 10**6}), 403)
    check_error(client.put(f"/v1/tenancies/{tenancy_id}/limits", json={"requests_per_minute": 0}), 400)
    fresh = client.get(f"/v1/tenancies/{tenancy_id}/limits").json()
    assert fresh["updated_at"] is None and fresh["concurrent_generations"] is None
    set_ = client.put(f"/v1/tenancies/{tenancy_id}/limits", json={"concurrent_generations": 3}).json()
    assert set_["concurrent_generations"] == 3 and set_["effective"]["concurrent_generations"] == 3
    reset = client.put(f"/v1/tenancies/{tenancy_id}/limits", json={}).json()
    assert reset["concurrent_generations"] is None and reset["effective"]["concurrent_generations"] == 32


@pytest.mark.parametrize("stream", [False, True])
def test_a_generation_needs_a_free_slot(app, client, tenant, check_error, stream):
    tenancy_id, admin = tenant
    limits = app.state.services.limits
    assert client.put(f"/v1/tenancies/{tenancy_id}/limits", json={"concurrent_generations": 1}).status_code == 200
    held = limits.generation(Principal(tenancy_id, "key_x", "admin"))
    try:
        refused = admin.post("/v1/chat/completions", json={**CHAT, "stream": stream})
        check_error(refused, 429, type_="rate_limit_error")
        assert refused.headers["retry-after"] == "1" and "1 generations at once" in refused.json()["error"]["message"]
        other_tenancy = client.post("/v1/completions", json={"model": "tiny", "prompt": "Hi", "max_tokens": 2})
        assert other_tenancy.status_code == 200
    finally:
        held.release()
    for _ in range(3):  # each generation gives its slot back when it ends, streamed or not
        assert admin.post("/v1/chat/completions", json={**CHAT, "stream": stream}).status_code == 200
        assert admin.post("/v1/completions", json={"model": "tiny", "prompt": "Hi", "max_tokens": 2,
                                                   "stream": stream}).status_code == 200  # fmt: skip
    assert limits.usage(tenancy_id)["generations"] == 0
    client.put(f"/v1/tenancies/{tenancy_id}/limits", json={})


def test_generations_charge_the_tokens_they_used(app, tenant):
    tenancy_id, admin = tenant
    limits = app.state.services.limits
    before = limits.usage(tenancy_id)["tokens"]
    plain = admin.post("/v1/chat/completions", json=CHAT).json()["usage"]
    with_usage = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    streamed = admin.post("/v1/chat/completions", json=with_usage)
    events = [json.loads(b[6:]) for b in streamed.text.split("\n\n") if b.startswith("data: {")]
    usage = next(e["usage"] for e in events if e.get("usage"))
    assert limits.usage(tenancy_id)["tokens"] - before == plain["total_tokens"] + usage["total_tokens"]


def test_a_spent_token_budget_refuses_generations(app, client, tenant, check_error):
    tenancy_id, admin = tenant
    assert client.put(f"/v1/tenancies/{tenancy_id}/limits", json={"tokens_per_minute": 5}).status_code == 200
    try:
        error = check_error(admin.post("/v1/chat/completions", json=CHAT), 429, type_="rate_limit_error")
        assert "tokens per minute" in error["message"]
        assert app.state.services.limits.usage(tenancy_id)["generations"] == 0
    finally:
        client.put(f"/v1/tenancies/{tenancy_id}/limits", json={})


def test_embeddings_charge_their_prompt_tokens(app, tenant):
    tenancy_id, admin = tenant
    before = app.state.services.limits.usage(tenancy_id)["tokens"]
    response = admin.post("/v1/embeddings", json={"model": "all-minilm-l6-v2", "input": ["a cat", "two dogs"]})
    assert response.status_code == 200, response.text
    used = response.json()["usage"]["prompt_tokens"]
    assert used > 0 and app.state.services.limits.usage(tenancy_id)["tokens"] - before == used


async def _events(n: int, fail: bool = False):
    for i in range(n):
        yield TokenEvent("x", (i,))
    if fail:
        raise RuntimeError("engine failed")
    yield TokenEvent("", (), finish_reason="stop", usage=Usage(3, n))


@pytest.mark.anyio
@pytest.mark.parametrize("case", ["never started", "failed", "client left"])
async def test_a_stream_reports_its_usage_once_however_it_ends(case):
    ended: list[Usage] = []
    generation = await Generation.start(_events(4, fail=case == "failed"), 3, ended.append)

    async def chunks():
        async for event in generation:
            yield event.text

    body = chunks()
    response = SSEResponse(body, on_close=generation.aclose)

    async def send(message):
        if case == "client left" and message["type"] == "http.response.body" and message.get("body") == b"x":
            sent.append(message)
            if len(sent) == 2:
                raise OSError("the client left")

    sent: list = []
    if case == "failed":
        with pytest.raises(RuntimeError):
            await response.stream_response(send)
        assert ended == [Usage(3, 4)]
    elif case == "client left":
        with pytest.raises(OSError):
            await response.stream_response(send)
        assert ended == [Usage(3, 2)]
    else:  # the response is dropped before its body starts
        await response._on_close()
        assert ended == [Usage(3, 0)]
    await generation.aclose()
    assert len(ended) == 1


@pytest.fixture
def anyio_backend():
    return "asyncio"


# --- metrics ------------------------------------------------------------------------------


def test_metrics_need_the_operator_key(client, anon, tenant, check_error):
    _, admin = tenant
    check_error(admin.get("/metrics"), 403)
    check_error(anon.get("/metrics"), 401)
    assert client.get("/metrics").status_code == 200


def test_metrics_count_requests_tokens_and_engine_state(client, anon):
    assert client.get("/v1/models").status_code == 200
    anon.get("/v1/models")
    anon.get("/no/such/path")
    usage = client.post("/v1/chat/completions", json=CHAT).json()["usage"]
    first = samples(client.get("/metrics").text)
    ok = ("atelier_http_requests_total", (("method", "GET"), ("route", "/v1/models"), ("status", "200")))
    assert first[ok] >= 1
    assert first[("atelier_http_requests_total", (("method", "GET"), ("route", "/v1/models"), ("status", "401")))] >= 1
    assert ("atelier_http_requests_total", (("method", "GET"), ("route", "unmatched"), ("status", "404"))) in first
    latency = ("atelier_http_request_duration_seconds_count", (("method", "GET"), ("route", "/v1/models")))
    assert first[latency] >= 1
    prompt = first[("atelier_prompt_tokens_total", (("model", "tiny"),))]
    completion = first[("atelier_completion_tokens_total", (("model", "tiny"),))]
    assert prompt >= usage["prompt_tokens"] and completion >= usage["completion_tokens"]
    assert first[("atelier_engine_running_requests", (("model", "tiny"),))] == 0
    assert first[("atelier_engine_queue_depth", (("model", "tiny"),))] == 0
    assert first[("atelier_engine_active_adapters", ())] == 0
    client.get("/v1/models")
    client.post("/v1/chat/completions", json=CHAT)
    second = samples(client.get("/metrics").text)
    assert second[ok] == first[ok] + 1
    assert second[("atelier_prompt_tokens_total", (("model", "tiny"),))] == prompt + usage["prompt_tokens"]


def test_metrics_are_per_app(make_app, engine, app, client):
    other = make_app(engine=engine)
    with TestClient(other):
        assert other.state.services.metrics.registry is not app.state.services.metrics.registry


# --- alerts -------------------------------------------------------------------------------


def test_alerts_are_raised_and_listed_by_tenancy(client, anon, tenant, check_error):
    tenancy_id, admin = tenant
    for _ in range(25):
        anon.get("/v1/models", headers={"Authorization": "Bearer atl_nokey_wrong"})
    for i in range(25):
        admin.get(f"/v1/users/usr_{i:024x}")
    operator_view = client.get("/v1/alerts").json()["data"]
    by_kind = {}
    for alert in operator_view:
        by_kind.setdefault(alert["kind"], []).append(alert)
    assert len(by_kind["unauthenticated_burst"]) == 1 and by_kind["unauthenticated_burst"][0]["tenancy_id"] is None
    (enumeration,) = by_kind["enumeration"]
    assert enumeration["tenancy_id"] == tenancy_id
    own = admin.get("/v1/alerts").json()["data"]
    assert [a["id"] for a in own] == [enumeration["id"]]  # no 401 burst, no other tenancy's alert
    assert client.get("/v1/alerts", params={"tenancy_id": tenancy_id}).json()["data"] == own
    assert client.get("/v1/alerts", params={"kind": "token_spike"}).json()["data"] == []
    check_error(admin.get("/v1/alerts", params={"tenancy_id": "ten_000000000000000000000000"}), 404)
    raised = client.get("/v1/audit", params={"all": "true", "action": "alert.raised", "limit": 1000}).json()["data"]
    assert {e["resource_id"] for e in raised} >= {a["id"] for a in operator_view}


# --- body size ----------------------------------------------------------------------------


def test_oversized_v1_bodies_get_413(make_app, engine, check_error):
    app = make_app(engine=engine, max_body_bytes=2048)
    with TestClient(app, headers=OPERATOR) as op:
        small = op.post("/v1/tokenize", json={"model": "tiny", "text": "hello"})
        assert small.status_code == 200, small.text
        big = op.post("/v1/tokenize", json={"model": "tiny", "text": "x" * 4096})
        error = check_error(big, 413, type_="invalid_request_error")
        assert "2048 bytes" in error["message"]
