"""The HTTP core of the API client: requests over one ``httpx.Client``, JSON in and out, errors as exceptions.

Every resource module (``inference``, ``files``, ``fine_tuning``...) sends its requests through
an ``HttpCore`` and builds on ``Resource`` or ``Collection`` (the ``{path}/{id}`` routes they
share) and the helpers here (``drop_none``, ``path_segment``). This module knows
the wire format only: the error object ``{"error": {"message", "type", "param", "code"}}``
becomes ``ApiError``, a server that cannot be reached becomes ``ServerUnreachable``, and a
streamed body is decoded as server-sent events. It knows no route and nothing of the server's
internals. There is no retry: a refused or failed request is the caller's to repeat.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

class ApiError(Exception):
    """The server answered with an error object (or with a non-2xx status).

    Attributes:
        status: HTTP status code.
        message: the error's ``message``.
        param: the request field at fault, when the server names one.
        type: OpenAI-style error type (``invalid_request_error``...), if given.
        code: machine-readable code, if given.
        retry_after: seconds from the ``Retry-After`` header (429, 503), if given.
    """

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        *,
        type: str | None = None,
        code: str | None = None,
        retry_after: float | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.type = type
        self.code = code
        self.retry_after = retry_after

    def __str__(self) -> str:
        return self.message + (f" (param: {self.param})" if self.param else "")


class ServerUnreachable(Exception):
    """No connection to the server (refused, unknown host, timed out)."""

    def __init__(self, url: str, reason: str):
        super().__init__(f"the Atelier server is not reachable at {url} ({reason})")
        self.url = url
        self.reason = reason


def drop_none(params: dict[str, Any]) -> dict[str, Any]:
    """``params`` without its ``None`` values (so the server's defaults apply)."""
    return {k: v for k, v in params.items() if v is not None}


def path_segment(value: str) -> str:
    """An id as one URL path segment (a ``/`` or ``?`` in it cannot change the route)."""
    return quote(value, safe="")


def iter_sse_data(lines: Iterable[str], status: int = 200) -> Iterator[dict[str, Any]]:
    """Decode a server-sent-events body into the JSON objects of its ``data`` fields.

    Follows the SSE framing: ``data:`` lines of one event are joined by newlines and the
    event is dispatched at a blank line (or at the end of the body); ``:`` comments and
    other fields (``event:``, ``id:``) are ignored; ``data: [DONE]`` ends the stream.

    Args:
        lines: The body's lines, without or with their line endings.
        status: The response's status, reported by the errors raised.

    Yields:
        Each event's data, decoded.

    Raises:
        ApiError: an event carries an ``{"error": {...}}`` object (an error mid-stream),
            or its data is not JSON.
    """
    data: list[str] = []

    def dispatch() -> dict[str, Any] | None:
        payload = "\n".join(data)
        data.clear()
        try:
            obj = json.loads(payload)
        except json.JSONDecodeError as exc:
            raise ApiError(status, f"the server sent a stream event that is not JSON: {payload[:200]!r}") from exc
        if isinstance(obj, dict) and isinstance(obj.get("error"), dict):
            raise _error_from_json(status, obj)
        return obj

    for raw in lines:
        line = raw.rstrip("\r\n")
        if not line:
            if data:
                if data == ["[DONE]"]:
                    return
                event = dispatch()
                if event is not None:
                    yield event
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        if name == "data":
            data.append(value[1:] if value.startswith(" ") else value)
    if data and data != ["[DONE]"]:
        event = dispatch()
        if event is not None:
            yield event


def _error_from_json(status: int, body: Any, retry_after: float | None = None) -> ApiError:
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):
        return ApiError(
            status,
            str(err.get("message") or f"HTTP {status}"),
            err.get("param"),
            type=err.get("type"),
            code=None if err.get("code") is None else str(err.get("code")),
            retry_after=retry_after,
        )
    if isinstance(body, dict) and "detail" in body:  # a framework default, not our error object
        return ApiError(status, str(body["detail"]), retry_after=retry_after)
    return ApiError(status, f"HTTP {status}: {json.dumps(body)[:300]}", retry_after=retry_after)


def error_from_response(response: httpx.Response) -> ApiError:
    """The ``ApiError`` for a non-2xx response (whose body has been read).

    Args:
        response: The failed response.

    Returns:
        The error, with the ``Retry-After`` header's seconds when there is one.
    """
    retry_after: float | None = None
    header = response.headers.get("retry-after")
    if header:
        try:
            retry_after = float(header)
        except ValueError:
            retry_after = None
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        text = response.text.strip()[:300] or response.reason_phrase
        return ApiError(response.status_code, f"HTTP {response.status_code}: {text}", retry_after=retry_after)
    return _error_from_json(response.status_code, body, retry_after)


class HttpCore:
    """The request helpers every resource uses, over one server's ``httpx.Client``.

    Args:
        client: The ``httpx`` client, its base URL, key header, timeout and transport set.
        base_url: The server's root URL, as errors name it.
    """

    def __init__(self, client: httpx.Client, base_url: str):
        self._client = client
        self.base_url = base_url

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()

    def send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One request (``kwargs`` go to ``httpx``).

        Returns:
            The 2xx response.

        Raises:
            ApiError: the server answered with an error status.
            ServerUnreachable: no connection.
        """
        try:
            response = self._client.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ServerUnreachable(self.base_url, _reason(exc)) from exc
        if response.status_code >= 400:
            raise error_from_response(response)
        return response

    def request(
        self, method: str, path: str, body: dict[str, Any] | None = None, params: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """A JSON request: ``body`` sent as JSON, ``params`` without their ``None`` values.

        Returns:
            The decoded JSON answer.

        Raises:
            ApiError: an error status, or an answer that is not JSON.
            ServerUnreachable: no connection.
        """
        response = self.send(method, path, json=body, params=drop_none(params or {}) or None)
        try:
            return response.json()
        except json.JSONDecodeError as exc:
            raise ApiError(response.status_code, f"the server answered {path} with a body that is not JSON") from exc

    def get_list(self, path: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """``GET path``: the ``data`` of the list object it answers."""
        return list(self.request("GET", path, params=params).get("data") or [])

    def upload(self, path: str, source: str | Path | bytes, filename: str | None = None,
               form: dict[str, Any] | None = None) -> httpx.Response:
        """``POST path`` as a multipart form: ``form``'s fields and one ``file``.

        Args:
            path: The route.
            source: A local file (streamed from disk) or the bytes themselves.
            filename: The name to send; default the file's own name (required with bytes).
            form: Other form fields.

        Returns:
            The 2xx response.

        Raises:
            ValueError: Bytes without a ``filename``.
            ApiError: the server answered with an error status.
            ServerUnreachable: no connection.
        """
        if isinstance(source, bytes):
            if not filename:
                raise ValueError("a filename is required to upload bytes")
            return self.send("POST", path, files={"file": (filename, source)}, data=form)
        source = Path(source)
        with source.open("rb") as handle:
            return self.send("POST", path, files={"file": (filename or source.name, handle)}, data=form)

    def stream(self, path: str, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """``POST path`` answered with server-sent events: their JSON objects, as they arrive.

        Raises:
            ApiError: an error status, or an error event mid-stream.
            ServerUnreachable: no connection, or it broke mid-stream.
        """
        try:
            with self._client.stream("POST", path, json=body) as response:
                if response.status_code >= 400:
                    response.read()
                    raise error_from_response(response)
                yield from iter_sse_data(response.iter_lines(), response.status_code)
        except httpx.TransportError as exc:
            raise ServerUnreachable(self.base_url, _reason(exc)) from exc


class Resource:
    """A namespace of routes over one ``HttpCore`` (``client.files``, ``client.users``...)."""

    def __init__(self, http: HttpCore):
        self._http = http


class Collection(Resource):
    """A resource whose objects live at ``{path}/{id}``: the listing, ``get`` and ``delete`` they share.

    Subclasses set ``path`` (e.g. ``/v1/users``) and add their own ``create`` and other routes.
    """

    path: str = ""

    def item(self, object_id: str, *rest: str) -> str:
        """The route of one object, or of a route below it: ``{path}/{id}/{rest...}``."""
        return "/".join((self.path, path_segment(object_id), *rest))

    def list(self) -> list[dict[str, Any]]:
        """``GET {path}``: the objects you may see."""
        return self._http.get_list(self.path)

    def get(self, object_id: str) -> dict[str, Any]:
        """``GET {path}/{id}``."""
        return self._http.request("GET", self.item(object_id))

    def delete(self, object_id: str) -> dict[str, Any]:
        """``DELETE {path}/{id}``: the deleted object (``{"id", "object", "deleted": true}`` or more)."""
        return self._http.request("DELETE", self.item(object_id))

    def _patch(self, object_id: str, **fields: Any) -> dict[str, Any]:
        """``PATCH {path}/{id}`` with the fields that are not ``None``."""
        return self._http.request("PATCH", self.item(object_id), drop_none(fields))


def _reason(exc: httpx.TransportError) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    return str(exc) or type(exc).__name__
