"""OpenAI's response shapes for a generation: ``chat.completion`` and ``text_completion``, whole or streamed.

The generation itself is the one pipeline of ``cloud.generation``; this module opens a
prepared generation's choices and answers them as OpenAI does: whole objects (collected
together unless the client leaves: 499) or SSE chunks (``api.streaming``), with tool calls
and log probabilities read by ``api/openai/choices.py``. :func:`respond_chat` serves chat
completions and grounded chat (which adds ``citations`` to the finishing chunk and the
object); :func:`respond_completion` serves text completions (``echo``, ``best_of``).
Holds no model math.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Any

from fastapi import Request, Response
from fastapi.responses import JSONResponse

from atelier import __version__
from atelier.api.openai.choices import ChoiceReader
from atelier.api.openai.protocol import (
    ChatCompletion,
    ChatCompletionChunk,
    ChunkChoice,
    ChunkDelta,
    Completion,
    CompletionChoice,
    UsageInfo,
)
from atelier.api.streaming import CLIENT_CLOSED, Payload, collect_all, combined_usage, streamed
from atelier.catalog import ModelSpec
from atelier.cloud.generation import Generation, GenerationService, Outcome, Prepared, new_id
from atelier.cloud.served_models import ServedModel
from atelier.engine.types import TokenEvent, Usage
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
    """``chat.completion.chunk`` events: the role, content deltas (with log probabilities), the finish
    (plus extras), the usage. With tools the text is held back and sent at the end as content or calls."""

    def __init__(self, head: dict, reader: ChoiceReader, choices: int = 1, extras: Extras | None = None):
        self._head = head
        self._reader = reader
        self._choices = choices
        self._extras = extras

    def _chunk(self, index: int, delta: ChunkDelta, finish: str | None = None, logprobs=None) -> ChatCompletionChunk:
        choice = ChunkChoice(index=index, delta=delta, finish_reason=finish, logprobs=logprobs)
        return ChatCompletionChunk(**self._head, choices=[choice])

    def opening(self) -> list[Payload]:
        return [self._chunk(i, ChunkDelta(role="assistant", content="")) for i in range(self._choices)]

    def event(self, index: int, event: TokenEvent) -> list[Payload]:
        if self._reader.buffers or not (event.text or event.logprobs):
            return []
        return [self._chunk(index, ChunkDelta(content=event.text), logprobs=self._reader.chat_logprobs(event.logprobs))]

    def finish(self, index: int, reason: str, text: str) -> list[Payload]:
        sent: list[Payload] = []
        if self._reader.buffers:
            content, calls = self._reader.calls(text)
            if calls:
                sent.append(self._chunk(index, ChunkDelta(content=content, tool_calls=self._reader.call_deltas(calls))))
                reason = "tool_calls" if reason == "stop" else reason
            elif text:
                sent.append(self._chunk(index, ChunkDelta(content=text)))
        chunk = self._chunk(index, ChunkDelta(), reason)
        sent.append(chunk if self._extras is None else {**chunk.model_dump(mode="json"), **self._extras(text)})
        return sent

    def usage(self, usage: Usage) -> Payload:
        return ChatCompletionChunk(**self._head, choices=[], usage=usage_info(usage))


class CompletionChunks:
    """``text_completion`` events: the echoed prompt, text pieces (with log probabilities), the finish, the usage."""

    def __init__(self, head: dict, reader: ChoiceReader, choices: int = 1, echo: tuple[str, Any] | None = None):
        self._head = head
        self._reader = reader
        self._choices = choices
        self._echo = echo
        self._offsets = [len(echo[0]) if echo else 0] * choices

    def _chunk(self, index: int, text: str, finish: str | None = None, logprobs=None) -> Completion:
        return Completion(**self._head, choices=[CompletionChoice(index=index, text=text, finish_reason=finish,
                                                                  logprobs=logprobs)])

    def opening(self) -> list[Payload]:
        if self._echo is None:
            return []
        text, logprobs = self._echo
        return [self._chunk(i, text, logprobs=logprobs) for i in range(self._choices)]

    def event(self, index: int, event: TokenEvent) -> list[Payload]:
        if not (event.text or event.logprobs):
            return []
        logprobs = self._reader.completion_logprobs(event.logprobs, event.token_ids, self._offsets[index])
        self._offsets[index] += len(event.text)
        return [self._chunk(index, event.text, logprobs=logprobs)]

    def finish(self, index: int, reason: str, text: str) -> list[Payload]:
        return [self._chunk(index, "", reason)]

    def usage(self, usage: Usage) -> Payload:
        return Completion(**self._head, choices=[], usage=usage_info(usage))


async def respond_chat(request: Request, service: GenerationService, principal: Principal, prepared: Prepared | None,
                       served: ServedModel, reader: ChoiceReader, *, stream: bool, include_usage: bool,
                       fixed_text: str = "", extras: Extras | None = None) -> Any:
    """Open the chat generation's choices and answer them as a ``chat.completion`` or its chunks.

    Args:
        request: The HTTP request (a client leaving aborts the generation).
        service: The generation pipeline.
        principal: The caller (its tenancy's limits apply).
        prepared: The prepared generation; None answers ``fixed_text`` without the engine.
        served: What serves it (the name shown as ``model``).
        reader: Reads tool calls and log probabilities as the request asked.
        stream: Answer with SSE chunks.
        include_usage: Send the usage chunk (streams).
        fixed_text: The answer when ``prepared`` is None.
        extras: Fields added from the finished text (object and finishing chunk).

    Raises:
        QuotaExceeded: Over the tenancy's limits, or the engine's queue is full.
    """
    if prepared is None:
        generations, response_id = [Generation.fixed(fixed_text)], new_id("chatcmpl")
    else:
        generations, response_id = await service.open_choices(principal, prepared), prepared.request.request_id
    head = response_head(response_id, served)
    if stream:
        return streamed(generations, ChatChunks(head, reader, len(generations), extras), include_usage)
    outcomes = await collect_all(generations, request)
    if outcomes is None:
        return Response(status_code=CLIENT_CLOSED)
    choices = [reader.chat_choice(i, o.text, o.finish_reason, o.logprobs) for i, o in enumerate(outcomes)]
    completion = ChatCompletion(**head, choices=choices, usage=usage_info(combined_usage([o.usage for o in outcomes])))
    if extras is None:
        return completion
    return JSONResponse({**completion.model_dump(mode="json"), **extras(outcomes[0].text)})  # the model would drop them


def _mean_logprob(outcome: Outcome) -> float:
    """The mean log probability of a choice's tokens (how ``best_of`` ranks them)."""
    return sum(lp.logprob for lp in outcome.logprobs) / len(outcome.logprobs) if outcome.logprobs else float("-inf")


async def respond_completion(request: Request, service: GenerationService, principal: Principal, prepared: Prepared,
                             reader: ChoiceReader, *, stream: bool, include_usage: bool, echo: bool = False,
                             best_of: int | None = None, n: int = 1) -> Any:
    """Open the text generation's choices and answer them as a ``text_completion`` or its chunks.

    ``echo`` puts the prompt before each choice's text (and its log probabilities, the first
    token's none); ``best_of`` choices are generated and the ``n`` with the highest mean log
    probability returned (the prepared request carries ``best_of`` choices then).
    """
    generations = await service.open_choices(principal, prepared)
    head = response_head(prepared.request.request_id, prepared.served)
    prompt_ids = prepared.request.prompt_ids
    prompt_text = "".join(reader.piece(t) for t in prompt_ids) if echo else ""
    if stream:
        first_logprobs = None
        if echo and reader.top_logprobs is not None:  # the first event carries the prompt's log probabilities
            first = await anext(generations[0], None)
            first_logprobs = _prompt_logprobs(reader, first.prompt_logprobs if first else None, prompt_ids)
            generations[0] = _Replayed(generations[0], first)
        chunks = CompletionChunks(head, reader, len(generations), (prompt_text, first_logprobs) if echo else None)
        return streamed(generations, chunks, include_usage)
    outcomes = await collect_all(generations, request)
    if outcomes is None:
        return Response(status_code=CLIENT_CLOSED)
    usage = usage_info(combined_usage([o.usage for o in outcomes]))
    kept = sorted(range(len(outcomes)), key=lambda i: -_mean_logprob(outcomes[i]))[:n] if best_of else \
        list(range(len(outcomes)))
    choices = []
    for index, i in enumerate(kept):
        o = outcomes[i]
        logprobs = reader.completion_logprobs(o.logprobs, o.token_ids, len(prompt_text))
        if echo and logprobs is not None:
            prompt = _prompt_logprobs(reader, o.prompt_logprobs, prompt_ids)
            logprobs = prompt.model_copy(update={key: getattr(prompt, key) + getattr(logprobs, key) for key in
                                                 ("tokens", "token_logprobs", "top_logprobs", "text_offset")})
        choices.append(CompletionChoice(index=index, text=prompt_text + o.text, finish_reason=o.finish_reason,
                                        logprobs=logprobs))
    return Completion(**head, choices=choices, usage=usage)


def _prompt_logprobs(reader: ChoiceReader, logprobs, prompt_ids: list[int]):
    entries = list(logprobs) if logprobs is not None else [None] * len(prompt_ids)
    return reader.completion_logprobs(entries, prompt_ids, 0)


class _Replayed:
    """A generation whose first event was already read: yields it again, then the rest."""

    def __init__(self, generation: Generation, first: TokenEvent | None):
        self._generation = generation
        self._first = first

    @property
    def usage(self) -> Usage:
        return self._generation.usage

    def __aiter__(self) -> _Replayed:
        return self

    async def __anext__(self) -> TokenEvent:
        if self._first is not None:
            first, self._first = self._first, None
            return first
        return await anext(self._generation)

    async def aclose(self) -> None:
        await self._generation.aclose()
