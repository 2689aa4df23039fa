"""The types shared by chunking, stores and retrieval, and the ``VectorStore`` protocol.

This module declares; it implements nothing. ``atelier.store.vectors`` (Chroma + SQLite
FTS5) and ``atelier.store.pgvector`` (PostgreSQL) implement ``VectorStore`` structurally.
A ``Scope`` (tenancy + knowledge base) travels with every store call, and nothing a store
returns may cross it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from atelier.errors import InvalidInput


@dataclass(frozen=True)
class Chunk:
    """One piece of a document, as produced by ``rag.chunking``."""

    position: int
    """0-based order in the document."""
    text: str
    """The chunk's text: ``extracted.text[start:end]`` with whitespace runs kept."""
    start: int
    """First character of the span in the document's extracted text."""
    end: int
    """One past the last character of the span."""
    heading: str = ""
    """Heading path above the chunk, e.g. ``"Install > Disks"`` (``""`` if none)."""


@dataclass(frozen=True)
class StoredChunk:
    """A chunk as a store keeps it, with its document and tags."""

    chunk_id: str
    """``f"{document_id}:{position}"``: deterministic, so re-adding is idempotent."""
    document_id: str
    filename: str
    position: int
    text: str
    start: int
    end: int
    heading: str = ""
    tags: tuple[str, ...] = ()


def vectors_for(chunks: Sequence[StoredChunk], vectors) -> np.ndarray:
    """``vectors`` as a contiguous float32 ``(len(chunks), d)`` array, one row per chunk.

    Raises:
        InvalidInput: Not one row per chunk (``param="vectors"``).
    """
    array = np.ascontiguousarray(vectors, dtype=np.float32)
    if array.ndim != 2 or array.shape[0] != len(chunks):
        raise InvalidInput(f"expected {len(chunks)} vectors, got an array of shape {array.shape}", param="vectors")
    return array


def chunk_id(document_id: str, position: int) -> str:
    """The deterministic id of a document's chunk: ``f"{document_id}:{position}"``."""
    return f"{document_id}:{position}"


@dataclass(frozen=True)
class Scope:
    """Tenancy and knowledge base: every store call carries it; nothing crosses it."""

    tenancy_id: str
    knowledge_base_id: str


@dataclass(frozen=True)
class Filter:
    """Metadata constraints on a search: an empty tuple is no constraint; within a field, any-of."""

    document_ids: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class Hit:
    """One search result."""

    chunk: StoredChunk
    score: float
    """dense: cosine similarity; keyword: BM25 (higher = better); fused: RRF score."""
    rank: int
    """1-based within its list."""
    similarity: float | None = None
    """Cosine similarity to the query when known (dense hits, and fused hits that were in the
    dense list); ``rag.answer.relevant`` thresholds on it. ``None`` for keyword-only hits."""


@runtime_checkable
class VectorStore(Protocol):
    """Vectors and keyword index of knowledge bases, every call confined to one ``Scope``."""

    def create(self, scope: Scope, *, dimensions: int, search_breadth: int = 100) -> None:
        """Create the knowledge base's collection/index; idempotent."""
        ...

    def add(self, scope: Scope, chunks: Sequence[StoredChunk], vectors: np.ndarray) -> None:
        """Store ``chunks`` with their float32 ``(n, d)`` L2-normalised ``vectors``.

        Idempotent per ``chunk_id``. On an exception the caller calls ``delete_documents``.
        """
        ...

    def delete_documents(self, scope: Scope, document_ids: Sequence[str]) -> int:
        """Remove the documents' chunks and vectors on both sides; returns the chunks removed."""
        ...

    def drop(self, scope: Scope) -> None:
        """Remove the whole knowledge base."""
        ...

    def dense(self, scope: Scope, vector: np.ndarray, top_k: int, filter: Filter | None = None) -> list[Hit]:
        """Nearest chunks to ``vector`` by cosine similarity, best first."""
        ...

    def keyword(self, scope: Scope, query: str, top_k: int, filter: Filter | None = None) -> list[Hit]:
        """Chunks ranked by BM25 on ``query``, best (highest score) first."""
        ...

    def document_ids(self, scope: Scope) -> set[str]:
        """Documents with chunks or vectors on either side (startup repair removes the ones not ready)."""
        ...

    def count(self, scope: Scope) -> int:
        """Chunks stored in the knowledge base."""
        ...
