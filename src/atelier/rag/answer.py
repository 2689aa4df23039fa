"""Grounded answers: the relevance gate and the citations an answer makes.

The prompt itself is ``rag.grounded_prompt``'s. This module knows nothing about models or
tenants: it filters retrieved hits and reads the model's answer text back.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from atelier.rag.indexing import Hit

NO_ANSWER = "I could not find the answer in the knowledge base."
"""The fixed reply when no retrieved passage is relevant (nothing is generated then)."""

DEFAULT_MIN_BM25 = 1e-9
"""Keyword hits at or above this matched at least one query word. Not higher: FTS5 floors the
idf of a word held by half the chunks or more at 1e-6, which in a small knowledge base is
every word (one document of two chunks), and an exact match there must still count."""

_CITATION = re.compile(r"\[\s*(\d{1,3}(?:\s*[,;]\s*\d{1,3})*)\s*\]")


@dataclass(frozen=True)
class Citation:
    """A passage the answer cites with ``[index]``."""

    index: int
    document_id: str
    filename: str
    text: str
    start: int
    end: int
    heading: str
    score: float

    @classmethod
    def of(cls, index: int, hit: Hit) -> Citation:
        """The citation ``[index]`` of a retrieved passage."""
        c = hit.chunk
        return cls(index=index, document_id=c.document_id, filename=c.filename, text=c.text, start=c.start,
                   end=c.end, heading=c.heading, score=hit.score)


def relevant(
    hits: list[Hit], mode: str, *, min_similarity: float = 0.0, min_bm25: float = DEFAULT_MIN_BM25
) -> list[Hit]:
    """The hits worth answering from; an empty list means "say ``NO_ANSWER``".

    * ``dense``: hits whose cosine similarity is at least ``min_similarity`` (the embedding
      model's threshold, from its catalog entry).
    * ``keyword``: hits whose BM25 score is at least ``min_bm25``.
    * ``hybrid``: hits whose cosine is at least ``min_similarity``; hits known only to the
      keyword list are kept when at least one hit passed (the question is on topic), and
      all are dropped otherwise: outside the dense candidate list their cosine is lower
      than that of every dense candidate.

    Args:
        hits: Ranked hits from ``rag.retrieval.retrieve`` in ``mode``.
        mode: The retrieval mode that produced them.
        min_similarity: Cosine threshold.
        min_bm25: BM25 threshold (keyword mode).

    Returns:
        The kept hits, order unchanged.
    """
    if mode == "keyword":
        return [h for h in hits if h.score >= min_bm25]
    passed = [h for h in hits if h.similarity is not None and h.similarity >= min_similarity]
    if mode != "hybrid" or not passed:
        return passed
    return [h for h in hits if h.similarity is None or h.similarity >= min_similarity]


def cited_numbers(answer_text: str, count: int) -> tuple[list[int], int]:
    """The numbers ``[n]`` (also ``[1, 2]``) of ``answer_text`` that name one of ``count`` passages, in order
    of first citation, and how many citations named none (dropped)."""
    seen: list[int] = []
    dropped = 0
    for match in _CITATION.finditer(answer_text):
        for part in re.split(r"[,;]", match.group(1)):
            n = int(part)
            if not 1 <= n <= count:
                dropped += 1
            elif n not in seen:
                seen.append(n)
    return seen, dropped


_WORD = re.compile(r"\w+")
LOOP_WORDS = 4
"""``trim_loop`` cuts at the second occurrence of the first repeated run of this many words."""


def trim_loop(text: str) -> str:
    """``text`` cut where it starts repeating itself: before the second occurrence of its first repeated
    run of ``LOOP_WORDS`` words (for an answer the engine's loop guard ended; unchanged if none repeats)."""
    words = list(_WORD.finditer(text))
    seen: set[tuple[str, ...]] = set()
    for i in range(len(words) - LOOP_WORDS + 1):
        gram = tuple(w.group(0).lower() for w in words[i:i + LOOP_WORDS])
        if gram in seen:
            return text[:words[i].start()].rstrip(" \t\n,;:-")
        seen.add(gram)
    return text


def citations(answer_text: str, hits: list[Hit]) -> list[Citation]:
    """The passages cited in ``answer_text`` by ``[n]`` (also ``[1, 2]``), in order of first citation.

    Numbers outside ``1..len(hits)`` are dropped (``cited_numbers`` counts them); each passage is listed once.

    Args:
        answer_text: The model's answer.
        hits: The passages of the prompt, in their numbered order.

    Returns:
        One ``Citation`` per distinct cited passage.
    """
    return [Citation.of(n, hits[n - 1]) for n in cited_numbers(answer_text, len(hits))[0]]
