"""One generation pipeline for chat, text completions and grounded answers.

In the shape of vLLM's ``OpenAIServing``: :meth:`GenerationService.prepare_chat` (or
``prepare_text``) resolves the ``model`` to what the engine serves (base, endpoint or custom
model: an opaque adapter slot, after the policy check), renders the prompt into token ids,
sizes ``max_new_tokens`` against the model's limits (a 400 naming the parameter at fault)
and builds the engine request; :meth:`GenerationService.open` admits it under the tenancy's
limits and starts it. The returned :class:`Generation` is the one stream class: iterate its
events (or ``collect`` them), and ``aclose`` it, which aborts the engine request if it still
runs (freeing its batch slot) and reports the tokens really used, once, to the admission
that let it in (limits and metrics).

The engine's first event is awaited before ``open`` returns, so a full queue is still a
429 and not an error inside a 200 stream. Knows nothing about HTTP, SSE or OpenAI's shapes.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import anyio
import anyio.to_thread

from atelier.catalog import ModelSpec
from atelier.cloud.served_models import Authorizer, ServedModel, ServedModels
from atelier.engine.client import EngineClient
from atelier.engine.types import Constraint, GenerationRequest, SamplingParams, TokenEvent, TokenLogprob, Usage
from atelier.errors import InvalidInput, Unavailable
from atelier.principal import Principal
from atelier.prompts.formats import render_chat

Sampling = Callable[[int], SamplingParams]
"""``max_new_tokens`` → the request's sampling parameters."""


class Admission(Protocol):
    """Lets a generation in under the tenancy's limits and accounts for what it used."""

    def admit(self, principal: Principal, model: str, prompt_tokens: int) -> Callable[[Usage | None], None]:
        """Take a generation slot (raising QuotaExceeded when none is free). The returned callable
        is called once when the generation ends, however it ends: with its final usage, or with
        None when the engine refused it before its first token (nothing to charge)."""


def new_id(prefix: str) -> str:
    """A fresh response id such as ``chatcmpl-1f3a…`` (96 random bits)."""
    return f"{prefix}-{secrets.token_hex(12)}"


def max_new_tokens(spec: ModelSpec, prompt_tokens: int, requested: int | None, *, prompt_param: str,
                   max_param: str = "max_tokens") -> int:
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
            param=prompt_param, code="context_length_exceeded",
        )  # fmt: skip
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
            param=max_param, code="context_length_exceeded",
        )  # fmt: skip
    return requested


@dataclass(frozen=True)
class Limit:
    """The token limit a request asked for, and the parameters named when something does not fit."""

    requested: int | None = None
    max_param: str = "max_tokens"
    prompt_param: str = "messages"


@dataclass(frozen=True)
class Shape:
    """What a request asks of the output besides sampling: a constraint, and how many choices."""

    constraint: Constraint | None = None
    param: str = "response_format"
    """The request field named when the engine cannot enforce the constraint."""
    choices: int = 1
    prefix: str = ""
    """Text the answer starts with, written for the model after the generation prompt (chat only): the
    model continues it, and it is part of the answer."""


@dataclass(frozen=True)
class Prepared:
    """A generation ready for the engine: what serves it, the engine request and how many choices."""

    served: ServedModel
    request: GenerationRequest
    choices: int = 1
    prefix: str = ""
    """The start of every choice's text, written already (``Shape.prefix``)."""

    @property
    def prompt_tokens(self) -> int:
        """Length of the rendered prompt."""
        return len(self.request.prompt_ids)

    def requests(self) -> list[GenerationRequest]:
        """One engine request per choice; with a seed, choice ``i`` uses ``seed + i`` (so choice 0 is the
        request alone, and every choice is what a separate request of that seed gives)."""
        if self.choices == 1:
            return [self.request]
        seed = self.request.params.seed
        return [replace(self.request, request_id=f"{self.request.request_id}-{i}",
                        params=replace(self.request.params, seed=None if seed is None else seed + i))
                for i in range(self.choices)]  # fmt: skip


@dataclass(frozen=True)
class Outcome:
    """A finished generation."""

    text: str
    finish_reason: str
    usage: Usage
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    """One per generated token, when the request asked for them."""
    prompt_logprobs: tuple[TokenLogprob | None, ...] | None = None
    stopped_by: str | None = None
    """What ended a ``stop`` that was not the model's (``repetition``: the loop guard)."""

def finish_reason(event: TokenEvent) -> str:
    """OpenAI's finish reason for the last event (an abort reads as ``stop``)."""
    return "length" if event.finish_reason == "length" else "stop"


class Generation:
    """A started generation: iterate its events; ``aclose`` ends it (see the module docstring).

    Use ``await Generation.start(events, prompt_tokens, on_end)``.
    """

    def __init__(self, events: AsyncIterator[TokenEvent], first: TokenEvent | None, prompt_tokens: int,
                 on_end: Callable[[Usage | None], None] | None):
        self._events = events
        self._first = first
        self._prompt_tokens = prompt_tokens
        self._on_end = on_end
        self._generated = 0
        self._usage: Usage | None = None
        self._ended = False

    @classmethod
    async def start(cls, events: AsyncIterator[TokenEvent], prompt_tokens: int,
                    on_end: Callable[[Usage | None], None] | None = None, prefix: str = "") -> Generation:
        """Await the first event of ``events``, so that the engine's refusals keep their status
        (``prefix``: text already written, put before the first event's).

        Raises:
            Whatever the engine raises before its first event (the stream is closed and
            ``on_end(None)`` called); Unavailable if it ends without any event.
        """
        generation = cls(events, None, prompt_tokens, on_end)
        try:
            first = await anext(events)
            generation._first = replace(first, text=prefix + first.text) if prefix else first
        except StopAsyncIteration:
            await generation._end(None)
            raise Unavailable("the engine ended the request without any output") from None
        except BaseException:
            await generation._end(None)
            raise
        return generation

    @classmethod
    def fixed(cls, text: str) -> Generation:
        """A generation that answers ``text`` without the engine (no tokens used)."""

        async def events() -> AsyncIterator[TokenEvent]:
            yield TokenEvent(text=text, finish_reason="stop", usage=Usage(0, 0))

        return cls(events(), None, 0, None)

    @property
    def usage(self) -> Usage:
        """The usage so far (final once the generation ended)."""
        return self._usage or Usage(self._prompt_tokens, self._generated)

    def __aiter__(self) -> Generation:
        return self

    async def __anext__(self) -> TokenEvent:
        if self._first is not None:
            event, self._first = self._first, None
        else:
            event = await anext(self._events)
        self._generated += len(event.token_ids)
        if event.usage is not None:
            self._usage = event.usage
        return event

    async def collect(self) -> Outcome:
        """Every event's text, tokens and log probabilities joined; the generation is closed whatever happens."""
        parts: list[str] = []
        ids: list[int] = []
        logprobs: list[TokenLogprob] = []
        prompt_logprobs = None
        last: TokenEvent | None = None
        try:
            async for event in self:
                parts.append(event.text)
                ids.extend(event.token_ids)
                logprobs.extend(event.logprobs)
                if event.prompt_logprobs is not None:
                    prompt_logprobs = event.prompt_logprobs
                last = event
        finally:
            await self.aclose()
        return Outcome("".join(parts), finish_reason(last) if last is not None else "stop", self.usage, ids,
                       logprobs, prompt_logprobs, last.stopped_by if last is not None else None)

    async def aclose(self) -> None:
        """Abort the engine request if it still runs, then report the usage (once)."""
        await self._end(self.usage)

    async def _end(self, usage: Usage | None) -> None:
        try:
            aclose = getattr(self._events, "aclose", None)
            if aclose is not None:
                with anyio.CancelScope(shield=True):
                    await aclose()
        finally:
            if not self._ended:
                self._ended = True
                if self._on_end is not None:
                    self._on_end(usage)


class GenerationService:
    """Prepares and starts generations (see the module docstring).

    Args:
        engine: The inference engine.
        models: Resolves a request's ``model``.
        admission: The tenancy limits and accounting; None admits everything.
    """

    def __init__(self, engine: EngineClient, models: ServedModels, admission: Admission | None = None):
        self._engine = engine
        self._models = models
        self._admission = admission

    async def resolve(self, guard: Authorizer, model: str) -> ServedModel:
        """What serves ``model`` for the guard's caller (see ``ServedModels.resolve``)."""
        return await anyio.to_thread.run_sync(self._models.resolve, guard, model)

    def tokenizer(self, spec: ModelSpec) -> Any:
        """The model's tokenizer (blocking: it may load)."""
        return self._engine.tokenizer(spec.name)

    async def prepare_chat(self, guard: Authorizer, model: str | ServedModel, messages: list[dict], sampling: Sampling,
                           *, limit: Limit = Limit(), chat_format: str | None = None, id_prefix: str = "chatcmpl",
                           shape: Shape = Shape(), functions: Mapping[str, Mapping] | None = None) -> Prepared:
        """A chat generation: ``messages`` rendered in the model's chat format (or ``chat_format``).

        ``functions`` are the tools described to the model (see ``render_chat``).

        Raises:
            NotFound, Forbidden, InvalidInput, Conflict, Unavailable: See ``ServedModels.resolve``;
                InvalidInput also when the prompt or the token limit does not fit the model, or the
                constraint is not one the engine can enforce (``shape.param`` named).
        """
        served = model if isinstance(model, ServedModel) else await self.resolve(guard, model)

        def render() -> list[int]:
            tokenizer = self.tokenizer(served.spec)
            rendered = render_chat(tokenizer, messages, chat_format=chat_format or served.spec.chat_format,
                                   functions=functions)
            self._check(served, shape)
            if shape.prefix:
                return list(tokenizer(rendered.text + shape.prefix, add_special_tokens=False)["input_ids"])
            return rendered.ids

        return self._prepared(served, await anyio.to_thread.run_sync(render), sampling, limit, id_prefix, shape)

    def _check(self, served: ServedModel, shape: Shape) -> None:
        """Refuse a constraint the engine cannot compile (400 naming ``shape.param``); blocking."""
        if shape.constraint is not None:
            self._engine.validate_constraint(served.spec.name, shape.constraint, shape.param)

    async def prepare_text(self, guard: Authorizer, model: str, prompt: str | list[int], sampling: Sampling, *,
                           limit: Limit = Limit(prompt_param="prompt"), id_prefix: str = "cmpl",
                           shape: Shape = Shape()) -> Prepared:
        """A plain continuation of ``prompt`` (a string, tokenized without special tokens, or token ids).

        Raises:
            InvalidInput: An empty prompt, a token id outside the vocabulary, or a prompt or
                token limit that does not fit the model; and what ``prepare_chat`` raises.
        """
        served = await self.resolve(guard, model)

        def tokenize() -> list[int]:
            tokenizer = self.tokenizer(served.spec)
            if isinstance(prompt, str):
                ids = list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
            else:
                vocab = len(tokenizer)
                for i, token in enumerate(prompt):
                    if not 0 <= token < vocab:
                        raise InvalidInput(f"token id {token} is outside the vocabulary (0 to {vocab - 1})",
                                           param=f"{limit.prompt_param}[{i}]")
                ids = list(prompt)
            if not ids:
                raise InvalidInput(f"{limit.prompt_param} must not be empty", param=limit.prompt_param)
            self._check(served, shape)
            return ids

        return self._prepared(served, await anyio.to_thread.run_sync(tokenize), sampling, limit, id_prefix, shape)

    @staticmethod
    def _prepared(served: ServedModel, ids: list[int], sampling: Sampling, limit: Limit, id_prefix: str,
                  shape: Shape) -> Prepared:
        size = max_new_tokens(served.spec, len(ids), limit.requested, prompt_param=limit.prompt_param,
                              max_param=limit.max_param)
        request = GenerationRequest(request_id=new_id(id_prefix), prompt_ids=ids, params=sampling(size),
                                    adapter_slot=served.adapter_slot, constraint=shape.constraint)
        return Prepared(served, request, shape.choices, shape.prefix)

    async def open(self, principal: Principal, prepared: Prepared) -> Generation:
        """Admit the generation under the tenancy's limits, submit it and await its first event.

        Raises:
            QuotaExceeded: The tenancy's token budget is spent, every generation slot is
                taken, or the engine's queue is full (429).
            Whatever the engine raises before its first event (the slot is released first).
        """
        return await self._start(principal, prepared, prepared.request)

    async def open_choices(self, principal: Principal, prepared: Prepared) -> list[Generation]:
        """``open`` for each choice of ``prepared`` (one generation each); all started or none.

        Raises:
            What ``open`` raises (the choices already started are closed first).
        """
        started: list[Generation] = []
        try:
            for request in prepared.requests():
                started.append(await self._start(principal, prepared, request))
        except BaseException:
            for generation in started:
                await generation.aclose()
            raise
        return started

    async def _start(self, principal: Principal, prepared: Prepared, request: GenerationRequest) -> Generation:
        model = prepared.served.spec.name
        on_end = None
        if self._admission is not None:
            on_end = self._admission.admit(principal, model, prepared.prompt_tokens)
        request = replace(request, cache_scope=principal.tenancy_id)  # cached prefixes stay in the tenancy
        return await Generation.start(self._engine.generate(model, request), prepared.prompt_tokens, on_end,
                                      prefix=prepared.prefix)
