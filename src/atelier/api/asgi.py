"""The base of the service's pure ASGI middlewares: they see HTTP requests; everything else passes.

Pure ASGI (not Starlette's ``BaseHTTPMiddleware``) so that streamed bodies are never
buffered. Knows nothing about what the middlewares do.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from starlette.types import ASGIApp, Receive, Scope, Send


class HttpMiddleware(ABC):
    """Calls :meth:`handle` for HTTP requests; lifespan and other scopes go straight to the app."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await self.handle(scope, receive, send)

    @abstractmethod
    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one HTTP request (around ``self.app``): each middleware's own work."""
