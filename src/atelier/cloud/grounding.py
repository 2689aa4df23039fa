"""Grounded generation: search a knowledge base, then answer from its passages with ``[n]`` citations.

Shared by ``POST /v1/knowledge-bases/{id}/answer`` and the ``knowledge_base`` option of chat
completions: retrieve (:meth:`Grounding.search`: queries embedded by the engine with the
knowledge base's own embedding model, ``search_query``; passages ``search_document`` when
reranking) → keep the relevant passages → build the grounded prompt (``rag.answer``: fixed
system instructions, passages fenced as data, the question) → prepare it through the one
generation pipeline (``cloud.generation``: the tenancy's limits, token accounting and
metrics apply) → cite. When no retrieved passage is relevant, nothing is prepared: the
caller answers the fixed ``NO_ANSWER`` text and the model is not called. Knows nothing about
HTTP or OpenAI's shapes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import anyio.from_thread
import anyio.to_thread

from atelier.catalog import Catalog
from atelier.cloud.generation import GenerationService, Limit, Prepared, Sampling
from atelier.cloud.knowledge_bases import KnowledgeBaseService, QueryRequest
from atelier.cloud.served_models import Authorizer, ServedModel
from atelier.engine.client import EngineClient
from atelier.engine.types import MAX_INPUTS
from atelier.principal import Principal
from atelier.rag.answer import NO_ANSWER, Citation, relevant
from atelier.rag.attribution import cite
from atelier.rag.indexing import Hit
from atelier.store.tables import KnowledgeBase

__all__ = ["NO_ANSWER", "Grounded", "Grounding"]


@dataclass(frozen=True)
class Grounded:
    """A grounded request: what serves it, the passages the model sees, and the generation
    (None: nothing relevant was found, answer ``NO_ANSWER`` without the model)."""

    served: ServedModel
    passages: list[Hit]
    prepared: Prepared | None


class Grounding:
    """Retrieval and grounded prompts over the knowledge bases (see the module docstring).

    Args:
        knowledge_bases: The knowledge bases (search).
        engine: The inference engine (query embeddings).
        catalog: The models (embedding models' relevance thresholds).
        generation: The generation pipeline.
        default_model: The chat model used when a request names none.
    """

    def __init__(self, knowledge_bases: KnowledgeBaseService, engine: EngineClient, catalog: Catalog,
                 generation: GenerationService, default_model: str):
        self._knowledge_bases = knowledge_bases
        self._engine = engine
        self._catalog = catalog
        self._generation = generation
        self._default_model = default_model

    def _embedder(self, model: str, input_type: str) -> Callable[[list[str]], list[list[float]]]:
        """A blocking ``texts → vectors`` over the async engine (call it from a worker thread)."""

        def embed(texts: list[str]) -> list[list[float]]:
            vectors: list[list[float]] = []
            for begin in range(0, len(texts), MAX_INPUTS):
                call = partial(self._engine.embed, model, texts[begin:begin + MAX_INPUTS], truncate="END",
                               input_type=input_type)
                vectors.extend(anyio.from_thread.run(call).vectors)
            return vectors

        return embed

    async def search(self, principal: Principal, kb: KnowledgeBase, query: QueryRequest) -> list[Hit]:
        """The knowledge base's passages for ``query``, searched with its embedding model.

        Raises:
            NotFound: The knowledge base is gone.
        """
        embed_query = self._embedder(kb.embedding_model, "search_query")
        embed_passages = self._embedder(kb.embedding_model, "search_document") if query.rerank else None
        return await anyio.to_thread.run_sync(self._knowledge_bases.search, principal, kb.id, query, embed_query,
                                              embed_passages)

    def relevant(self, kb: KnowledgeBase, hits: list[Hit], mode: str) -> list[Hit]:
        """The hits worth answering from (``rag.answer.relevant`` at the embedding model's threshold)."""
        spec = self._catalog.get(kb.embedding_model, kind="embedding")
        return relevant(hits, mode, min_similarity=spec.relevance_threshold)

    async def prepare(self, guard: Authorizer, kb: KnowledgeBase, hits: list[Hit], *, mode: str, model: str | None,
                      messages_for: Callable[[list[Hit]], list[dict]], sampling: Sampling,
                      limit: Limit) -> Grounded:
        """Resolve the model, keep the relevant passages and prepare the grounded generation.

        Args:
            guard: The caller (policies on endpoints and custom models).
            kb: The knowledge base searched.
            hits: What the search returned.
            mode: The retrieval mode (for the relevance gate).
            model: The chat model asked for; None for the service's default.
            messages_for: ``passages → chat messages`` (the grounded prompt).
            sampling: ``max_new_tokens → SamplingParams``.
            limit: The requested token limit and the parameters to name when it does not fit.

        Raises:
            NotFound: No such chat model for the caller.
            InvalidInput: The prompt or the token limit does not fit the model.
        """
        served = await self._generation.resolve(guard, model or self._default_model)
        passages = self.relevant(kb, hits, mode)
        if not passages:
            return Grounded(served, [], None)
        prepared = await self._generation.prepare_chat(guard, served, messages_for(passages), sampling, limit=limit)
        return Grounded(served, passages, prepared)

    @staticmethod
    def cite(text: str, passages: list[Hit]) -> tuple[list[Citation], str]:
        """The citations of an answer and how they were found: its ``[n]`` markers (``marker``),
        else the passages it shares content words with (``overlap``)."""
        return cite(text, passages)
