"""Extractive answers: the sentences of the retrieved passages that best answer the question.

No generation: the answer is one or two sentences copied from the passages, each followed by
its ``[n]``, with its exact character span in its document, so it is right by construction
whenever retrieval is (and instant next to a generation on a CPU). Sentences are scored by

``score = cosine(question, sentence) + LEXICAL · overlap + RANK · 1 / rank(passage)``

where the cosine comes from the knowledge base's embedding model (the caller embeds; it
carries a question across languages), ``overlap`` is the share of the question's content
words the sentence holds (an exact term match), and the rank prior prefers the passages the
retriever put first. The best sentence is taken, with the sentences that follow it in the same
passage while they score at least ``KEEP`` of it (answers often span two or three sentences).
Questions are never answers (an FAQ's heading would match its own question best).

This module knows nothing about models or stores: passages, question and vectors in.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from atelier.rag.answer import Citation
from atelier.rag.attribution import content_words
from atelier.rag.indexing import Hit

LEXICAL = 0.3
"""Weight of the question's content words found in the sentence."""
RANK = 0.05
"""Weight of the passage's retrieval rank (``1 / rank``)."""
KEEP = 0.8
"""A following sentence is kept when it scores at least this share of the best one (tuned on the tuning half
of ``bench/rag_answers.py``)."""
MAX_SENTENCES = 3
"""Most sentences of an answer: the best one and up to two that follow it."""
MIN_WORDS = 3
"""Shorter pieces (a heading, a list marker) are not answers."""

_BOUNDARY = re.compile(r"(?<=[.!?])\s+(?![?!:;])|\n+")
"""Between two sentences: white space after a full stop (not inside ``2.1``, nor before French spaced
punctuation: ``etc. ?``), or a line break."""


@dataclass(frozen=True)
class Sentence:
    """A sentence of passage ``index`` (1-based), with its span in the passage's chunk text."""

    index: int
    text: str
    start: int
    end: int


def sentences(hits: list[Hit]) -> list[Sentence]:
    """The sentences of the passages, in passage then text order (headings, fragments and questions left out)."""
    found: list[Sentence] = []
    for n, hit in enumerate(hits, start=1):
        text = hit.chunk.text
        cuts = [(m.start(), m.end()) for m in _BOUNDARY.finditer(text)] + [(len(text), len(text))]
        begin = 0
        for end, after in cuts:
            piece = text[begin:end]
            start = begin + len(piece) - len(piece.lstrip())
            stripped = piece.strip()
            begin = after
            if stripped.startswith("#") or _asks(stripped) or len(stripped.split()) < MIN_WORDS:
                continue  # a heading, a fragment, or a question (an FAQ's own heading): not an answer
            found.append(Sentence(n, stripped, start, start + len(stripped)))
    return found


def _asks(sentence: str) -> bool:
    """Whether the sentence ends in a question mark (behind closing quotes, brackets or a full stop)."""
    return sentence.rstrip("\"'”’»)]. ").endswith(("?", "？"))


@dataclass(frozen=True)
class Extracted:
    """An extractive answer: its text (sentences with their ``[n]``) and the passages it quotes."""

    text: str
    citations: list[Citation]


def extract(question: str, hits: list[Hit], embed: Callable[[list[str]], np.ndarray] | None,
            query_vector: np.ndarray | None) -> Extracted | None:
    """The sentences of ``hits`` that best answer ``question`` (see the module docstring).

    Args:
        question: The question.
        hits: The relevant passages, best first, numbered from 1 in this order.
        embed: Sentences → their vectors (unit length, the knowledge base's model); None: lexical only.
        query_vector: The question's vector (unit length), with ``embed``.

    Returns:
        The answer, or None when the passages hold no sentence.
    """
    found = sentences(hits)
    if not found:
        return None
    question_words = content_words(question)
    scores = np.zeros(len(found), dtype=np.float64)  # (S,)
    if embed is not None and query_vector is not None:
        vectors = np.asarray(embed([s.text for s in found]), dtype=np.float32)  # (S, d)
        scores += vectors @ np.asarray(query_vector, dtype=np.float32)  # (S,) cosines of unit vectors
    for i, sentence in enumerate(found):
        if question_words:
            scores[i] += LEXICAL * len(question_words & content_words(sentence.text)) / len(question_words)
        scores[i] += RANK / sentence.index
    best = int(scores.argmax())
    chosen = [best]
    following = best + 1
    while (len(chosen) < MAX_SENTENCES and following < len(found) and found[following].index == found[best].index
           and scores[following] >= KEEP * scores[best]):
        chosen.append(following)
        following += 1
    picked = [found[i] for i in chosen]
    text = " ".join(f"{s.text} [{s.index}]" for s in picked)
    citations = [_citation(s, hits[s.index - 1]) for s in picked]
    return Extracted(text, citations)


def _citation(sentence: Sentence, hit: Hit) -> Citation:
    chunk = hit.chunk
    return Citation(index=sentence.index, document_id=chunk.document_id, filename=chunk.filename, text=sentence.text,
                    start=chunk.start + sentence.start, end=chunk.start + sentence.end, heading=chunk.heading,
                    score=hit.score)
