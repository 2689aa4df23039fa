"""``/v1/knowledge-bases``: knowledge bases of the caller's tenancy (create, list, get, delete, query, answer).

Policies decide on resource type ``knowledge-bases``, per knowledge base's compartment: a
knowledge base the caller may not inspect answers 404 exactly like a missing one (another
tenancy's too). ``query`` and ``answer`` need ``use`` (operation ``invoke``). The documents
of a knowledge base are ``kb_documents.py``'s; retrieval and grounded answers are
``atelier.cloud.grounding``'s; rows, files and vectors ``atelier.cloud.knowledge_bases``'s.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from atelier.api.citations import CitationOut, Passage, citations_out, passage_out
from atelier.api.deps import GuardDep, ServicesDep
from atelier.api.envelopes import Deleted, unix
from atelier.api.openai.protocol import UsageInfo
from atelier.api.openai.serving import usage_info
from atelier.api.streaming import CLIENT_CLOSED, collect
from atelier.cloud.generation import Limit, new_id
from atelier.cloud.grounding import AnswerMode
from atelier.cloud.knowledge_bases import KnowledgeBaseCreate, QueryRequest, SearchFilter
from atelier.engine.types import SamplingParams
from atelier.rag.grounded_prompt import DEFAULT_ANSWER_TOKENS, build_messages
from atelier.store.tables import KnowledgeBase

router = APIRouter(tags=["knowledge-bases"])

TYPE = "knowledge-bases"


class KnowledgeBaseOut(BaseModel):
    """A knowledge base."""

    id: str = Field(description="`kb_…`.")
    object: Literal["knowledge_base"] = "knowledge_base"
    name: str
    description: str
    embedding_model: str = Field(description="The embedding model of its chunks and queries.")
    dimensions: int
    chunk_size: int = Field(description="Most tokens per chunk.")
    chunk_overlap: int = Field(description="Tokens a chunk repeats from the previous one.")
    search_breadth: int = Field(description="Candidates the vector index explores per query.")
    state: str
    document_count: int = Field(description="Documents, whatever their state.")
    chunk_count: int = Field(description="Chunks of the ready documents (what searches see).")
    compartment_id: str | None = None
    created_at: int
    updated_at: int


class KnowledgeBaseList(BaseModel):
    object: Literal["list"] = "list"
    data: list[KnowledgeBaseOut]


class QueryResult(BaseModel):
    object: Literal["list"] = "list"
    data: list[Passage]
    knowledge_base_id: str
    mode: str
    embedding_model: str


class AnswerRequest(BaseModel):
    """The body of ``POST /v1/knowledge-bases/{id}/answer``."""

    model_config = ConfigDict(extra="forbid")

    question: str = Field(min_length=1, max_length=8000, description="The question.")
    model: str | None = Field(None, min_length=1, max_length=200,
                              description="Chat model (base or custom); default the service's default chat model.")
    top_k: int = Field(5, ge=1, le=20, description="Passages given to the model.")
    mode: Literal["dense", "keyword", "hybrid"] = Field("hybrid", description="How passages are retrieved.")
    filter: SearchFilter | None = Field(None, description="Document and tag constraints.")
    rerank: bool = Field(False, description="Rerank a wider pool (MMR) before choosing the passages.")
    max_tokens: int | None = Field(
        None, ge=1, description=f"Most tokens of the answer; default {DEFAULT_ANSWER_TOKENS} (or the model's limit)."
    )
    temperature: float = Field(0.0, ge=0, le=2, description="0: greedy, the same answer every time.")
    seed: int | None = Field(None, ge=0, le=2**63 - 1, description="Seed of the sampling (temperature > 0).")
    answer_mode: AnswerMode = Field(
        "generative", description="`generative`: the model answers, citing [n]; `extractive`: the passages' "
        "sentences that best answer, no generation; `structured`: the model answers inside the JSON Schema "
        "{citations, answer}, so every answer cites valid passages.",
    )


class Answer(BaseModel):
    """A grounded answer."""

    id: str
    object: Literal["knowledge_base.answer"] = "knowledge_base.answer"
    knowledge_base_id: str
    answer: str
    citations: list[CitationOut] = Field(description="The passages cited in the answer, in order of first citation.")
    passages: list[Passage] = Field(description="Every passage the model was given, numbered from 1 in this order.")
    model: str
    usage: UsageInfo
    answer_mode: AnswerMode
    stopped_by: Literal["repetition"] | None = Field(
        None, description="`repetition`: the answer was caught repeating itself, ended there and cut where the "
        "loop began.")
    dropped_citations: int = Field(0, description="[n] the answer wrote for passages it was not given (dropped).")


def kb_out(row: KnowledgeBase) -> KnowledgeBaseOut:
    """The API object of a knowledge base row."""
    return KnowledgeBaseOut(
        id=row.id, name=row.name, description=row.description, embedding_model=row.embedding_model,
        dimensions=row.dimensions, chunk_size=row.chunk_size, chunk_overlap=row.chunk_overlap,
        search_breadth=row.search_breadth, state=row.state, document_count=row.document_count,
        chunk_count=row.chunk_count, compartment_id=row.compartment_id, created_at=unix(row.created_at),
        updated_at=unix(row.updated_at),
    )  # fmt: skip


@router.post("/knowledge-bases", response_model=KnowledgeBaseOut, status_code=201,
             summary="Create a knowledge base")
def create_knowledge_base(body: KnowledgeBaseCreate, services: ServicesDep, guard: GuardDep) -> KnowledgeBaseOut:
    """Create an empty knowledge base with an embedding model and chunking settings."""
    compartment_id = guard.creation_compartment(TYPE, body.compartment, body.name)
    return kb_out(services.knowledge_bases.create(guard.principal, body, compartment_id=compartment_id))


@router.get("/knowledge-bases", response_model=KnowledgeBaseList, summary="List knowledge bases")
def list_knowledge_bases(services: ServicesDep, guard: GuardDep) -> KnowledgeBaseList:
    """Your tenancy's knowledge bases you may inspect, oldest first."""
    rows = guard.visible(services.knowledge_bases.list(guard.principal))
    return KnowledgeBaseList(data=[kb_out(row) for row in rows])


@router.get("/knowledge-bases/{knowledge_base_id}", response_model=KnowledgeBaseOut,
            summary="Retrieve a knowledge base")
def retrieve_knowledge_base(knowledge_base_id: str, guard: GuardDep) -> KnowledgeBaseOut:
    """One knowledge base, with its document and chunk counts."""
    return kb_out(guard.load(TYPE, knowledge_base_id, "get"))


@router.delete("/knowledge-bases/{knowledge_base_id}", response_model=Deleted, summary="Delete a knowledge base")
def delete_knowledge_base(knowledge_base_id: str, services: ServicesDep, guard: GuardDep) -> Deleted:
    """Delete the knowledge base with its documents, chunks and vectors."""
    row = guard.load(TYPE, knowledge_base_id, "delete")
    services.knowledge_bases.delete(guard.principal, row.id)
    return Deleted(id=row.id, object="knowledge_base")


@router.post("/knowledge-bases/{knowledge_base_id}/query", response_model=QueryResult,
             summary="Search a knowledge base")
async def query_knowledge_base(knowledge_base_id: str, body: QueryRequest, services: ServicesDep,
                               guard: GuardDep) -> QueryResult:
    """The passages that best match the query: dense, keyword (BM25) or hybrid, optionally reranked."""
    kb = await run_in_threadpool(guard.load, TYPE, knowledge_base_id, "invoke")
    hits = await services.grounding.search(guard.principal, kb, body)
    return QueryResult(data=[passage_out(h) for h in hits], knowledge_base_id=kb.id, mode=body.mode,
                       embedding_model=kb.embedding_model)


@router.post("/knowledge-bases/{knowledge_base_id}/answer", response_model=Answer,
             summary="Answer a question from a knowledge base")
async def answer_question(knowledge_base_id: str, body: AnswerRequest, request: Request, services: ServicesDep,
                          guard: GuardDep):
    """A grounded answer citing its passages as `[n]`; a fixed reply, without generation, when nothing relevant is found."""
    kb = await run_in_threadpool(guard.load, TYPE, knowledge_base_id, "invoke")
    query = QueryRequest(query=body.question, mode=body.mode, top_k=body.top_k, filter=body.filter,
                         rerank=body.rerank)
    grounding = services.grounding
    hits = await grounding.search(guard.principal, kb, query)

    def sampling(limit: int) -> SamplingParams:
        return SamplingParams(max_tokens=limit, temperature=body.temperature, seed=body.seed)

    ready = await grounding.prepare(
        guard, kb, body.question, hits, mode=body.mode, model=body.model,
        messages_for=lambda passages: build_messages(body.question, passages), sampling=sampling,
        limit=Limit(body.max_tokens, "max_tokens", "question"), answer_mode=body.answer_mode,
    )  # fmt: skip
    usage, stopped_by, text = UsageInfo(prompt_tokens=0, total_tokens=0), None, ""
    if ready.prepared is not None:
        generation = await services.generation.open(guard.principal, ready.prepared)
        outcome = await collect(generation, request)
        if outcome is None:  # the client left
            return Response(status_code=CLIENT_CLOSED)
        usage, stopped_by, text = usage_info(outcome.usage), outcome.stopped_by, outcome.text
    answered = grounding.read(ready, text, stopped_by)
    return Answer(
        id=new_id("kbans"), knowledge_base_id=kb.id, answer=answered.text,
        citations=citations_out(answered.citations, answered.found_by),
        passages=[passage_out(h) for h in ready.passages], model=ready.served.name, usage=usage,
        answer_mode=body.answer_mode, stopped_by=stopped_by, dropped_citations=answered.dropped_citations,
    )  # fmt: skip
