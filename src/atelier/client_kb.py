"""Knowledge-base methods of the API client: knowledge bases, documents, search and grounded answers.

A mixin of ``atelier.client.AtelierClient``; every method is one HTTP call through the host
class's ``_request`` or ``_send``, so it knows nothing the API does not say.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from atelier.client_admin import _drop_none, _seg


class KnowledgeBaseMethods:
    """``/v1/knowledge-bases`` and its documents (see the README's Knowledge bases section)."""

    def create_knowledge_base(self, name: str, **options: Any) -> dict[str, Any]:
        """``POST /v1/knowledge-bases``: the new knowledge base.

        Args:
            name: Unique in the tenancy.
            **options: ``description``, ``embedding_model``, ``chunk_size``, ``chunk_overlap``,
                ``search_breadth``, ``compartment``; ``None`` values are not sent.
        """
        return self._request("POST", "/v1/knowledge-bases", _drop_none({"name": name, **options}))

    def knowledge_bases(self) -> list[dict[str, Any]]:
        """``GET /v1/knowledge-bases``: the knowledge bases you may see, oldest first."""
        return self._request("GET", "/v1/knowledge-bases").get("data") or []

    def get_knowledge_base(self, kb_id: str) -> dict[str, Any]:
        """``GET /v1/knowledge-bases/{id}``."""
        return self._request("GET", f"/v1/knowledge-bases/{_seg(kb_id)}")

    def delete_knowledge_base(self, kb_id: str) -> dict[str, Any]:
        """``DELETE /v1/knowledge-bases/{id}``: ``{"id", "object", "deleted": true}``."""
        return self._request("DELETE", f"/v1/knowledge-bases/{_seg(kb_id)}")

    def add_document(self, kb_id: str, path: str | Path | bytes, *, tags: list[str] | None = None,
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
        route = f"/v1/knowledge-bases/{_seg(kb_id)}/documents"
        if isinstance(path, bytes):
            if not filename:
                raise ValueError("a filename is required to upload bytes")
            response = self._send("POST", route, files={"file": (filename, path)}, data=form)
            return response.json(), response.status_code == 201
        path = Path(path)
        with path.open("rb") as handle:
            response = self._send("POST", route, files={"file": (filename or path.name, handle)}, data=form)
        return response.json(), response.status_code == 201

    def documents(self, kb_id: str) -> list[dict[str, Any]]:
        """``GET /v1/knowledge-bases/{id}/documents``: with their states and progress."""
        return self._request("GET", f"/v1/knowledge-bases/{_seg(kb_id)}/documents").get("data") or []

    def get_document(self, kb_id: str, document_id: str) -> dict[str, Any]:
        """``GET /v1/knowledge-bases/{id}/documents/{document_id}``."""
        return self._request("GET", f"/v1/knowledge-bases/{_seg(kb_id)}/documents/{_seg(document_id)}")

    def delete_document(self, kb_id: str, document_id: str) -> dict[str, Any]:
        """``DELETE /v1/knowledge-bases/{id}/documents/{document_id}``."""
        return self._request("DELETE", f"/v1/knowledge-bases/{_seg(kb_id)}/documents/{_seg(document_id)}")

    def query_knowledge_base(self, kb_id: str, query: str, *, mode: str | None = None, top_k: int | None = None,
                             tags: list[str] | None = None, document_ids: list[str] | None = None,
                             rerank: bool | None = None) -> list[dict[str, Any]]:
        """``POST /v1/knowledge-bases/{id}/query``: the passages, best first."""
        search_filter = _drop_none({"tags": tags or None, "document_ids": document_ids or None}) or None
        body = _drop_none({"query": query, "mode": mode, "top_k": top_k, "filter": search_filter, "rerank": rerank})
        return self._request("POST", f"/v1/knowledge-bases/{_seg(kb_id)}/query", body).get("data") or []

    def ask_knowledge_base(self, kb_id: str, question: str, **options: Any) -> dict[str, Any]:
        """``POST /v1/knowledge-bases/{id}/answer``: ``{"answer", "citations", "passages", "model", "usage"}``.

        Args:
            kb_id: The knowledge base.
            question: The question.
            **options: ``model``, ``top_k``, ``mode``, ``rerank``, ``max_tokens``, ``temperature``;
                ``None`` values are not sent.
        """
        body = _drop_none({"question": question, **options})
        return self._request("POST", f"/v1/knowledge-bases/{_seg(kb_id)}/answer", body)
