"""The one place where errors become HTTP responses.

Domain errors (``atelier.errors``) are raised anywhere below the API; here each class gets
its status code, and every error body is OpenAI's error object
``{"error": {"message", "type", "param", "code"}}``, so the official clients raise their
usual exceptions. Request validation errors name the offending parameter
(``messages[0].role``), unknown routes and wrong methods get the same object, and an
unexpected exception becomes a generic 500 whose traceback goes to the log only.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import IntegrityError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Message, Receive, Scope, Send

from atelier.api.asgi import HttpMiddleware
from atelier.errors import (
    AtelierError,
    Conflict,
    Forbidden,
    InvalidInput,
    NotFound,
    QuotaExceeded,
    TooLarge,
    Unauthenticated,
    Unavailable,
)

log = logging.getLogger(__name__)

DOMAIN_STATUS: tuple[tuple[type[AtelierError], int, str], ...] = (
    (TooLarge, 413, "invalid_request_error"),  # before InvalidInput, its base class
    (InvalidInput, 400, "invalid_request_error"),
    (Unauthenticated, 401, "authentication_error"),
    (Forbidden, 403, "permission_error"),
    (NotFound, 404, "not_found_error"),
    (Conflict, 409, "conflict_error"),
    (QuotaExceeded, 429, "rate_limit_error"),
    (Unavailable, 503, "server_error"),
)
"""Domain error class → (HTTP status, OpenAI error type); the first matching class wins."""

HTTP_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}

GENERIC_500 = "The server had an error while processing your request. The error was logged; please retry."


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None, **extra: Any) -> dict:
    """OpenAI's error object: ``{"error": {"message", "type", "param", "code", ...}}``."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code, **extra}}


def _retry_after(seconds: float) -> str:
    """A ``Retry-After`` value: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))


def status_of(exc: AtelierError) -> tuple[int, str]:
    """The HTTP status and OpenAI error type of a domain error."""
    for cls, status, type_ in DOMAIN_STATUS:
        if isinstance(exc, cls):
            return status, type_
    return 500, "server_error"


def domain_error_payload(exc: AtelierError) -> dict:
    """The error object for a domain error (also sent as an SSE event mid-stream)."""
    _, type_ = status_of(exc)
    extra = {"line": exc.line} if isinstance(exc, InvalidInput) and exc.line is not None else {}
    return error_body(exc.message, type_, exc.param, exc.code, **extra)


def server_error_payload() -> dict:
    """The generic error object for an unexpected failure (details stay in the log)."""
    return error_body(GENERIC_500, "server_error", None, "internal_error")


def domain_error_response(exc: AtelierError) -> JSONResponse:
    """The HTTP response for a domain error, with ``WWW-Authenticate`` or ``Retry-After``."""
    status, _ = status_of(exc)
    headers: dict[str, str] = {}
    if isinstance(exc, Unauthenticated):
        headers["WWW-Authenticate"] = "Bearer"
    if isinstance(exc, (QuotaExceeded, Unavailable)):
        headers["Retry-After"] = _retry_after(exc.retry_after)
    if status >= 500:
        log.warning("%s: %s", type(exc).__name__, exc.message)
    return JSONResponse(domain_error_payload(exc), status_code=status, headers=headers)


# ---------------------------------------------------------------- request validation


_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none", "bytes"}
_LOCATIONS = {"body", "query", "path", "header", "cookie"}


def _is_tag(part: str) -> bool:
    """Whether a ``loc`` item names a union member (``str``, ``list[str]``, ``Model``), not a field."""
    return part in _TYPE_TAGS or any(c in part for c in "[(-") or part[:1].isupper()


def param_from_loc(loc: Sequence[str | int]) -> str | None:
    """A parameter path such as ``messages[0].role`` from a pydantic error location.

    The location kind (``body``, ``query``...) and union member tags are dropped; list
    indices become ``[i]``.
    """
    parts = list(loc)
    if parts and parts[0] in _LOCATIONS:
        parts = parts[1:]
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not _is_tag(part):
            out += f".{part}" if out else part
    return out or None


def _strip_prefix(message: str) -> str:
    for prefix in ("Value error, ", "Assertion failed, "):
        if message.startswith(prefix):
            return message[len(prefix) :]
    return message


def validation_payload(errors: Sequence[dict], content_type: str | None = None) -> dict:
    """The 400 error object for pydantic/FastAPI validation errors (the first one is reported).

    Args:
        errors: ``RequestValidationError.errors()``.
        content_type: The request's ``Content-Type``, to explain a body that was not read as JSON.
    """
    if not errors:
        return error_body("Invalid request.", "invalid_request_error", None, "invalid_request")
    first = errors[0]
    kind, loc = first.get("type", ""), tuple(first.get("loc", ()))
    more = f" ({len(errors) - 1} more error(s) in the request)" if len(errors) > 1 else ""
    if kind == "json_invalid":
        detail = (first.get("ctx") or {}).get("error", "invalid JSON")
        message = (
            f"The request body is not valid JSON ({detail}). "
            "Send a JSON object with Content-Type: application/json."
        )
        return error_body(message, "invalid_request_error", None, "invalid_json")
    if len(loc) == 1 and loc[0] == "body":
        if kind == "missing":
            message = "The request body is missing: send a JSON object."
        elif content_type is None or "json" not in content_type.lower():
            message = f"The request body must be JSON sent with Content-Type: application/json (got {content_type!r})."
        else:
            message = "The request body must be a JSON object."
        code = "missing_body" if kind == "missing" else "invalid_json"
        return error_body(message, "invalid_request_error", None, code)
    param = param_from_loc(loc)
    if kind == "missing":
        message = f"Missing required parameter: '{param}'.{more}"
        return error_body(message, "invalid_request_error", param, "missing_required_parameter")
    message = _strip_prefix(str(first.get("msg", "invalid value"))).rstrip(".")
    where = f"Invalid value for '{param}': " if param else ""
    return error_body(f"{where}{message}.{more}", "invalid_request_error", param, "invalid_value")


# ---------------------------------------------------------------- handlers


async def _on_domain_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AtelierError)
    return domain_error_response(exc)


async def _on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return JSONResponse(validation_payload(exc.errors(), request.headers.get("content-type")), status_code=400)


async def _on_integrity_error(request: Request, exc: Exception) -> JSONResponse:
    """A uniqueness race the repositories' checks could not see (two creates at once): 409."""
    log.info("integrity error on %s %s: %s", request.method, request.url.path, exc)
    message = "The request conflicts with an object created at the same time (a name already taken?); retry."
    return JSONResponse(error_body(message, "invalid_request_error", None, "conflict"), status_code=409)


async def _on_http_exception(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    status, headers = exc.status_code, dict(exc.headers or {})
    default = exc.detail in (None, "", "Not Found", "Method Not Allowed")
    if status == 404 and default:
        message = f"Unknown URL: {request.method} {request.url.path}"
        payload = error_body(message, "not_found_error", None, "unknown_url")
    elif status == 405:
        allowed = headers.get("Allow") or headers.get("allow") or ""
        message = f"Method {request.method} is not allowed on {request.url.path}"
        message += f"; allowed: {allowed}" if allowed else ""
        payload = error_body(message, "invalid_request_error", None, "method_not_allowed")
    else:
        type_ = HTTP_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
        payload = error_body(str(exc.detail), type_, None, None)
    return JSONResponse(payload, status_code=status, headers=headers)


class UnexpectedErrors(HttpMiddleware):
    """Pure ASGI middleware: an unhandled exception becomes a logged, generic 500 error object.

    If the response had already started (a stream), nothing can be sent any more: the
    exception is logged and re-raised so that the server closes the connection.
    """

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            log.exception("unexpected error serving %s %s", scope.get("method"), scope.get("path"))
            if started:
                raise
            await JSONResponse(server_error_payload(), status_code=500)(scope, receive, send)


def install_error_handlers(app: FastAPI) -> None:
    """Register every handler above on ``app`` (call once, in ``create_app``, after other middleware).

    The catch-all middleware is added last, so that it is the outermost one.
    """
    app.add_exception_handler(AtelierError, _on_domain_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_exception)
    app.add_exception_handler(IntegrityError, _on_integrity_error)
    app.add_middleware(UnexpectedErrors)
