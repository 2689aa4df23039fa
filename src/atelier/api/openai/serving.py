"""OpenAI's response shapes for a generation: ``chat.completion`` and ``text_completion``, whole or streamed.

The generation itself is the one pipeline of ``cloud.generation``; this module opens a
prepared generation and answers it as OpenAI does: a whole object (collected unless the
client leaves: 499) or SSE chunks (``api.streaming``). :func:`respond_chat` serves chat
completions and grounded chat (which adds ``citations`` to the finishing chunk and the
object); :func:`respond_completion` serves text completions. Holds no model math.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Any

from fastapi import Request, Response
from fastapi.responses import JSONResponse

from atelier import __version__
from atelier.api.openai.protocol import (
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChunkChoice,
    ChunkDelta,
    Completion,
    CompletionChoice,
    UsageInfo,
)
from atelier.api.streaming import CLIENT_CLOSED, Payload, collect, streamed
from atelier.catalog import ModelSpec
from atelier.cloud.generation import Generation, GenerationService, Prepared, new_id
from atelier.cloud.served_models import ServedModel
from atelier.engine.types import Usage
from atelier.principal import Principal

Extras = Callable[[str], dict[str, Any]]
"""The finished text → fields added to the object and to the finishing chunk (grounded chat: citations)."""


def fingerprint(spec: ModelSpec) -> str:
    """``system_fingerprint``: changes when the model's spec or the server version changes."""
    digest = hashlib.sha256(f"{__version__}:{spec.model_dump_json()}".encode()).hexdigest()
    return f"fp_{digest[:10]}"


def response_head(response_id: str, served: ServedModel) -> dict:
    """The fields every completion object and chunk repeats: id, created, model (as asked), fingerprint."""
    return {"id": response_id, "created": int(time.time()), "model": served.name,
            "system_fingerprint": fingerprint(served.spec)}


def usage_info(usage: Usage) -> UsageInfo:
    """The API's usage object for the engine's counts."""
    return UsageInfo(
        prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens, total_tokens=usage.total_tokens
    )


class ChatChunks:
    """``chat.completion.chunk`` events: the role, content deltas, the finish (plus extras), the usage."""

    def __init__(self, head: dict, extras: Extras | None = None):
        self._head = head
        self._extras = extras

    def _chunk(self, delta: ChunkDelta, finish: str | None = None) -> ChatCompletionChunk:
        return ChatCompletionChunk(**self._head, choices=[ChunkChoice(delta=delta, finish_reason=finish)])

    def opening(self) -> list[Payload]:
        return [self._chunk(ChunkDelta(role="assistant", content=""))]

    def delta(self, text: str) -> Payload:
        return self._chunk(ChunkDelta(content=text))

    def finish(self, reason: str, text: str) -> Payload:
        chunk = self._chunk(ChunkDelta(), reason)
        if self._extras is None:
            return chunk
        return {**chunk.model_dump(mode="json"), **self._extras(text)}

    def usage(self, usage: Usage) -> Payload:
        return ChatCompletionChunk(**self._head, choices=[], usage=usage_info(usage))


class CompletionChunks:
    """``text_completion`` events: text pieces, the finish reason, the usage."""

    def __init__(self, head: dict):
        self._head = head

    def opening(self) -> list[Payload]:
        return []

    def delta(self, text: str) -> Payload:
        return Completion(**self._head, choices=[CompletionChoice(text=text, finish_reason=None)])

    def finish(self, reason: str, text: str) -> Payload:
        return Completion(**self._head, choices=[CompletionChoice(text="", finish_reason=reason)])

    def usage(self, usage: Usage) -> Payload:
        return Completion(**self._head, choices=[], usage=usage_info(usage))


async def respond_chat(request: Request, service: GenerationService, principal: Principal, prepared: Prepared | None,
                       served: ServedModel, *, stream: bool, include_usage: bool, fixed_text: str = "",
                       extras: Extras | None = None) -> Any:
    """Open the chat generation and answer it as a ``chat.completion`` or its chunks.

    Args:
        request: The HTTP request (a client leaving aborts the generation).
        service: The generation pipeline.
        principal: The caller (its tenancy's limits apply).
        prepared: The prepared generation; None answers ``fixed_text`` without the engine.
        served: What serves it (the name shown as ``model``).
        stream: Answer with SSE chunks.
        include_usage: Send the usage chunk (streams).
        fixed_text: The answer when ``prepared`` is None.
        extras: Fields added from the finished text (object and finishing chunk).

    Raises:
        QuotaExceeded: Over the tenancy's limits, or the engine's queue is full.
    """
    if prepared is None:
        generation, response_id = Generation.fixed(fixed_text), new_id("chatcmpl")
    else:
        generation, response_id = await service.open(principal, prepared), prepared.request.request_id
    head = response_head(response_id, served)
    if stream:
        return streamed(generation, ChatChunks(head, extras), include_usage)
    outcome = await collect(generation, request)
    if outcome is None:
        return Response(status_code=CLIENT_CLOSED)
    message = AssistantMessage(content=outcome.text)
    completion = ChatCompletion(**head, choices=[ChatChoice(message=message, finish_reason=outcome.finish_reason)],
                                usage=usage_info(outcome.usage))
    if extras is None:
        return completion
    return JSONResponse({**completion.model_dump(mode="json"), **extras(outcome.text)})  # the model would drop them


async def respond_completion(request: Request, service: GenerationService, principal: Principal,
                             prepared: Prepared, *, stream: bool, include_usage: bool) -> Any:
    """Open the text generation and answer it as a ``text_completion`` or its chunks."""
    generation = await service.open(principal, prepared)
    head = response_head(prepared.request.request_id, prepared.served)
    if stream:
        return streamed(generation, CompletionChunks(head), include_usage)
    outcome = await collect(generation, request)
    if outcome is None:
        return Response(status_code=CLIENT_CLOSED)
    return Completion(**head, choices=[CompletionChoice(text=outcome.text, finish_reason=outcome.finish_reason)],
                      usage=usage_info(outcome.usage))

