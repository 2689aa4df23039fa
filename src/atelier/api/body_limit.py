"""Pure ASGI middleware that refuses request bodies over a size limit with 413.

A declared ``Content-Length`` over the limit is refused before anything is read. A body
without one (chunked) or that lies about its length is counted as it streams in: once the
count passes the limit, reading stops, whatever the application was about to answer is
dropped, and the 413 error object is sent instead. A few routes (uploads) may be given a
limit of their own by method and path; the middleware knows nothing else about routes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from atelier.api.errors import domain_error_response
from atelier.api.asgi import HttpMiddleware
from atelier.errors import TooLarge


class BodyTooLarge(Exception):
    """Raised into the application's ``receive`` once the body passes the limit."""


class BodySizeLimit(HttpMiddleware):
    """Refuse HTTP request bodies over ``max_bytes`` (413, OpenAI error object).

    Args:
        app: The wrapped ASGI application.
        max_bytes: The largest accepted body, in bytes.
        routes: Limits of their own for some ``(METHOD, path)`` pairs, e.g.
            ``{("POST", "/v1/files"): 100 * 2**20}``; a path may be a template whose
            ``{param}`` matches one path segment; every other request gets ``max_bytes``.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, routes: Mapping[tuple[str, str], int] | None = None):
        super().__init__(app)
        self.max_bytes = max_bytes
        self.routes = {key: limit for key, limit in (routes or {}).items() if "{" not in key[1]}
        self.templates = [
            (method, re.compile(re.sub(r"\\\{[^/]*?\\\}", "[^/]+", re.escape(path))), limit)
            for (method, path), limit in (routes or {}).items() if "{" in path
        ]  # fmt: skip

    def limit_for(self, scope: Scope) -> int:
        """The body limit of one request: its route's own, else ``max_bytes``."""
        method, path = scope.get("method", ""), scope.get("path", "")
        if (method, path) in self.routes:
            return self.routes[(method, path)]
        for template_method, pattern, limit in self.templates:
            if template_method == method and pattern.fullmatch(path):
                return limit
        return self.max_bytes

    @staticmethod
    def _too_large(limit: int) -> TooLarge:
        return TooLarge(f"The request body is larger than the limit of {limit} bytes.")

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = self.limit_for(scope)
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await domain_error_response(self._too_large(limit))(scope, receive, send)
            return

        received = 0
        exceeded = False
        started = False

        async def limited_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    exceeded = True
                    raise BodyTooLarge()
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if exceeded and not started:
                return  # the app's answer to an aborted read is replaced by the 413 below
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except BodyTooLarge:
            pass
        except Exception:
            if not exceeded:
                raise
        if exceeded and not started:
            await domain_error_response(self._too_large(limit))(scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    """The declared ``Content-Length``, or None when absent or unreadable."""
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
