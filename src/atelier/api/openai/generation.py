"""What chat and text completions share: token limits, ids, starting and collecting a generation.

Token limits are checked here, before the engine sees a request, so that each bad value
is a 400 naming its parameter. A non-streamed generation is watched for the client leaving,
like a stream is, so that its batch slot is freed at once. Holds no model math: prompts
arrive as token ids and leave as engine events.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass

import anyio
from starlette.requests import Request

from atelier import __version__
from atelier.api.openai.protocol import UsageInfo
from atelier.api.streaming import Primed
from atelier.catalog import ModelSpec
from atelier.engine.client import EngineClient
from atelier.engine.types import GenerationRequest, TokenEvent, Usage
from atelier.errors import InvalidInput


CLIENT_CLOSED = 499
"""Status logged for a request whose client left before the answer (nginx's convention)."""


def new_id(prefix: str) -> str:
    """A fresh response id such as ``chatcmpl-1f3a…`` (96 random bits)."""
    return f"{prefix}-{secrets.token_hex(12)}"


def fingerprint(spec: ModelSpec) -> str:
    """``system_fingerprint``: changes when the model's spec or the server version changes."""
    digest = hashlib.sha256(f"{__version__}:{spec.model_dump_json()}".encode()).hexdigest()
    return f"fp_{digest[:10]}"


def response_head(response_id: str, spec: ModelSpec) -> dict:
    """The fields every completion object and chunk repeats: id, created, model, fingerprint."""
    return {
        "id": response_id,
        "created": int(time.time()),
        "model": spec.name,
        "system_fingerprint": fingerprint(spec),
    }


def max_new_tokens(
    spec: ModelSpec,
    prompt_tokens: int,
    requested: int | None,
    *,
    prompt_param: str,
    max_param: str = "max_tokens",
) -> int:
    """The number of tokens a request may generate, or a 400 naming the parameter at fault.

    Args:
        spec: The chat model (``context_length``, ``max_output_tokens``).
        prompt_tokens: Length of the rendered prompt.
        requested: The request's max_tokens, or None for the default.
        prompt_param: Parameter named when the prompt alone fills the context.
        max_param: Parameter named when the requested count is too large.

    Returns:
        ``requested``, or by default ``min(max_output_tokens, context_length - prompt_tokens)``.

    Raises:
        InvalidInput: The prompt fills the context; ``requested`` exceeds the model's
            output limit; or prompt plus ``requested`` exceed the context.
    """
    context = spec.context_length
    if prompt_tokens >= context:
        raise InvalidInput(
            f"This model's maximum context length is {context} tokens, but the prompt has {prompt_tokens} tokens. "
            "Shorten the prompt.",
            param=prompt_param,
            code="context_length_exceeded",
        )
    room = context - prompt_tokens
    cap = spec.max_output_tokens or room
    if requested is None:
        return min(cap, room)
    if requested > cap:
        raise InvalidInput(
            f"{max_param} is too large: {requested}. This model supports at most {cap} completion tokens.",
            param=max_param,
        )
    if requested > room:
        raise InvalidInput(
            f"The prompt has {prompt_tokens} tokens and {max_param} is {requested}: together more than this "
            f"model's context of {context} tokens. Ask for at most {room} tokens.",
            param=max_param,
            code="context_length_exceeded",
        )
    return requested


async def start(engine: EngineClient, model: str, request: GenerationRequest) -> Primed:
    """Submit ``request`` and await its first event, so that queue errors keep their status."""
    return await Primed.start(engine.generate(model, request))


def finish_reason(event: TokenEvent) -> str:
    """OpenAI's finish reason for the last event (an abort reads as ``stop``)."""
    return "length" if event.finish_reason == "length" else "stop"


def usage_info(usage: Usage) -> UsageInfo:
    """The API's usage object for the engine's counts."""
    return UsageInfo(
        prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens, total_tokens=usage.total_tokens
    )


@dataclass
class Outcome:
    """A finished generation."""

    text: str
    finish_reason: str
    usage: Usage


async def collect(events: Primed, prompt_tokens: int, request: Request | None = None) -> Outcome | None:
    """Run a generation to its end and join its text, unless the client leaves first.

    Args:
        events: The primed engine stream.
        prompt_tokens: Prompt length, for the usage if the engine reports none.
        request: The HTTP request; when given, a client disconnect aborts the generation
            at once (its batch slot is freed) instead of letting it run to the end.

    Returns:
        The outcome, or None if the client disconnected first.
    """
    if request is None:
        return await _collect(events, prompt_tokens)
    outcome: Outcome | None = None
    error: Exception | None = None

    async with anyio.create_task_group() as group:

        async def run() -> None:
            nonlocal outcome, error
            try:
                outcome = await _collect(events, prompt_tokens)
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
    return outcome


async def _collect(events: Primed, prompt_tokens: int) -> Outcome:
    """Every event's text joined; the request is aborted if this is interrupted."""
    parts: list[str] = []
    last: TokenEvent | None = None
    generated = 0
    try:
        async for event in events:
            parts.append(event.text)
            generated += len(event.token_ids)
            last = event
    finally:
        await events.aclose()
    usage = (last.usage if last is not None else None) or Usage(prompt_tokens, generated)
    return Outcome("".join(parts), finish_reason(last) if last is not None else "stop", usage)
