"""Request limits as clients meet them: one sequential client never reaches the default, and the
official ``openai`` client waits out a 429 by its ``Retry-After`` and retries, over real HTTP.

The app runs in uvicorn on a free port in a thread, on the tiny random chat model.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import openai
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from atelier.principal import Principal
from atelier.security import limits
from atelier.security.limits import Limits, RateLimiter
from atelier.settings import Settings

ADMIN_KEY = "test-admin-key-123456"
AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}
SMALLEST_REQUEST_SECONDS = 0.005
"""Below the shortest authenticated request measured on the 2-core reference machine (a model
list over HTTP: 6.5 ms; a 3-token chat on the tiny model: 15 ms)."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def serve(app: FastAPI) -> Iterator[str]:
    """``app`` served by uvicorn (lifespan included) in a thread; yields its ``/v1`` base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def test_the_default_request_limit_is_out_of_reach_of_one_sequential_client():
    """Back-to-back requests of one client for two minutes (one every 5 ms) are never refused."""
    defaults = Limits.from_settings(Settings())
    now = [0.0]
    limiter = RateLimiter(defaults, lambda tenancy_id: None, clock=lambda: now[0])
    caller = Principal(tenancy_id="ten_default", key_id="key_admin", role="operator")
    while now[0] < 2 * limits.WINDOW:
        limiter.check_request(caller)  # never QuotaExceeded
        now[0] += SMALLEST_REQUEST_SECONDS
    assert defaults.requests_per_minute >= limits.WINDOW / SMALLEST_REQUEST_SECONDS


def test_the_first_tenancy_gets_that_default_and_a_chat_loop_runs(make_app, engine):
    """The reported case: on the embedded default, the administrator's evaluation loop (short chat
    requests one after another) got 429 after 600 requests in a minute."""
    app = make_app(engine=engine)
    body = {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3, "temperature": 0}
    with TestClient(app, headers=AUTH) as client:
        tenancies = client.get("/v1/tenancies").json()["data"]
        assert [t["name"] for t in tenancies] == ["default"]
        effective = client.get(f"/v1/tenancies/{tenancies[0]['id']}/limits").json()["effective"]
        assert effective["requests_per_minute"] >= limits.WINDOW / SMALLEST_REQUEST_SECONDS
        assert [client.post("/v1/chat/completions", json=body).status_code for _ in range(20)] == [200] * 20


def test_the_openai_client_waits_for_retry_after_and_retries(make_app, engine, monkeypatch):
    monkeypatch.setattr(limits, "WINDOW", 1.0)  # a one-second window: Retry-After is 1 s
    app = make_app(engine=engine, rate_requests_per_minute=2)
    seen: list[int] = []

    @app.middleware("http")
    async def count(request, call_next):
        response = await call_next(request)
        if request.url.path == "/v1/chat/completions":
            seen.append(response.status_code)
        return response

    with serve(app) as base_url:
        client = openai.OpenAI(base_url=base_url, api_key=ADMIN_KEY, max_retries=2, timeout=30)
        asks = dict(model="tiny", messages=[{"role": "user", "content": "Hi"}], max_tokens=3, temperature=0)
        client.chat.completions.create(**asks)
        client.chat.completions.create(**asks)  # the window is full now
        start = time.monotonic()
        raw = client.chat.completions.with_raw_response.create(**asks)
        waited = time.monotonic() - start
        reply = raw.parse()
        assert reply.choices[0].message is not None and reply.usage.completion_tokens <= 3
        assert raw.retries_taken >= 1 and waited >= 0.9  # it slept for Retry-After, then succeeded
        assert seen[:3] == [200, 200, 429] and seen[-1] == 200 and set(seen[3:-1]) <= {429}

        with pytest.raises(openai.RateLimitError) as refused:  # without retries the 429 reaches the caller
            for _ in range(3):
                client.with_options(max_retries=0).chat.completions.create(**asks)
        assert refused.value.response.headers["retry-after"] == "1"
