"""Grounded generation: search a knowledge base, then answer from its passages with ``[n]`` citations.

Shared by ``POST /v1/knowledge-bases/{id}/answer`` and the ``knowledge_base`` option of chat
completions. Queries are embedded by the engine with the knowledge base's own embedding
model (``search_query``; passages ``search_document`` when reranking). The prompt is built
by ``rag.answer.build_messages`` (fixed system instructions, passages fenced as data, the
question), rendered in the model's chat format and generated through the same path as any
chat completion (``generation.open_generation``: the tenancy's limits, token accounting and
metrics apply; the request is audited like any other). When no retrieved passage is
relevant, the fixed ``NO_ANSWER`` text is returned and the model is not called.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Literal

import anyio.from_thread
from fastapi import Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from atelier.api.openai import generation, served_models
from atelier.api.openai.generation import CLIENT_CLOSED
from atelier.api.openai.protocol import UsageInfo
from atelier.catalog import ModelSpec
from atelier.cloud.knowledge_bases import KnowledgeBaseService, QueryRequest
from atelier.engine.client import EngineClient
from atelier.engine.embedding import MAX_INPUTS
from atelier.engine.types import GenerationRequest, SamplingParams
from atelier.principal import Principal
from atelier.prompts.formats import render_chat
from atelier.rag.answer import NO_ANSWER, Citation, build_messages, relevant
from atelier.rag.attribution import cite
from atelier.rag.indexing import Hit
from atelier.store.tables import KnowledgeBase


class Passage(BaseModel):
    """A retrieved chunk and where it comes from."""

    chunk_id: str = Field(description="`<document id>:<position>`.")
    document_id: str
    filename: str
    position: int = Field(description="0-based order of the chunk in its document.")
    text: str
    start: int = Field(description="First character of the chunk in the document's extracted text.")
    end: int = Field(description="One past its last character.")
    heading: str = Field(description="Heading path above it, e.g. `Install > Disks` (empty if none).")
    tags: list[str]
    score: float = Field(description="dense: cosine; keyword: BM25; hybrid: reciprocal rank fusion; rerank: cosine.")
    rank: int = Field(description="1-based.")
    similarity: float | None = Field(None, description="Cosine similarity to the query, when known.")


class CitationOut(BaseModel):
    """A passage the answer cites as ``[index]``."""

    index: int = Field(description="The `[n]` of the passage in the prompt.")
    document_id: str
    filename: str
    text: str
    start: int
    end: int
    heading: str
    score: float
    found_by: Literal["marker", "overlap"] = Field(
        "marker", description="`marker`: the answer wrote [index]; `overlap`: no marker in the answer, the passage "
        "shares its content words (the model used it without citing it).")


def citation_out(citation: Citation, found_by: str) -> CitationOut:
    """The API object of a citation."""
    return CitationOut(**vars(citation), found_by=found_by)


def passage_out(hit: Hit) -> Passage:
    """The API object of a search hit."""
    c = hit.chunk
    return Passage(chunk_id=c.chunk_id, document_id=c.document_id, filename=c.filename, position=c.position,
                   text=c.text, start=c.start, end=c.end, heading=c.heading, tags=list(c.tags), score=hit.score,
                   rank=hit.rank, similarity=hit.similarity)


def _embedder(engine: EngineClient, model: str, input_type: str):
    """A blocking ``texts → vectors`` over the async engine (call it from a worker thread)."""

    def embed(texts: list[str]) -> list[list[float]]:
        vectors: list[list[float]] = []
        for begin in range(0, len(texts), MAX_INPUTS):
            call = partial(engine.embed, model, texts[begin:begin + MAX_INPUTS], truncate="END",
                           input_type=input_type)
            vectors.extend(anyio.from_thread.run(call).vectors)
        return vectors

    return embed


async def search(request: Request, service: KnowledgeBaseService, kb: KnowledgeBase, query: QueryRequest) -> list[Hit]:
    """The knowledge base's passages for ``query``, searched with its embedding model (in a worker thread)."""
    engine: EngineClient = request.app.state.engine
    principal: Principal = request.state.access.principal
    embed_query = _embedder(engine, kb.embedding_model, "search_query")
    embed_passages = _embedder(engine, kb.embedding_model, "search_document") if query.rerank else None
    return await run_in_threadpool(service.search, principal, kb.id, query, embed_query, embed_passages)


@dataclass
class Grounded:
    """A grounded answer: its text, citations, the passages the model saw, the model and the usage."""

    id: str
    text: str
    model: str
    usage: UsageInfo
    passages: list[Hit] = field(default_factory=list)
    citations: list[CitationOut] = field(default_factory=list)


def relevant_passages(request: Request, kb: KnowledgeBase, hits: list[Hit], mode: str) -> list[Hit]:
    """The hits worth answering from (``rag.answer.relevant`` at the embedding model's threshold)."""
    spec = request.app.state.catalog.get(kb.embedding_model, kind="embedding")
    return relevant(hits, mode, min_similarity=spec.relevance_threshold)


def render(engine: EngineClient, spec: ModelSpec, messages: list[dict]) -> list[int]:
    """Token ids of the grounded prompt in the model's chat format (blocking: run it in a thread)."""
    return render_chat(engine.tokenizer(spec.name), messages, chat_format=spec.chat_format).ids


@dataclass
class Prepared:
    """A grounded request ready for the engine (or answered without it when ``job`` is None)."""

    served: served_models.ServedModel
    passages: list[Hit]
    job: GenerationRequest | None


async def prepare(request: Request, model: str | None, messages_for, hits: list[Hit], kb: KnowledgeBase, *,
                  mode: str, params, prompt_param: str, max_param: str = "max_tokens") -> Prepared:
    """Resolve the model, keep the relevant passages and build the engine request.

    Args:
        request: The HTTP request (its caller, the app's engine and catalog).
        model: The chat model asked for; None for the service's default.
        messages_for: ``passages → chat messages`` (the grounded prompt).
        hits: What the search returned.
        kb: The knowledge base searched.
        mode: The retrieval mode (for the relevance gate).
        params: ``(max_tokens or None) → SamplingParams``.
        prompt_param: The request field named when the prompt is too long.
        max_param: The request field named when the token limit is too large.

    Raises:
        NotFound: No such chat model for the caller.
        InvalidInput: The prompt or the token limit does not fit the model.
    """
    engine: EngineClient = request.app.state.engine
    name = model or request.app.state.settings.default_chat_model
    served = await served_models.resolve(request, engine, request.app.state.catalog, name)
    passages = relevant_passages(request, kb, hits, mode)
    if not passages:
        return Prepared(served, [], None)
    prompt_ids = await run_in_threadpool(render, engine, served.spec, messages_for(passages))
    return Prepared(served, passages, GenerationRequest(
        request_id=generation.new_id("chatcmpl"), prompt_ids=prompt_ids,
        params=params(lambda requested: generation.max_new_tokens(
            served.spec, len(prompt_ids), requested, prompt_param=prompt_param, max_param=max_param)),
        adapter_slot=served.adapter_slot,
    ))  # fmt: skip


async def answer(request: Request, principal: Principal, model: str | None, question: str, hits: list[Hit],
                 kb: KnowledgeBase, *, mode: str, max_tokens: int | None, temperature: float,
                 seed: int | None) -> Grounded | None:
    """Answer ``question`` from ``hits`` (see the module docstring).

    Returns:
        The answer, or None if the client left before it was complete.

    Raises:
        NotFound: No such chat model for the caller.
        InvalidInput: The prompt or ``max_tokens`` does not fit the model.
        QuotaExceeded: Over the tenancy's limits.
    """

    def params(limit) -> SamplingParams:
        return SamplingParams(max_tokens=limit(max_tokens), temperature=temperature, seed=seed)

    ready = await prepare(request, model, lambda passages: build_messages(question, passages), hits, kb,
                          mode=mode, params=params, prompt_param="question")
    answer_id = generation.new_id("kbans")
    if ready.job is None:
        return Grounded(answer_id, NO_ANSWER, ready.served.name, UsageInfo(prompt_tokens=0, total_tokens=0))
    engine = request.app.state.engine
    events = await generation.open_generation(request, principal, engine, ready.served.spec.name, ready.job)
    outcome = await generation.collect(events, len(ready.job.prompt_ids), request)
    if outcome is None:
        return None
    return Grounded(answer_id, outcome.text, ready.served.name, generation.usage_info(outcome.usage),
                    ready.passages, cited(outcome.text, ready.passages))


def cited(text: str, passages: list[Hit]) -> list[CitationOut]:
    """The citations of an answer: its ``[n]`` markers, else the passages it shares content words with."""
    found, how = cite(text, passages)
    return [citation_out(c, how) for c in found]


def client_closed() -> Response:
    """The response logged for a client that left before its answer."""
    return Response(status_code=CLIENT_CLOSED)
