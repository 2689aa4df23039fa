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
from atelier.engine.types import TokenEvent, Usage
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
    """The events of one response format (chat or text completion chunks), per choice ``index``."""

    def opening(self) -> list[Payload]:
        """Chunks sent before any text (chat: the assistant's role; an echoed prompt)."""

    def event(self, index: int, event: TokenEvent) -> list[Payload]:
        """Chunks for one engine event of a choice (its text and log probabilities; none while held back)."""

    def finish(self, index: int, reason: str, text: str) -> list[Payload]:
        """The chunks ending a choice (``text``: everything it generated)."""

    def usage(self, usage: Usage) -> Payload:
        """The last chunk, with the usage (``stream_options.include_usage``)."""


def combined_usage(usages: list[Usage]) -> Usage:
    """The usage of several choices of one prompt: the prompt once, every choice's completion."""
    return Usage(usages[0].prompt_tokens if usages else 0, sum(u.completion_tokens for u in usages))


async def stream(generations: list[Generation], chunks: Chunks, include_usage: bool) -> AsyncIterator[str]:
    """The SSE events of a request's generations, one per choice (see the module docstring).

    The choices advance together in the engine's batch; their events are taken in turn, so
    chunks of different choices interleave. Every generation is closed at the end.
    """
    texts: list[list[str]] = [[] for _ in generations]
    active = list(range(len(generations)))
    try:
        for payload in chunks.opening():
            yield sse_event(payload)
        while active:
            for index in list(active):
                event = await anext(generations[index], None)
                if event is None:
                    active.remove(index)
                    continue
                texts[index].append(event.text)
                for payload in chunks.event(index, event):
                    yield sse_event(payload)
                if event.finish_reason is not None:
                    for payload in chunks.finish(index, finish_reason(event), "".join(texts[index])):
                        yield sse_event(payload)
                    active.remove(index)
        if include_usage:
            yield sse_event(chunks.usage(combined_usage([g.usage for g in generations])))
        yield DONE
    except AtelierError as exc:
        yield sse_event(domain_error_payload(exc))
    except Exception:
        log.exception("a streamed generation failed")
        yield sse_event(server_error_payload())
    finally:
        for generation in generations:
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


def streamed(generations: list[Generation], chunks: Chunks, include_usage: bool) -> SSEResponse:
    """The SSE response of a request's generations."""

    async def close() -> None:
        for generation in generations:
            await generation.aclose()

    return SSEResponse(stream(generations, chunks, include_usage), on_close=close)


async def collect(generation: Generation, request: Request | None = None) -> Outcome | None:
    """Run a generation to its end and join its text, unless the client leaves first (then None)."""
    outcomes = await collect_all([generation], request)
    return outcomes[0] if outcomes is not None else None


async def collect_all(generations: list[Generation], request: Request | None = None) -> list[Outcome] | None:
    """Run generations to their ends together, unless the client leaves first.

    Args:
        generations: The started generations (all closed at the end, whatever happens).
        request: The HTTP request; when given, a client disconnect aborts them at once
            (their batch slots are freed) instead of letting them run to the end.

    Returns:
        The outcomes in order, or None if the client disconnected first.
    """
    outcomes: list[Outcome | None] = [None] * len(generations)
    errors: list[Exception] = []

    async with anyio.create_task_group() as group:

        async def run(i: int) -> None:
            try:
                outcomes[i] = await generations[i].collect()
            except Exception as exc:  # re-raised below, outside the task group's ExceptionGroup
                errors.append(exc)
                group.cancel_scope.cancel()

        async def watch() -> None:
            if request is None:
                return
            # The body is read: the next message the server sends is the disconnect.
            while (await request.receive())["type"] != "http.disconnect":
                pass
            group.cancel_scope.cancel()

        async def run_all() -> None:
            async with anyio.create_task_group() as inner:
                for i in range(len(generations)):
                    inner.start_soon(run, i)
            group.cancel_scope.cancel()  # done: stop watching

        group.start_soon(run_all)
        group.start_soon(watch)
    for generation in generations:
        await generation.aclose()
    if errors:
        raise errors[0]
    if any(o is None for o in outcomes):
        return None
    return outcomes  # type: ignore[return-value]
