"""``client.knowledge_bases``: knowledge bases, their documents, search and grounded answers.

One HTTP call per method, so it knows nothing the API does not say: ingestion runs on the
server, and a document's state and progress are read back with ``documents.list``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from atelier.client.base import Collection, HttpCore, Resource, drop_none, path_segment


class Documents(Resource):
    """``/v1/knowledge-bases/{id}/documents``: add, list, get and delete a knowledge base's documents."""

    @staticmethod
    def route(kb_id: str, document_id: str | None = None) -> str:
        """``/v1/knowledge-bases/{id}/documents``, or one document's route below it."""
        route = f"/v1/knowledge-bases/{path_segment(kb_id)}/documents"
        return route if document_id is None else f"{route}/{path_segment(document_id)}"

    def add(self, kb_id: str, path: str | Path | bytes, *, tags: list[str] | None = None,
            filename: str | None = None) -> tuple[dict[str, Any], bool]:
        """``POST /v1/knowledge-bases/{id}/documents`` (multipart, streamed from disk).

        Args:
            kb_id: The knowledge base.
            path: The local file, or the document's bytes (the console's uploads; then
                ``filename`` is required).
            tags: Labels searches can filter on.
            filename: The name to store; default the file's own name.

        Returns:
            The document and whether it is new (False: the same bytes were already there).

        Raises:
            ValueError: Bytes without a ``filename``.
        """
        form = {"tags": ",".join(tags)} if tags else None
        response = self._http.upload(self.route(kb_id), path, filename, form)
        return response.json(), response.status_code == 201

    def add_many(self, kb_id: str, files: list[tuple[str, bytes]], *, tags: list[str] | None = None
                 ) -> dict[str, Any]:
        """``POST /v1/knowledge-bases/{id}/documents/batch``: several documents in one request.

        Args:
            kb_id: The knowledge base.
            files: ``(filename, bytes)`` of each document, 1 to 100 of them.
            tags: Labels searches can filter on, for all of them.

        Returns:
            ``{"object": "list", "data": [...], "uploaded", "failed"}``: per file, in the order
            given, its ``filename``, ``status`` (``created``, ``unchanged`` or ``failed``) and its
            ``document`` or its ``error``. A bad file is an entry, not an exception.

        Raises:
            ApiError: The whole request was refused (no file, more than 100, bad tags, an
                unknown knowledge base, a body over the batch limit).
        """
        form = {"tags": ",".join(tags)} if tags else None
        parts = [("files", (filename, data)) for filename, data in files]
        return self._http.send("POST", f"{self.route(kb_id)}/batch", files=parts, data=form).json()

    def get(self, kb_id: str, document_id: str) -> dict[str, Any]:
        """``GET /v1/knowledge-bases/{id}/documents/{document_id}``."""
        return self._http.request("GET", self.route(kb_id, document_id))

    def delete(self, kb_id: str, document_id: str) -> dict[str, Any]:
        """``DELETE /v1/knowledge-bases/{id}/documents/{document_id}``."""
        return self._http.request("DELETE", self.route(kb_id, document_id))

    def list(self, kb_id: str) -> list[dict[str, Any]]:
        """``GET /v1/knowledge-bases/{id}/documents``: with their states and progress."""
        return self._http.get_list(self.route(kb_id))


class KnowledgeBases(Collection):
    """``/v1/knowledge-bases``: create, list, get, delete, query and ask; ``documents`` below."""

    path = "/v1/knowledge-bases"

    def __init__(self, http: HttpCore):
        super().__init__(http)
        self.documents = Documents(http)

    def create(self, name: str, **options: Any) -> dict[str, Any]:
        """``POST /v1/knowledge-bases``: the new knowledge base.

        Args:
            name: Unique in the tenancy.
            **options: ``description``, ``embedding_model``, ``chunk_size``, ``chunk_overlap``,
                ``search_breadth``, ``compartment``; ``None`` values are not sent.
        """
        return self._http.request("POST", self.path, drop_none({"name": name, **options}))

    def query(self, kb_id: str, query: str, *, mode: str | None = None, top_k: int | None = None,
              tags: list[str] | None = None, document_ids: list[str] | None = None,
              rerank: bool | None = None) -> list[dict[str, Any]]:
        """``POST /v1/knowledge-bases/{id}/query``: the passages, best first."""
        search_filter = drop_none({"tags": tags or None, "document_ids": document_ids or None}) or None
        body = drop_none({"query": query, "mode": mode, "top_k": top_k, "filter": search_filter, "rerank": rerank})
        return self._http.request("POST", self.item(kb_id, "query"), body).get("data") or []

    def ask(self, kb_id: str, question: str, **options: Any) -> dict[str, Any]:
        """``POST /v1/knowledge-bases/{id}/answer``: ``{"answer", "citations", "passages", "model", "usage",
        "answer_mode", "stopped_by", "dropped_citations"}``.

        Args:
            kb_id: The knowledge base.
            question: The question.
            **options: ``model``, ``top_k``, ``mode``, ``rerank``, ``max_tokens``, ``temperature``,
                ``answer_mode`` (``generative``, ``extractive``, ``structured``);
                ``None`` values are not sent.
        """
        return self._http.request("POST", self.item(kb_id, "answer"), drop_none({"question": question, **options}))
