"""A small Python client of Atelier's HTTP API, used by the CLI and the console.

It speaks the OpenAI-compatible routes under ``/v1`` over ``httpx`` and knows nothing
about models, the store or the server's internals: everything it learns comes from HTTP
responses. Server errors (``{"error": {"message", "type", "param", "code"}}``) become
``ApiError``; a server that cannot be reached becomes ``ServerUnreachable``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, overload

import httpx

from atelier.client_admin import AdminMethods, _drop_none, _seg
from atelier.client_cloud import CloudMethods
from atelier.client_kb import KnowledgeBaseMethods
from atelier.settings import Settings

DEFAULT_TIMEOUT = httpx.Timeout(600.0, connect=5.0)
"""Generation on a CPU is slow: wait long for an answer, not for a connection."""


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


@dataclass(frozen=True)
class Usage:
    """Token counts of one request, as the server reports them."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> Usage | None:
        if not data:
            return None
        prompt = int(data.get("prompt_tokens") or 0)
        completion = int(data.get("completion_tokens") or 0)
        return cls(prompt, completion, int(data.get("total_tokens") or prompt + completion))


@dataclass(frozen=True)
class Generation:
    """A whole (non-streamed) answer of /v1/chat/completions or /v1/completions."""

    text: str
    finish_reason: str | None
    usage: Usage | None
    raw: dict[str, Any] = field(repr=False)


@dataclass(frozen=True)
class Embeddings:
    """Vectors in input order."""

    model: str
    vectors: list[list[float]]
    usage: Usage | None
    raw: dict[str, Any] = field(repr=False)

    @property
    def dimensions(self) -> int:
        return len(self.vectors[0]) if self.vectors else 0


@dataclass(frozen=True)
class Tokens:
    """Result of /v1/tokenize: ids, their strings, and the count."""

    ids: list[int]
    strings: list[str]
    count: int


class TextStream:
    """Text deltas of a streamed generation; ``usage`` and ``finish_reason`` once exhausted.

    Iterate it to receive the text as it is generated. The HTTP response is closed when
    the iteration ends, or by ``close()`` (e.g. on Ctrl-C).
    """

    def __init__(self, chunks: Iterator[dict[str, Any]], delta: Callable[[dict[str, Any]], str | None]):
        self._chunks = chunks
        self._delta = delta
        self.usage: Usage | None = None
        self.finish_reason: str | None = None

    def __iter__(self) -> Iterator[str]:
        for chunk in self._chunks:
            if chunk.get("usage"):
                self.usage = Usage.from_json(chunk["usage"])
            for choice in chunk.get("choices") or []:
                if choice.get("finish_reason"):
                    self.finish_reason = choice["finish_reason"]
                text = self._delta(choice)
                if text:
                    yield text

    def text(self) -> str:
        """Consume the stream and return the whole text."""
        return "".join(self)

    def close(self) -> None:
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()


def iter_sse_data(lines: Iterable[str], status: int = 200) -> Iterator[dict[str, Any]]:
    """Decode a server-sent-events body into the JSON objects of its ``data`` fields.

    Follows the SSE framing: ``data:`` lines of one event are joined by newlines and the
    event is dispatched at a blank line (or at the end of the body); ``:`` comments and
    other fields (``event:``, ``id:``) are ignored; ``data: [DONE]`` ends the stream.

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
    """The ``ApiError`` for a non-2xx response (whose body has been read)."""
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


class AtelierClient(AdminMethods, CloudMethods, KnowledgeBaseMethods):
    """Client of one Atelier server.

    Args:
        base_url: the server's root URL (the ``/v1`` prefix is added per route).
        api_key: bearer key sent with every request; ``None`` sends no key.
        timeout: seconds, or an ``httpx.Timeout``.
        transport: an ``httpx`` transport (tests pass ``httpx.MockTransport``).
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
    ):
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout, transport=transport)

    @classmethod
    def from_env(
        cls,
        settings: Settings | None = None,
        *,
        url: str | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> AtelierClient:
        """A client configured by ``Settings`` (``ATELIER_URL``, ``ATELIER_API_KEY``).

        The key is, in order: ``ATELIER_API_KEY``, ``ATELIER_ADMIN_KEY``, then the
        administrator key the server wrote to ``<data_dir>/admin.key`` on first start
        (so a local user needs no set-up).
        """
        settings = settings or Settings()
        return cls(url or settings.url, resolve_api_key(settings), transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> AtelierClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- transport -------------------------------------------------------------------

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One request (``kwargs`` go to ``httpx``); a 2xx response, or ``ApiError``/``ServerUnreachable``."""
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ServerUnreachable(self.base_url, _reason(exc)) from exc
        if response.status_code >= 400:
            raise error_from_response(response)
        return response

    def _request(
        self, method: str, path: str, body: dict[str, Any] | None = None, params: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        response = self._send(method, path, json=body, params=_drop_none(params or {}) or None)
        try:
            return response.json()
        except json.JSONDecodeError as exc:
            raise ApiError(response.status_code, f"the server answered {path} with a body that is not JSON") from exc

    def _stream(self, path: str, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        try:
            with self._http.stream("POST", path, json=body) as response:
                if response.status_code >= 400:
                    response.read()
                    raise error_from_response(response)
                yield from iter_sse_data(response.iter_lines(), response.status_code)
        except httpx.TransportError as exc:
            raise ServerUnreachable(self.base_url, _reason(exc)) from exc

    # --- routes ----------------------------------------------------------------------

    @overload
    def chat(self, messages: list[dict[str, Any]], stream: Literal[True], **params: Any) -> TextStream: ...
    @overload
    def chat(self, messages: list[dict[str, Any]], stream: Literal[False] = ..., **params: Any) -> Generation: ...

    def chat(self, messages: list[dict[str, Any]], stream: bool = False, **params: Any) -> TextStream | Generation:
        """``POST /v1/chat/completions``.

        Args:
            messages: ``[{"role", "content"}, ...]``.
            stream: return a ``TextStream`` of deltas (usage is requested with
                ``stream_options.include_usage`` and set on the stream at its end).
            **params: other body fields (``model``, ``max_tokens``, ``temperature``,
                ``top_k``, ``top_p``, penalties, ``stop``, ``seed``, ``preamble``,
                ``chat_format``, ``examples``, ``chain_of_thought``); ``None`` values are
                not sent, so the server's defaults apply.

        Raises:
            ApiError: the server refused the request.
            ServerUnreachable: no connection.
        """
        body = {"messages": messages, **_drop_none(params)}
        if stream:
            body.update(stream=True, stream_options={"include_usage": True})
            return TextStream(self._stream("/v1/chat/completions", body), _chat_delta)
        data = self._request("POST", "/v1/chat/completions", body)
        choice = (data.get("choices") or [{}])[0]
        message = choice.get("message") or {}
        usage = Usage.from_json(data.get("usage"))
        return Generation(message.get("content") or "", choice.get("finish_reason"), usage, data)

    @overload
    def complete(self, prompt: str, stream: Literal[True], **params: Any) -> TextStream: ...
    @overload
    def complete(self, prompt: str, stream: Literal[False] = ..., **params: Any) -> Generation: ...

    def complete(self, prompt: str, stream: bool = False, **params: Any) -> TextStream | Generation:
        """``POST /v1/completions``: raw text continuation; same parameters as ``chat``."""
        body = {"prompt": prompt, **_drop_none(params)}
        if stream:
            body.update(stream=True, stream_options={"include_usage": True})
            return TextStream(self._stream("/v1/completions", body), _completion_delta)
        data = self._request("POST", "/v1/completions", body)
        choice = (data.get("choices") or [{}])[0]
        usage = Usage.from_json(data.get("usage"))
        return Generation(choice.get("text") or "", choice.get("finish_reason"), usage, data)

    def embed(
        self,
        inputs: list[str],
        model: str | None = None,
        truncate: str | None = None,
        input_type: str | None = None,
    ) -> Embeddings:
        """``POST /v1/embeddings``: one vector per input, in input order.

        Args:
            inputs: texts to embed.
            model: embedding model id.
            truncate: ``NONE`` | ``START`` | ``END`` (server default when ``None``).
            input_type: ``search_document`` | ``search_query`` | ``classification`` | ``clustering``.
        """
        body = _drop_none({"input": inputs, "model": model, "truncate": truncate, "input_type": input_type})
        data = self._request("POST", "/v1/embeddings", body)
        rows = sorted(data.get("data") or [], key=lambda row: row.get("index", 0))
        vectors = [row["embedding"] for row in rows]
        return Embeddings(data.get("model") or model or "", vectors, Usage.from_json(data.get("usage")), data)

    def tokenize(self, model: str | None, text: str) -> Tokens:
        """``POST /v1/tokenize``: ``{"model", "text"}`` → ``{"ids", "tokens", "count"}``."""
        data = self._request("POST", "/v1/tokenize", _drop_none({"model": model, "text": text}))
        ids = [int(i) for i in data.get("ids") or []]
        strings = [str(s) for s in data.get("tokens") or []]
        return Tokens(ids, strings, int(data.get("count", len(ids))))

    def models(self) -> list[dict[str, Any]]:
        """``GET /v1/models``: the model objects (``id``, ``capabilities``, limits)."""
        return list(self._request("GET", "/v1/models").get("data") or [])

    def health(self) -> dict[str, Any]:
        """``GET /health`` (no key needed)."""
        return self._request("GET", "/health")

    # --- files ----------------------------------------------------------------------

    def upload_file(
        self, path: str | Path, purpose: str = "fine-tune", compartment: str | None = None, filename: str | None = None
    ) -> dict[str, Any]:
        """``POST /v1/files`` (multipart, as OpenAI's clients send it): the new file object.

        Args:
            path: The local file to upload (streamed from disk).
            purpose: ``fine-tune`` or ``knowledge-base``.
            compartment: Compartment id or path (``eng:ml``); default the tenancy root.
            filename: The name to store; default the file's own name.
        """
        path = Path(path)
        form = _drop_none({"purpose": purpose, "compartment": compartment})
        with path.open("rb") as handle:
            response = self._send("POST", "/v1/files", files={"file": (filename or path.name, handle)}, data=form)
        return response.json()

    def list_files(self, purpose: str | None = None) -> list[dict[str, Any]]:
        """``GET /v1/files``: every file you may inspect, newest first (all pages)."""
        files: list[dict[str, Any]] = []
        params: dict[str, Any] = {"purpose": purpose}
        while True:
            page = self._request("GET", "/v1/files", params=params)
            files.extend(page.get("data") or [])
            if not page.get("has_more") or not page.get("last_id"):
                return files
            params["after"] = page["last_id"]

    def get_file(self, file_id: str) -> dict[str, Any]:
        """``GET /v1/files/{id}``: the file object."""
        return self._request("GET", f"/v1/files/{_seg(file_id)}")

    def delete_file(self, file_id: str) -> dict[str, Any]:
        """``DELETE /v1/files/{id}``: ``{"id", "object": "file", "deleted": true}``."""
        return self._request("DELETE", f"/v1/files/{_seg(file_id)}")

    def file_content(self, file_id: str) -> bytes:
        """``GET /v1/files/{id}/content``: the file's bytes."""
        return self._send("GET", f"/v1/files/{_seg(file_id)}/content").content

    # --- fine-tuning and custom models ---------------------------------------------------

    def create_fine_tuning_job(
        self, model: str, training_file: str, *, validation_file: str | None = None, suffix: str | None = None,
        training_config: dict[str, Any] | None = None, idempotency_key: str | None = None,
        cluster_id: str | None = None,
    ) -> dict[str, Any]:
        """``POST /v1/fine_tuning/jobs``: the job (``queued``, or ``failed`` with every problem of the file)."""
        body = _drop_none({"model": model, "training_file": training_file, "validation_file": validation_file,
                           "suffix": suffix, "training_config": training_config, "cluster_id": cluster_id})
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        return self._send("POST", "/v1/fine_tuning/jobs", json=body, headers=headers).json()

    def list_fine_tuning_jobs(self, limit: int = 20) -> list[dict[str, Any]]:
        """``GET /v1/fine_tuning/jobs``: your newest jobs, newest first."""
        return list(self._request("GET", "/v1/fine_tuning/jobs", params={"limit": limit}).get("data") or [])

    def get_fine_tuning_job(self, job_id: str) -> dict[str, Any]:
        """``GET /v1/fine_tuning/jobs/{id}``."""
        return self._request("GET", f"/v1/fine_tuning/jobs/{_seg(job_id)}")

    def cancel_fine_tuning_job(self, job_id: str) -> dict[str, Any]:
        """``POST /v1/fine_tuning/jobs/{id}/cancel``."""
        return self._request("POST", f"/v1/fine_tuning/jobs/{_seg(job_id)}/cancel")

    def fine_tuning_events(self, job_id: str, limit: int = 1000) -> list[dict[str, Any]]:
        """``GET /v1/fine_tuning/jobs/{id}/events``: newest first."""
        path = f"/v1/fine_tuning/jobs/{_seg(job_id)}/events"
        return list(self._request("GET", path, params={"limit": limit}).get("data") or [])

    def fine_tuning_checkpoints(self, job_id: str) -> list[dict[str, Any]]:
        """``GET /v1/fine_tuning/jobs/{id}/checkpoints``: newest step first."""
        path = f"/v1/fine_tuning/jobs/{_seg(job_id)}/checkpoints"
        return list(self._request("GET", path, params={"limit": 100}).get("data") or [])

    def custom_models(self) -> list[dict[str, Any]]:
        """``GET /v1/custom-models``."""
        return list(self._request("GET", "/v1/custom-models").get("data") or [])

    def get_custom_model(self, model_id: str) -> dict[str, Any]:
        """``GET /v1/custom-models/{id}``."""
        return self._request("GET", f"/v1/custom-models/{_seg(model_id)}")

    def delete_custom_model(self, model_id: str) -> dict[str, Any]:
        """``DELETE /v1/custom-models/{id}``."""
        return self._request("DELETE", f"/v1/custom-models/{_seg(model_id)}")

    def custom_model_adapter(self, model_id: str) -> bytes:
        """``GET /v1/custom-models/{id}/adapter``: the packed PEFT adapter (a tar)."""
        return self._send("GET", f"/v1/custom-models/{_seg(model_id)}/adapter").content

def resolve_api_key(settings: Settings) -> str | None:
    """The key to send: ``api_key``, else ``admin_key``, else ``<data_dir>/admin.key``."""
    for secret in (settings.api_key, settings.admin_key):
        if secret is not None and secret.get_secret_value():
            return secret.get_secret_value()
    path = settings.data_path / "admin.key"
    try:
        key = path.read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return key or None


def _chat_delta(choice: dict[str, Any]) -> str | None:
    return (choice.get("delta") or {}).get("content")


def _completion_delta(choice: dict[str, Any]) -> str | None:
    return choice.get("text")


def _reason(exc: httpx.TransportError) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    return str(exc) or type(exc).__name__
