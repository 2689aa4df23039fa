"""Which passages an answer drew on, when the model wrote no ``[n]`` markers.

Small models often answer from the passages without citing them. The passages given to
the model are then attributed by what they share with the answer: a passage is cited when
at least ``min_shared`` of its distinct content words (three or more letters or digits,
lowercased, outside a short list of function words) appear in the answer, best supported
first. The result says how each citation was found, so a caller can tell a model's own
``[n]`` from an attribution. This module knows nothing about models or tenants.
"""

from __future__ import annotations

import re

from atelier.rag.answer import NO_ANSWER, Citation, citations
from atelier.rag.indexing import Hit

MIN_SHARED = 3
"""Content words a passage must share with the answer to be attributed."""

_WORD = re.compile(r"[^\W_]{3,}|\d+")
STOPWORDS = frozenset(
    "the and for are was were with that this from have has had not but you your they their there what which "
    "when where who how can will would should could its into than then them these those also been being about "
    "les des une est que qui dans pour par sur pas avec sont ont aux ces cette son ses".split()
)
"""Function words of English and French that would make any two texts look related."""


def content_words(text: str) -> set[str]:
    """The distinct content words of ``text`` (see the module docstring)."""
    return {w for w in (m.group(0).lower() for m in _WORD.finditer(text)) if w not in STOPWORDS}


def attribute(answer_text: str, hits: list[Hit], min_shared: int = MIN_SHARED) -> list[Citation]:
    """The passages of ``hits`` (numbered from 1) that the answer shares at least ``min_shared`` content words with.

    Args:
        answer_text: The model's answer.
        hits: The passages of the prompt, in their numbered order.
        min_shared: Least shared content words (fewer if the passage has fewer).

    Returns:
        Citations, most shared words first (ties: prompt order); none for the no-answer text.
    """
    if answer_text.strip() == NO_ANSWER:
        return []
    answer = content_words(answer_text)
    scored = []
    for n, hit in enumerate(hits, start=1):
        words = content_words(hit.chunk.text)
        shared = len(words & answer)
        if words and shared >= min(min_shared, len(words)):
            scored.append((-shared, n, hit))
    return [Citation.of(n, h) for _, n, h in sorted(scored, key=lambda item: (item[0], item[1]))]


def cite(answer_text: str, hits: list[Hit]) -> tuple[list[Citation], str]:
    """The answer's citations and how they were found: its ``[n]`` markers (``"marker"``), else
    :func:`attribute` (``"overlap"``)."""
    marked = citations(answer_text, hits)
    if marked:
        return marked, "marker"
    return attribute(answer_text, hits), "overlap"
