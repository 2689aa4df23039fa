"""The ``knowledge_base`` option of ``POST /v1/chat/completions``: a chat answer grounded in a knowledge base.

The last user message is the question: it is searched in the knowledge base (the caller
needs ``use`` on it; an id that is not the caller's is a 400 naming ``knowledge_base``),
and replaced by the grounded user message of ``rag.answer.build_messages`` (fenced
passages, then the question). The system message becomes the fixed grounding instructions,
followed by the caller's own system message if there was one; earlier turns are kept. The
response is a ``chat.completion`` (or its chunks) plus ``citations``: in a stream, on the
chunk that carries the finish reason. Nothing relevant found: the fixed no-answer text,
without calling the model.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from fastapi import Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from atelier.api.errors import domain_error_payload, server_error_payload
from atelier.api.openai import generation, grounded
from atelier.api.openai.generation import CLIENT_CLOSED
from atelier.api.openai.grounded import CitationOut
from atelier.api.openai.protocol import (
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChunkChoice,
    ChunkDelta,
    KnowledgeBaseOption,
    UsageInfo,
)
from atelier.api.references import body_reference
from atelier.api.resources.knowledge_bases import kb_service, loaded_kb
from atelier.api.streaming import DONE, SSEResponse, sse_event
from atelier.cloud.knowledge_bases import QueryRequest, SearchFilter
from atelier.engine.types import Usage
from atelier.errors import AtelierError, InvalidInput
from atelier.principal import Principal
from atelier.rag.answer import NO_ANSWER, build_messages
from atelier.rag.indexing import Hit

log = logging.getLogger(__name__)


class GroundedChatCompletion(ChatCompletion):
    """A ``chat.completion`` with the passages its answer cites (Atelier extension)."""

    citations: list[CitationOut]


def grounded_messages(messages: list[dict], passages: list[Hit]) -> list[dict]:
    """The conversation with its last user message grounded in ``passages`` (see the module docstring).

    Raises:
        InvalidInput: No user message to answer (``param="messages"``).
    """
    last = next((i for i in range(len(messages) - 1, -1, -1) if messages[i]["role"] == "user"), None)
    if last is None:
        raise InvalidInput("knowledge_base needs a user message to answer", param="messages")
    system = messages[0]["content"] if messages[0]["role"] == "system" else None
    head, tail = build_messages(messages[last]["content"], passages, system=system)
    turns = [m for m in messages[:last] if m["role"] != "system"]
    return [head, *turns, tail, *messages[last + 1:]]


def _option(body: ChatCompletionRequest) -> KnowledgeBaseOption:
    option = body.knowledge_base
    return KnowledgeBaseOption(id=option) if isinstance(option, str) else option  # type: ignore[arg-type]


def _question(messages: list[dict]) -> str:
    for message in reversed(messages):
        if message["role"] == "user" and message["content"].strip():
            return message["content"]
    raise InvalidInput("knowledge_base needs a non-empty user message to answer", param="messages")


async def complete(request: Request, principal: Principal, body: ChatCompletionRequest, messages: list[dict],
                   raw_messages: list[dict]):
    """Answer the chat from the knowledge base named in ``body.knowledge_base``.

    Args:
        request: The HTTP request.
        principal: The caller.
        body: The chat request.
        messages: The conversation after prompt engineering (what would be rendered).
        raw_messages: The conversation as sent (its last user message is the search query).

    Raises:
        InvalidInput: No such knowledge base for the caller (``param="knowledge_base"``), no
            user message, or a prompt that does not fit the model.
        Forbidden: The caller may see the knowledge base but not use it.
    """
    option = _option(body)
    service = kb_service(request)
    with body_reference("knowledge_base"):
        kb = await run_in_threadpool(loaded_kb, request, request.state.access, service, option.id, "invoke")
    query = QueryRequest(query=_question(raw_messages)[:8000], mode=option.mode, top_k=option.top_k,
                         filter=SearchFilter(document_ids=option.document_ids, tags=option.tags), rerank=option.rerank)
    hits = await grounded.search(request, service, kb, query)
    requested, max_param = body.requested_max_tokens()
    ready = await grounded.prepare(
        request, body.model, lambda passages: grounded_messages(messages, passages), hits, kb, mode=option.mode,
        params=lambda limit: body.sampling(limit(requested)), prompt_param="messages", max_param=max_param,
    )  # fmt: skip
    completion_id = generation.new_id("chatcmpl")
    head = {**generation.response_head(completion_id, ready.served.spec), "model": ready.served.name}
    if ready.job is None:
        if body.stream:
            return SSEResponse(_fixed(head, NO_ANSWER, body.include_usage))
        return _json(GroundedChatCompletion(
            **head, choices=[ChatChoice(message=AssistantMessage(content=NO_ANSWER), finish_reason="stop")],
            usage=UsageInfo(prompt_tokens=0, total_tokens=0), citations=[],
        ))  # fmt: skip
    engine = request.app.state.engine
    events = await generation.open_generation(request, principal, engine, ready.served.spec.name, ready.job)
    prompt_tokens = len(ready.job.prompt_ids)
    if body.stream:
        chunks = _chunks(events, head, prompt_tokens, body.include_usage, ready.passages)
        return SSEResponse(generation.ClosingBody(chunks, events))
    outcome = await generation.collect(events, prompt_tokens, request)
    if outcome is None:
        return Response(status_code=CLIENT_CLOSED)
    return _json(GroundedChatCompletion(
        **head, choices=[ChatChoice(message=AssistantMessage(content=outcome.text), finish_reason=outcome.finish_reason)],
        usage=generation.usage_info(outcome.usage), citations=_citations(outcome.text, ready.passages),
    ))  # fmt: skip


def _json(completion: GroundedChatCompletion) -> JSONResponse:
    """The completion as sent (the chat route's response model would drop ``citations``)."""
    return JSONResponse(completion.model_dump(mode="json"))


def _citations(text: str, passages: list[Hit]) -> list[CitationOut]:
    return grounded.cited(text, passages)


def _chunk(head: dict, delta: ChunkDelta, finish: str | None = None, cited: list[CitationOut] | None = None) -> str:
    payload = ChatCompletionChunk(**head, choices=[ChunkChoice(delta=delta, finish_reason=finish)])
    if cited is None:
        return sse_event(payload)
    return sse_event({**payload.model_dump(mode="json"), "citations": [c.model_dump() for c in cited]})


async def _fixed(head: dict, text: str, include_usage: bool) -> AsyncIterator[str]:
    """The no-answer reply as a stream."""
    yield _chunk(head, ChunkDelta(role="assistant", content=""))
    yield _chunk(head, ChunkDelta(content=text))
    yield _chunk(head, ChunkDelta(), "stop", [])
    if include_usage:
        yield sse_event(ChatCompletionChunk(**head, choices=[], usage=UsageInfo(prompt_tokens=0, total_tokens=0)))
    yield DONE


async def _chunks(events: generation.Metered, head: dict, prompt_tokens: int, include_usage: bool,
                  passages: list[Hit]) -> AsyncIterator[str]:
    """SSE events as ``chat._chunks`` sends them, with ``citations`` on the finishing chunk."""
    generated, parts = 0, []
    try:
        yield _chunk(head, ChunkDelta(role="assistant", content=""))
        async for event in events:
            generated += len(event.token_ids)
            if event.text:
                parts.append(event.text)
                yield _chunk(head, ChunkDelta(content=event.text))
            if event.finish_reason is not None:
                cited = _citations("".join(parts), passages)
                yield _chunk(head, ChunkDelta(), generation.finish_reason(event), cited)
                if include_usage:
                    usage = event.usage or Usage(prompt_tokens, generated)
                    yield sse_event(ChatCompletionChunk(**head, choices=[], usage=generation.usage_info(usage)))
                break
        yield DONE
    except AtelierError as exc:
        yield sse_event(domain_error_payload(exc))
    except Exception:
        log.exception("grounded chat stream %s failed", head["id"])
        yield sse_event(server_error_payload())
    finally:
        await events.aclose()
