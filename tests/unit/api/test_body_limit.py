"""api/body_limit.py: bodies over the limit get 413, whether declared up front or streamed."""

from __future__ import annotations

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from atelier.api.body_limit import BodySizeLimit
from atelier.api.errors import install_error_handlers

LIMIT = 1024


@pytest.fixture(scope="module")
def small():
    app = FastAPI()
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=LIMIT)

    @app.post("/echo")
    async def echo(request: Request):
        return {"size": len(await request.body())}

    with TestClient(app) as c:
        yield c


def chunks(total: int, size: int = 100):
    sent = 0
    while sent < total:
        n = min(size, total - sent)
        sent += n
        yield b"x" * n


def test_body_at_the_limit_passes(small):
    response = small.post("/echo", content=b"x" * LIMIT)
    assert response.status_code == 200 and response.json() == {"size": LIMIT}


def test_declared_length_over_the_limit_is_refused_up_front(small, check_error):
    error = check_error(small.post("/echo", content=b"x" * (LIMIT + 1)), 413)
    assert error["code"] == "payload_too_large"
    assert str(LIMIT) in error["message"]


def test_streamed_body_without_length_is_counted(small, check_error):
    response = small.post("/echo", content=chunks(LIMIT + 50))  # chunked: no Content-Length
    check_error(response, 413)


def test_streamed_body_under_the_limit_passes(small):
    response = small.post("/echo", content=chunks(LIMIT - 10))
    assert response.status_code == 200 and response.json() == {"size": LIMIT - 10}


def test_lying_content_length_is_caught_while_reading(check_error):
    """A client that declares a small length but sends more is stopped by the byte count."""
    import asyncio

    app = FastAPI()
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=LIMIT)

    @app.post("/echo")
    async def echo(request: Request):
        return {"size": len(await request.body())}

    messages = [
        {"type": "http.request", "body": b"x" * 1000, "more_body": True},
        {"type": "http.request", "body": b"x" * 1000, "more_body": False},
    ]
    sent: list[dict] = []

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/echo",
        "raw_path": b"/echo",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"test"), (b"content-length", b"10")],
        "client": ("127.0.0.1", 1),
        "server": ("test", 80),
    }
    asyncio.run(app(scope, receive, send))
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 413


def test_the_app_limits_bodies_by_settings(client, api_settings, check_error):
    too_big = b"x" * (api_settings.max_body_bytes + 1)
    check_error(client.post("/v1/chat/completions", content=too_big, headers={"content-type": "application/json"}), 413)
