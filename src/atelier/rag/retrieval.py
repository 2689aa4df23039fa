"""Retrieval over a ``VectorStore``: dense, keyword (BM25), hybrid (RRF), optional rerank.

Hybrid retrieval fuses the dense and keyword lists by reciprocal rank fusion (Cormack,
Clarke & Büttcher, SIGIR 2009): ``score(d) = Σ_lists 1 / (k + rank_list(d))`` with
``k = 60``. The optional rerank is maximal marginal relevance (Carbonell & Goldstein,
SIGIR 1998) over the candidate pool, on exact cosine similarities of freshly embedded
passages: it reorders by embedding relevance to the query and pushes down passages that
repeat ones already chosen (overlapping chunks, duplicated documents).

This module knows nothing about models or tenants: the query and passage embedders are
callables, and the ``Scope`` is passed through to the store untouched.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Literal

import numpy as np

from atelier.rag.indexing import Filter, Hit, Scope, VectorStore

Mode = Literal["dense", "keyword", "hybrid"]
MODES: tuple[str, ...] = ("dense", "keyword", "hybrid")

RRF_K = 60
"""The constant of reciprocal rank fusion (the value of the original paper)."""

MMR_LAMBDA = 0.5
"""Weight of relevance against novelty in the rerank (1.0 = relevance only); 0.5 as in
LangChain's ``max_marginal_relevance_search``. Higher values let an exact duplicate through
with embedders whose cosines are compressed (multilingual-e5: unrelated pairs ≈ 0.75)."""


def candidates_for(top_k: int) -> int:
    """How many hits each list contributes before fusion or rerank: ``max(4·top_k, 20)``."""
    return max(4 * top_k, 20)


def rrf(lists: list[list[Hit]], k: int = RRF_K) -> list[Hit]:
    """Reciprocal rank fusion of ranked lists into one.

    Semantics::

        for hits in lists:
            for hit in hits:
                score[hit.chunk.chunk_id] += 1 / (k + hit.rank)

    Ties are broken by the best single rank, then by ``chunk_id``. A fused hit keeps the
    cosine ``similarity`` of the list that knew it (the dense one).

    Args:
        lists: Ranked hit lists (each hit's ``rank`` is 1-based within its list).
        k: The RRF constant; larger values flatten the weight of top ranks.

    Returns:
        Hits with their RRF score and new 1-based rank, best first.
    """
    scores: dict[str, float] = {}
    best_rank: dict[str, int] = {}
    first: dict[str, Hit] = {}
    similarity: dict[str, float] = {}
    for hits in lists:
        for hit in hits:
            key = hit.chunk.chunk_id
            scores[key] = scores.get(key, 0.0) + 1.0 / (k + hit.rank)
            best_rank[key] = min(best_rank.get(key, hit.rank), hit.rank)
            first.setdefault(key, hit)
            if hit.similarity is not None:
                similarity[key] = max(similarity.get(key, hit.similarity), hit.similarity)
    order = sorted(scores, key=lambda key: (-scores[key], best_rank[key], key))
    return [
        Hit(chunk=first[key].chunk, score=scores[key], rank=i + 1, similarity=similarity.get(key))
        for i, key in enumerate(order)
    ]


def retrieve(
    store: VectorStore,
    scope: Scope,
    query: str,
    embed_query: Callable[[str], np.ndarray],
    mode: Mode = "hybrid",
    top_k: int = 5,
    filter: Filter | None = None,
    rerank: bool = False,
    embed_passages: Callable[[list[str]], np.ndarray] | None = None,
) -> list[Hit]:
    """The ``top_k`` passages of a knowledge base for ``query``.

    Args:
        store: Where the chunks are.
        scope: The tenancy and knowledge base searched (nothing outside it is reached).
        query: The question.
        embed_query: Query text → L2-normalised float32 vector (not called in ``keyword``
            mode without rerank).
        mode: ``dense`` (cosine), ``keyword`` (BM25) or ``hybrid`` (RRF of both).
        top_k: Passages returned.
        filter: Document and tag constraints.
        rerank: Rerank a wider candidate pool by MMR on exact cosine similarities.
        embed_passages: Passage texts → ``(n, d)`` L2-normalised vectors; needed by ``rerank``.

    Returns:
        Up to ``top_k`` hits, best first, ranks 1..n.

    Raises:
        ValueError: unknown ``mode``, ``top_k`` < 1, or ``rerank`` without ``embed_passages``.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}")
    if top_k < 1:
        raise ValueError("top_k must be at least 1")
    if rerank and embed_passages is None:
        raise ValueError("rerank needs embed_passages")
    pool = candidates_for(top_k) if (rerank or mode == "hybrid") else top_k
    vector = None
    if mode == "dense":
        vector = _as_vector(embed_query(query))
        hits = store.dense(scope, vector, pool, filter)
    elif mode == "keyword":
        hits = store.keyword(scope, query, pool, filter)
    else:
        vector = _as_vector(embed_query(query))
        hits = rrf([store.dense(scope, vector, pool, filter), store.keyword(scope, query, pool, filter)])
        if not rerank:
            hits = hits[:top_k]
    if rerank and hits:
        if vector is None:
            vector = _as_vector(embed_query(query))
        return mmr(vector, hits, embed_passages, top_k)  # type: ignore[arg-type]
    return [replace(h, rank=i + 1) for i, h in enumerate(hits[:top_k])]


def mmr(
    query_vector: np.ndarray,
    hits: list[Hit],
    embed_passages: Callable[[list[str]], np.ndarray],
    top_k: int,
    lam: float = MMR_LAMBDA,
) -> list[Hit]:
    """Maximal marginal relevance over ``hits``.

    Semantics::

        rel[i] = cos(q, p[i])
        chosen = []
        while len(chosen) < top_k:
            i = argmax over unchosen of lam * rel[i] - (1 - lam) * max(cos(p[i], p[j]) for j in chosen, default 0)
            chosen.append(i)

    Args:
        query_vector: ``(d,)`` L2-normalised query embedding.
        hits: The candidate pool.
        embed_passages: Texts → ``(n, d)`` L2-normalised vectors.
        top_k: Hits returned.
        lam: Relevance weight in [0, 1].

    Returns:
        Hits in MMR order with ``score`` = ``similarity`` = their cosine to the query.
    """
    passages = np.asarray(embed_passages([h.chunk.text for h in hits]), dtype=np.float32)  # (n, d)
    rel = passages @ query_vector  # (n,)
    pair = passages @ passages.T  # (n, n)
    chosen: list[int] = []
    redundancy = np.zeros(len(hits), dtype=np.float32)  # (n,) max cosine to the chosen ones
    available = np.ones(len(hits), dtype=bool)
    while len(chosen) < min(top_k, len(hits)):
        value = np.where(available, lam * rel - (1 - lam) * redundancy, -np.inf)  # (n,)
        i = int(np.argmax(value))
        chosen.append(i)
        available[i] = False
        redundancy = np.maximum(redundancy, pair[i])
    return [
        Hit(chunk=hits[i].chunk, score=float(rel[i]), rank=r + 1, similarity=float(rel[i]))
        for r, i in enumerate(chosen)
    ]


def _as_vector(v: np.ndarray) -> np.ndarray:
    """A ``(d,)`` float32 vector from ``(d,)`` or ``(1, d)``."""
    arr = np.asarray(v, dtype=np.float32)
    if arr.ndim == 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 1:
        raise ValueError(f"the query embedding must be one vector, got shape {arr.shape}")
    return arr
