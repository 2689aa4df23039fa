"""Retrieval over a ``VectorStore``: dense, keyword (BM25), hybrid (weighted RRF), optional rerank.

Hybrid retrieval fuses the dense and keyword lists by weighted reciprocal rank fusion
(Cormack, Clarke & Büttcher, SIGIR 2009, with a weight per list): ``score(d) = Σ_lists
w_list / (k + rank_list(d))`` with ``k = 60``. The keyword list's weight depends on whether
its words can match at all: keyword search finds nothing useful when the question and the
passages are in different languages (a French question over English passages), yet plain
RRF would still give it half the vote. So the fusion reads the languages of the top dense
hits and the probability that the question is in one of them (``rag.language``); below
``SAME_LANGUAGE_MIN`` the keyword list gets no vote (the hybrid ranking is the dense one),
otherwise ``KEYWORD_WEIGHT`` (tuned on the benchmark's tuning half, ``bench/rag.py``).
While the query is embedded and the dense search runs, the keyword search runs in a
thread of its own (SQLite releases the GIL; on 2 cores already busy with the query's
embedding this measured no faster than one after the other, it pays where cores are free).

The optional rerank is maximal marginal relevance (Carbonell & Goldstein, SIGIR 1998) over
the candidate pool, on exact cosine similarities of freshly embedded
passages: it reorders by embedding relevance to the query and pushes down passages that
repeat ones already chosen (overlapping chunks, duplicated documents). It is for diversity,
not relevance: on the benchmark's held-out half it lowers hybrid nDCG@10 on every split
(e.g. Debian FAQ EN→EN 0.956 → 0.855, Wikipedia EN→EN 0.844 → 0.740; one relevant document
per question, so diversity cannot help). A relevance reranker needs a cross-encoder, and
none found on the package registry ships its weights inside (flashrank and
sentence-transformers' ``CrossEncoder`` download them from a hub at run time).

This module knows nothing about models or tenants: the query and passage embedders are
callables, and the ``Scope`` is passed through to the store untouched.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Literal

import numpy as np

from atelier.rag import language
from atelier.rag.indexing import Filter, Hit, Scope, VectorStore

Mode = Literal["dense", "keyword", "hybrid"]
MODES: tuple[str, ...] = ("dense", "keyword", "hybrid")

RRF_K = 60
"""The constant of reciprocal rank fusion (the value of the original paper)."""

KEYWORD_WEIGHT = 0.5
"""Weight of the keyword list against the dense list's 1.0 when the question is in the passages'
language. Tuned on the tuning half of the benchmark's queries (``bench/rag.py``: the largest
worst-split margin of hybrid over the better of dense and keyword, among 0.25…2.0): 0.5 gives
+0.011 to +0.019 nDCG@10 on the three same-language splits where 1.0 (plain RRF) gives 0.0 to
+0.031, and on the held-out half 1.0 loses 0.016 on the French FAQ where 0.5 gains 0.016."""

SAME_LANGUAGE_MIN = 0.2
"""Probability that the question is in the passages' language below which keywords get no vote
(``rag.language.same_language_probability``). Tuned with ``KEYWORD_WEIGHT`` (0.2 … 0.65 tie on the
tuning half within 0.001; 0.2 is the best, and on the held-out half too: Wikipedia EN→EN 0.847
against 0.844 at 0.5). Against English passages, 95 % of the FAQ's French questions and 97 % of
the French Wikipedia descriptions score under 0.2; 0 % and 1.6 % of the English ones."""

LANGUAGE_SAMPLE = 5
"""Top dense hits whose language stands for the passages' (a knowledge base may mix languages)."""

_KEYWORD_THREADS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="rag-keyword")
"""Runs a hybrid query's keyword search while its dense side runs."""

MMR_LAMBDA = 0.5
"""Weight of relevance against novelty in the rerank (1.0 = relevance only); 0.5 as in
LangChain's ``max_marginal_relevance_search``. Higher values let an exact duplicate through
with embedders whose cosines are compressed (multilingual-e5: unrelated pairs ≈ 0.75)."""


def candidates_for(top_k: int) -> int:
    """How many hits each list contributes before fusion or rerank: ``max(4·top_k, 20)``."""
    return max(4 * top_k, 20)


def rrf(lists: Sequence[list[Hit]], k: int = RRF_K, weights: Sequence[float] | None = None) -> list[Hit]:
    """Weighted reciprocal rank fusion of ranked lists into one.

    Semantics (``weights`` default to 1; a list of weight 0 is left out, so that its hits
    are not appended after the others)::

        for hits, w in zip(lists, weights):
            if w > 0:
                for hit in hits:
                    score[hit.chunk.chunk_id] += w / (k + hit.rank)

    Ties are broken by the best single rank, then by ``chunk_id``. A fused hit keeps the
    cosine ``similarity`` of the list that knew it (the dense one).

    Args:
        lists: Ranked hit lists (each hit's ``rank`` is 1-based within its list).
        k: The RRF constant; larger values flatten the weight of top ranks.
        weights: One non-negative weight per list (default: all 1).

    Returns:
        Hits with their RRF score and new 1-based rank, best first.

    Raises:
        ValueError: not one weight per list, or a negative one.
    """
    weights = [1.0] * len(lists) if weights is None else list(weights)
    if len(weights) != len(lists) or any(w < 0 for w in weights):
        raise ValueError("rrf needs one non-negative weight per list")
    scores: dict[str, float] = {}
    best_rank: dict[str, int] = {}
    first: dict[str, Hit] = {}
    similarity: dict[str, float] = {}
    for hits, weight in zip(lists, weights):
        if weight == 0:
            continue
        for hit in hits:
            key = hit.chunk.chunk_id
            scores[key] = scores.get(key, 0.0) + weight / (k + hit.rank)
            best_rank[key] = min(best_rank.get(key, hit.rank), hit.rank)
            first.setdefault(key, hit)
            if hit.similarity is not None:
                similarity[key] = max(similarity.get(key, hit.similarity), hit.similarity)
    order = sorted(scores, key=lambda key: (-scores[key], best_rank[key], key))
    return [
        Hit(chunk=first[key].chunk, score=scores[key], rank=i + 1, similarity=similarity.get(key))
        for i, key in enumerate(order)
    ]


def fusion_weights(
    same_language: float | None, *, keyword_weight: float = KEYWORD_WEIGHT, min_same: float = SAME_LANGUAGE_MIN
) -> tuple[float, float]:
    """The (dense, keyword) weights of the hybrid fusion.

    Semantics::

        if same_language is None:       # cannot tell (no letters, passages unidentified)
            return 1.0, keyword_weight
        return 1.0, keyword_weight if same_language >= min_same else 0.0

    Args:
        same_language: Probability that the question is in the passages' language
            (``rag.language.same_language_probability``).
        keyword_weight: The keyword list's weight when words can match.
        min_same: Below this probability the keyword list gets no vote.
    """
    if same_language is None or same_language >= min_same:
        return 1.0, keyword_weight
    return 1.0, 0.0


def passage_languages(hits: Sequence[Hit], n: int = LANGUAGE_SAMPLE) -> set[str]:
    """The languages of the first ``n`` hits' passages (``rag.language.passage_language``, cached)."""
    return {language.passage_language(h.chunk.text) for h in hits[:n]}


def fuse(query: str, dense: list[Hit], keyword: list[Hit], **weights: float) -> list[Hit]:
    """The hybrid list: weighted RRF of ``dense`` and ``keyword`` with language-aware weights.

    Semantics::

        p = same_language_probability(query, languages of the top LANGUAGE_SAMPLE dense hits)
        return rrf([dense, keyword], weights=fusion_weights(p))

    A question in another language than the passages therefore ranks exactly as ``dense``.

    Args:
        query: The question.
        dense: The dense hits, best first.
        keyword: The keyword hits, best first.
        weights: ``keyword_weight`` and ``min_same`` overrides (the benchmark's tuning).
    """
    same = language.same_language_probability(query, passage_languages(dense or keyword))
    return rrf([dense, keyword], weights=fusion_weights(same, **weights))


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
        mode: ``dense`` (cosine), ``keyword`` (BM25) or ``hybrid`` (``fuse``: RRF of both,
            language-aware).
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
        keyword = _KEYWORD_THREADS.submit(store.keyword, scope, query, pool, filter)
        try:
            vector = _as_vector(embed_query(query))
            dense = store.dense(scope, vector, pool, filter)
        except BaseException:
            keyword.cancel()
            raise
        hits = fuse(query, dense, keyword.result())
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
