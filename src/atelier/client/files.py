"""``client.files``: files in your tenancy (``/v1/files``), uploaded as OpenAI's clients do.

Uploads are multipart and streamed from disk; contents come back as bytes. What a file is
for (``fine-tune``, ``knowledge-base``) is the server's business; this only carries it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from atelier.client.base import Collection, drop_none


class Files(Collection):
    """``/v1/files``: upload, list, get, delete and download files."""

    path = "/v1/files"

    def upload(
        self, path: str | Path, purpose: str = "fine-tune", compartment: str | None = None, filename: str | None = None
    ) -> dict[str, Any]:
        """``POST /v1/files`` (multipart, as OpenAI's clients send it).

        Args:
            path: The local file to upload (streamed from disk).
            purpose: ``fine-tune`` or ``knowledge-base``.
            compartment: Compartment id or path (``eng:ml``); default the tenancy root.
            filename: The name to store; default the file's own name.

        Returns:
            The new file object.
        """
        form = drop_none({"purpose": purpose, "compartment": compartment})
        return self._http.upload(self.path, path, filename, form).json()

    def content(self, file_id: str) -> bytes:
        """``GET /v1/files/{id}/content``: the file's bytes."""
        return self._http.send("GET", self.item(file_id, "content")).content

    def list(self, purpose: str | None = None) -> list[dict[str, Any]]:
        """``GET /v1/files``: every file you may inspect, newest first (all pages).

        Args:
            purpose: Only the files of this purpose.
        """
        files: list[dict[str, Any]] = []
        params: dict[str, Any] = {"purpose": purpose}
        while True:
            page = self._http.request("GET", self.path, params=params)
            files.extend(page.get("data") or [])
            if not page.get("has_more") or not page.get("last_id"):
                return files
            params["after"] = page["last_id"]
