"""Server-sent events for streamed completions, and engine streams that start before the response.

Each event is ``data: <json>\\n\\n`` and a stream ends with ``data: [DONE]\\n\\n``, as
OpenAI sends them. ``Primed`` awaits the engine's first event before any HTTP status is
chosen, so a full queue is a real 429 and not an error inside a 200 stream. ``SSEResponse``
always closes its body iterator, on normal end, client disconnect or cancellation, so that
the engine aborts the request and frees its batch slot at once. Knows nothing about models.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import anyio
from pydantic import BaseModel
from starlette.requests import ClientDisconnect
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from atelier.engine.types import TokenEvent
from atelier.errors import Unavailable

log = logging.getLogger(__name__)

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
DONE = "data: [DONE]\n\n"


def sse_event(payload: BaseModel | dict) -> str:
    """One SSE ``data:`` event holding ``payload`` as compact JSON."""
    if isinstance(payload, BaseModel):
        data = payload.model_dump_json()
    else:
        data = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    return f"data: {data}\n\n"


class Primed:
    """An engine event stream whose first event has already been awaited.

    Use ``await Primed.start(stream)``: errors the engine raises before its first event
    (QuotaExceeded, NotFound, Unavailable, InvalidInput) surface there, while the route can
    still answer with their status code. Iterating yields the first event, then the rest.
    """

    def __init__(self, stream: AsyncIterator[TokenEvent], first: TokenEvent):
        self._stream = stream
        self._first: TokenEvent | None = first

    @classmethod
    async def start(cls, stream: AsyncIterator[TokenEvent]) -> Primed:
        """Await the first event of ``stream``.

        Raises:
            Whatever the engine raises before its first event; Unavailable if it ends
            without any event.
        """
        try:
            first = await anext(stream)
        except StopAsyncIteration:
            raise Unavailable("the engine ended the request without any output") from None
        except BaseException:
            await _close(stream)
            raise
        return cls(stream, first)

    def __aiter__(self) -> Primed:
        return self

    async def __anext__(self) -> TokenEvent:
        if self._first is not None:
            first, self._first = self._first, None
            return first
        return await anext(self._stream)

    async def aclose(self) -> None:
        """Abort the request if it is still running (frees its engine slot)."""
        await _close(self._stream)


async def _close(stream: Any) -> None:
    """Close an async generator even inside a cancelled scope (client disconnect)."""
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        with anyio.CancelScope(shield=True):
            await aclose()


class SSEResponse(StreamingResponse):
    """A ``text/event-stream`` response that always closes its body iterator.

    Starlette cancels the body on client disconnect (or raises ``ClientDisconnect`` on
    send); either way ``aclose`` runs, so the generator's ``finally`` blocks, and with them
    the engine request, end at once.
    """

    media_type = "text/event-stream"

    def __init__(self, content: AsyncIterator[str], headers: dict[str, str] | None = None):
        super().__init__(content, headers={**SSE_HEADERS, **(headers or {})}, media_type=self.media_type)

    async def stream_response(self, send: Send) -> None:
        try:
            await super().stream_response(send)
        finally:
            await _close(self.body_iterator)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except ClientDisconnect:
            log.info("client disconnected during a stream: %s", scope.get("path"))
