"""API objects of retrieval: passages a search returns and citations a grounded answer makes.

Shared by the knowledge-base routes (query, answer) and grounded chat completions; the
retrieval and citing themselves are ``cloud.grounding``'s. Schemas and conversions only.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from atelier.rag.answer import Citation
from atelier.rag.indexing import Hit


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


def passage_out(hit: Hit) -> Passage:
    """The API object of a search hit."""
    c = hit.chunk
    return Passage(chunk_id=c.chunk_id, document_id=c.document_id, filename=c.filename, position=c.position,
                   text=c.text, start=c.start, end=c.end, heading=c.heading, tags=list(c.tags), score=hit.score,
                   rank=hit.rank, similarity=hit.similarity)


def citations_out(citations: list[Citation], found_by: str) -> list[CitationOut]:
    """The API objects of an answer's citations (``cloud.grounding.Answered``'s)."""
    return [CitationOut(**vars(citation), found_by=found_by) for citation in citations]
