"""Generations over HTTP: streamed as server-sent events, or collected unless the client leaves.

Each SSE event is ``data: <json>\\n\\n`` and a stream ends with ``data: [DONE]\\n\\n``, as
OpenAI sends them. :func:`stream` turns a ``Generation`` into events through a
:class:`Chunks` writer (chat and text completions each have one), in one loop: the opening
chunks, a delta per piece of text, the finishing chunk, optionally the usage, ``[DONE]``;
an error after the status was sent becomes an error event. :class:`SSEResponse` always
closes the generation, on normal end, client disconnect or cancellation (even a body that
never started), so the engine aborts the request and frees its batch slot at once.
:func:`collect` runs a generation to its end while watching for the client leaving. Knows
nothing about models or OpenAI's field names.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

import anyio
from pydantic import BaseModel
from starlette.requests import ClientDisconnect, Request
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from atelier.api.errors import domain_error_payload, server_error_payload
from atelier.cloud.generation import Generation, Outcome, finish_reason
from atelier.engine.types import Usage
from atelier.errors import AtelierError

log = logging.getLogger(__name__)

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
DONE = "data: [DONE]\n\n"
CLIENT_CLOSED = 499
"""Status logged for a request whose client left before the answer (nginx's convention)."""

Payload = BaseModel | dict[str, Any]


def sse_event(payload: Payload) -> str:
    """One SSE ``data:`` event holding ``payload`` as compact JSON."""
    if isinstance(payload, BaseModel):
        data = payload.model_dump_json()
    else:
        data = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    return f"data: {data}\n\n"


class Chunks(Protocol):
    """The events of one response format (chat or text completion chunks)."""

    def opening(self) -> list[Payload]:
        """Chunks sent before any text (chat: the assistant's role)."""

    def delta(self, text: str) -> Payload:
        """A piece of text."""

    def finish(self, reason: str, text: str) -> Payload:
        """The chunk carrying the finish reason (``text``: everything generated)."""

    def usage(self, usage: Usage) -> Payload:
        """The last chunk, with the usage (``stream_options.include_usage``)."""


async def stream(generation: Generation, chunks: Chunks, include_usage: bool) -> AsyncIterator[str]:
    """The SSE events of a generation (see the module docstring); the generation is closed at the end."""
    parts: list[str] = []
    try:
        for payload in chunks.opening():
            yield sse_event(payload)
        async for event in generation:
            if event.text:
                parts.append(event.text)
                yield sse_event(chunks.delta(event.text))
            if event.finish_reason is not None:
                yield sse_event(chunks.finish(finish_reason(event), "".join(parts)))
                if include_usage:
                    yield sse_event(chunks.usage(generation.usage))
                break
        yield DONE
    except AtelierError as exc:
        yield sse_event(domain_error_payload(exc))
    except Exception:
        log.exception("a streamed generation failed")
        yield sse_event(server_error_payload())
    finally:
        await generation.aclose()


class SSEResponse(StreamingResponse):
    """A ``text/event-stream`` response that always closes its body and calls ``on_close``.

    Starlette cancels the body on client disconnect (or raises ``ClientDisconnect`` on
    send); either way the body is closed and ``on_close`` awaited (shielded), so the
    generation ends at once even if its body never started.
    """

    media_type = "text/event-stream"

    def __init__(self, content: AsyncIterator[str], on_close: Callable[[], Awaitable[None]] | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(content, headers={**SSE_HEADERS, **(headers or {})}, media_type=self.media_type)
        self._on_close = on_close

    async def stream_response(self, send: Send) -> None:
        try:
            await super().stream_response(send)
        finally:
            with anyio.CancelScope(shield=True):
                try:
                    aclose = getattr(self.body_iterator, "aclose", None)
                    if aclose is not None:
                        await aclose()
                finally:
                    if self._on_close is not None:
                        await self._on_close()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except ClientDisconnect:
            log.info("client disconnected during a stream: %s", scope.get("path"))


def streamed(generation: Generation, chunks: Chunks, include_usage: bool) -> SSEResponse:
    """The SSE response of a generation."""
    return SSEResponse(stream(generation, chunks, include_usage), on_close=generation.aclose)


async def collect(generation: Generation, request: Request | None = None) -> Outcome | None:
    """Run a generation to its end and join its text, unless the client leaves first.

    Args:
        generation: The started generation (closed at the end, whatever happens).
        request: The HTTP request; when given, a client disconnect aborts the generation
            at once (its batch slot is freed) instead of letting it run to the end.

    Returns:
        The outcome, or None if the client disconnected first.
    """
    if request is None:
        return await generation.collect()
    outcome: Outcome | None = None
    error: Exception | None = None

    async with anyio.create_task_group() as group:

        async def run() -> None:
            nonlocal outcome, error
            try:
                outcome = await generation.collect()
            except Exception as exc:  # re-raised below, outside the task group's ExceptionGroup
                error = exc
            finally:
                group.cancel_scope.cancel()

        async def watch() -> None:
            # The body is read: the next message the server sends is the disconnect.
            while (await request.receive())["type"] != "http.disconnect":
                pass
            group.cancel_scope.cancel()

        group.start_soon(run)
        group.start_soon(watch)
    if error is not None:
        raise error
    if outcome is None:
        await generation.aclose()
    return outcome
