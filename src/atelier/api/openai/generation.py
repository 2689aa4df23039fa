"""What chat and text completions share: token limits, ids, starting and collecting a generation.

Token limits are checked here, before the engine sees a request, so that each bad value
is a 400 naming its parameter. A non-streamed generation is watched for the client leaving,
like a stream is, so that its batch slot is freed at once. :func:`open_generation` holds one
of the tenancy's concurrent-generation slots (``app.state.limits``) for as long as the
generation runs, a stream's included, and once it ends, however it ends, charges the
tokens it really used and counts them in the metrics. Holds no model math: prompts arrive
as token ids and leave as engine events.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
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
from atelier.principal import Principal

log = logging.getLogger(__name__)


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


class Metered:
    """A primed engine stream that reports the usage it really had, once, when it ends.

    Iterate it like the ``Primed`` it wraps; ``aclose`` (which ``collect`` and the SSE
    generators always call) aborts the engine request if it still runs, then calls
    ``on_end(usage)``: the engine's final usage, or the prompt plus the tokens generated
    before the client left.
    """

    def __init__(self, events: Primed, prompt_tokens: int, on_end: Callable[[Usage], None]):
        self._events = events
        self._prompt_tokens = prompt_tokens
        self._on_end = on_end
        self._generated = 0
        self._usage: Usage | None = None
        self._ended = False

    @property
    def usage(self) -> Usage:
        """The usage so far (final once the stream ended)."""
        return self._usage or Usage(self._prompt_tokens, self._generated)

    def __aiter__(self) -> Metered:
        return self

    async def __anext__(self) -> TokenEvent:
        event = await anext(self._events)
        self._generated += len(event.token_ids)
        if event.usage is not None:
            self._usage = event.usage
        return event

    async def aclose(self) -> None:
        """Abort the request if it is still running, then report the usage (once)."""
        try:
            await self._events.aclose()
        finally:
            if not self._ended:
                self._ended = True
                self._on_end(self.usage)


async def open_generation(
    request: Request, principal: Principal, engine: EngineClient, model: str, job: GenerationRequest
) -> Metered:
    """Admit a generation under the tenancy's limits, submit it and await its first event.

    Takes one of the tenancy's concurrent-generation slots after checking its token budget
    for the prompt; the slot is held until the returned stream is closed, and then the
    tokens really used are charged to the tenancy and counted by model in the metrics.

    Raises:
        QuotaExceeded: The tenancy's token budget is spent or every generation slot is
            taken (429), or the engine's queue is full.
        Whatever ``start`` raises (the slot is released first).
    """
    state = request.app.state
    limits = getattr(state, "limits", None)
    slot = limits.generation(principal, len(job.prompt_ids)) if limits is not None else None

    def on_end(usage: Usage) -> None:
        try:
            if limits is not None:
                limits.charge_tokens(principal, usage.total_tokens)
            metrics = getattr(state, "metrics", None)
            if metrics is not None:
                metrics.count_tokens(model, usage.prompt_tokens, usage.completion_tokens)
        except Exception:  # noqa: BLE001 - accounting never turns a finished answer into an error
            log.exception("usage of %s could not be recorded", job.request_id)
        finally:
            if slot is not None:
                slot.release()

    try:
        events = await start(engine, model, job)
    except BaseException:
        if slot is not None:
            slot.release()
        raise
    return Metered(events, len(job.prompt_ids), on_end)


class ClosingBody:
    """A response body that closes ``events`` when it ends, fails or is closed, even unstarted.

    An async generator that was never started skips its ``finally`` when closed; wrapping
    it here makes sure the engine request and the generation slot are let go anyway.
    """

    def __init__(self, chunks: AsyncIterator[str], events: Metered):
        self._chunks = chunks
        self._events = events

    def __aiter__(self) -> ClosingBody:
        return self

    async def __anext__(self) -> str:
        try:
            return await anext(self._chunks)
        except BaseException:
            await self.aclose()
            raise

    async def aclose(self) -> None:
        try:
            aclose = getattr(self._chunks, "aclose", None)
            if aclose is not None:
                with anyio.CancelScope(shield=True):
                    await aclose()
        finally:
            with anyio.CancelScope(shield=True):
                await self._events.aclose()


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


async def collect(events: Primed | Metered, prompt_tokens: int, request: Request | None = None) -> Outcome | None:
    """Run a generation to its end and join its text, unless the client leaves first.

    Args:
        events: The primed engine stream (closed at the end, whatever happens).
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


async def _collect(events: Primed | Metered, prompt_tokens: int) -> Outcome:
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
