"""api/streaming.py: SSE encoding; cloud/generation.py: generations started on their first event;
and a client disconnect that aborts the engine request at once (both ASGI disconnect styles:
cancellation and a failing send)."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from pydantic import BaseModel

from atelier.api.streaming import DONE, sse_event
from atelier.cloud.generation import Generation
from atelier.engine.types import TokenEvent
from atelier.errors import QuotaExceeded, Unavailable


class Point(BaseModel):
    x: int
    label: str


def test_sse_event_format():
    assert sse_event({"a": 1, "b": "é"}) == 'data: {"a":1,"b":"é"}\n\n'
    assert sse_event(Point(x=1, label="p")) == 'data: {"x":1,"label":"p"}\n\n'
    assert DONE == "data: [DONE]\n\n"


async def events(n: int, log: list[str]):
    try:
        for i in range(n):
            yield TokenEvent(text=str(i), finish_reason="length" if i == n - 1 else None)
    finally:
        log.append("closed")


async def failing():
    raise QuotaExceeded("full")
    yield  # pragma: no cover


async def empty():
    return
    yield  # pragma: no cover


def test_a_generation_yields_the_first_event_then_the_rest():
    async def run():
        log: list[str] = []
        primed = await Generation.start(events(3, log), 0)
        texts = [e.text async for e in primed]
        return texts, log

    assert asyncio.run(run()) == (["0", "1", "2"], ["closed"])


def test_a_generation_surfaces_errors_before_the_response():
    with pytest.raises(QuotaExceeded):
        asyncio.run(Generation.start(failing(), 0))
    with pytest.raises(Unavailable):
        asyncio.run(Generation.start(empty(), 0))


def test_a_generation_aclose_closes_the_engine_stream():
    async def run():
        log: list[str] = []
        primed = await Generation.start(events(100, log), 0)
        await anext(primed)
        await primed.aclose()
        return log

    assert asyncio.run(run()) == ["closed"]


class Recording:
    """Delegates to the real engine; records whether each stream was closed before finishing."""

    def __init__(self, inner):
        self.inner = inner
        self.ended: list[bool] = []
        self.first: asyncio.Event | None = None  # set once the first event has been produced

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def generate(self, model, request):
        async def stream():
            finished = False
            try:
                async for event in self.inner.generate(model, request):
                    finished = event.finish_reason is not None
                    if self.first is not None:
                        self.first.set()
                    yield event
            finally:
                self.ended.append(finished)

        return stream()

    def close(self):
        pass


def _scope(body: bytes, spec_version: str) -> dict:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": spec_version},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/chat/completions",
        "raw_path": b"/v1/chat/completions",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"test"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"authorization", b"Bearer test-admin-key-123456"),
        ],
        "client": ("127.0.0.1", 1),
        "server": ("test", 80),
    }


@pytest.mark.parametrize("spec_version", ["2.3", "2.4"])
def test_client_disconnect_aborts_the_engine_request(make_app, engine, spec_version):
    """2.3: the server reports http.disconnect and Starlette cancels the body; 2.4: send fails."""
    from fastapi.testclient import TestClient

    recording = Recording(engine)
    app = make_app(engine=recording)
    body = json.dumps(
        {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "stream": True, "max_tokens": 64,
         "temperature": 0}  # greedy: no early EOS (sampling hit it ~1 run in 5), so only the disconnect can end it
    ).encode()

    async def drive() -> list[dict]:
        sent: list[dict] = []
        gone = asyncio.Event()
        delivered = False

        async def receive():
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message):
            if gone.is_set() and spec_version == "2.4":
                raise OSError("connection reset by peer")
            sent.append(message)
            if sum(m["type"] == "http.response.body" for m in sent) == 2:
                gone.set()  # the client leaves after two events
                await asyncio.sleep(0)

        await app(_scope(body, spec_version), receive, send)
        # Closed by the time the app returns: not left to garbage collection or loop shutdown.
        assert recording.ended == [False], "the stream was not closed before it finished"
        return sent

    with TestClient(app):  # runs the lifespan (database, keys)
        sent = asyncio.run(drive())
    assert sent[0]["status"] == 200
    deadline = time.monotonic() + 5
    while engine.health()["chat_models"]["tiny"]["running"] and time.monotonic() < deadline:
        time.sleep(0.01)
    stats = engine.health()["chat_models"]["tiny"]
    assert stats["running"] == 0 and stats["waiting"] == 0


def test_client_disconnect_aborts_a_non_streamed_generation(make_app, engine):
    from fastapi.testclient import TestClient

    recording = Recording(engine)
    app = make_app(engine=recording)
    body = json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 64}).encode()

    async def drive() -> list[dict]:
        recording.first = asyncio.Event()
        sent: list[dict] = []
        delivered = False

        async def receive():
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            await recording.first.wait()  # the client leaves once generation has started
            return {"type": "http.disconnect"}

        async def send(message):
            sent.append(message)

        await app(_scope(body, "2.3"), receive, send)
        assert recording.ended == [False], "the generation ran on after the client left"
        return sent

    with TestClient(app):
        sent = asyncio.run(drive())
    assert sent[0]["status"] == 499
