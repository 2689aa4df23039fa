"""Inference routes of the API client: chat, completions, embeddings, tokenize, models, health.

``Inference`` holds the verbs (``client.chat(...)``, ``client.embed(...)``...), which
``AtelierClient`` offers directly; ``Models`` is ``client.models``. Answers are small frozen
dataclasses built from the JSON the server sends; nothing here knows how a model runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, overload

from atelier.client.base import Resource, drop_none


@dataclass(frozen=True)
class Usage:
    """Token counts of one request, as the server reports them."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> Usage | None:
        """The usage of an answer's ``usage`` object; ``None`` when there is none."""
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
        """Length of each vector (0 without vectors)."""
        return len(self.vectors[0]) if self.vectors else 0


@dataclass(frozen=True)
class Tokens:
    """Result of /v1/tokenize: ids, their strings, and the count."""

    ids: list[int]
    strings: list[str]
    count: int


class TextStream:
    """Text deltas of a streamed generation; ``usage`` and ``finish_reason`` once exhausted.

    Iterate it to receive the text as it is generated (or ``chunks()`` for the chunk objects
    whole). The HTTP response is closed when the iteration ends, or by ``close()`` (e.g. on Ctrl-C).
    """

    def __init__(self, chunks: Iterator[dict[str, Any]], delta: Callable[[dict[str, Any]], str | None]):
        self._chunks = chunks
        self._delta = delta
        self.usage: Usage | None = None
        self.finish_reason: str | None = None

    def __iter__(self) -> Iterator[str]:
        for chunk in self.chunks():
            for choice in chunk.get("choices") or []:
                text = self._delta(choice)
                if text:
                    yield text

    def chunks(self) -> Iterator[dict[str, Any]]:
        """The chunk objects themselves, as they arrive (their log probabilities, tool calls...).

        ``usage`` and ``finish_reason`` are recorded on the way, as when iterating the text.
        """
        for chunk in self._chunks:
            if chunk.get("usage"):
                self.usage = Usage.from_json(chunk["usage"])
            for choice in chunk.get("choices") or []:
                if choice.get("finish_reason"):
                    self.finish_reason = choice["finish_reason"]
            yield chunk

    def text(self) -> str:
        """Consume the stream and return the whole text."""
        return "".join(self)

    def close(self) -> None:
        """Close the HTTP response (the server stops generating)."""
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()


class Inference(Resource):
    """``/v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings``, ``/v1/tokenize`` and ``/health``."""

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
                ``top_k``, ``top_p``, penalties (``repetition_penalty`` too), ``stop``,
                ``seed``, ``preamble``, ``chat_format``, ``examples``, ``chain_of_thought``,
                ``response_format``, ``tools``, ``tool_choice``, ``logprobs``,
                ``top_logprobs``); ``None`` values are not sent, so the server's defaults apply.

        Returns:
            The whole answer, or (``stream``) its text as it is generated.

        Raises:
            ApiError: the server refused the request.
            ServerUnreachable: no connection.
        """
        body = {"messages": messages, **drop_none(params)}
        return self._generate("/v1/chat/completions", body, stream, _chat_delta, _chat_text)

    @overload
    def complete(self, prompt: str, stream: Literal[True], **params: Any) -> TextStream: ...
    @overload
    def complete(self, prompt: str, stream: Literal[False] = ..., **params: Any) -> Generation: ...

    def complete(self, prompt: str, stream: bool = False, **params: Any) -> TextStream | Generation:
        """``POST /v1/completions``: raw text continuation; same parameters as ``chat``."""
        body = {"prompt": prompt, **drop_none(params)}
        return self._generate("/v1/completions", body, stream, _completion_delta, _completion_delta)

    def _generate(self, route: str, body: dict[str, Any], stream: bool, delta: Callable[[dict[str, Any]], str | None],
                  whole: Callable[[dict[str, Any]], str | None]) -> TextStream | Generation:
        """Send ``body`` to ``route``; ``delta`` reads a streamed choice's text, ``whole`` a whole one's."""
        if stream:
            body.update(stream=True, stream_options={"include_usage": True})
            return TextStream(self._http.stream(route, body), delta)
        data = self._http.request("POST", route, body)
        choice = (data.get("choices") or [{}])[0]
        return Generation(whole(choice) or "", choice.get("finish_reason"), Usage.from_json(data.get("usage")), data)

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
        body = drop_none({"input": inputs, "model": model, "truncate": truncate, "input_type": input_type})
        data = self._http.request("POST", "/v1/embeddings", body)
        rows = sorted(data.get("data") or [], key=lambda row: row.get("index", 0))
        vectors = [row["embedding"] for row in rows]
        return Embeddings(data.get("model") or model or "", vectors, Usage.from_json(data.get("usage")), data)

    def tokenize(self, model: str | None, text: str) -> Tokens:
        """``POST /v1/tokenize``: ``{"model", "text"}`` → ``{"ids", "tokens", "count"}``."""
        data = self._http.request("POST", "/v1/tokenize", drop_none({"model": model, "text": text}))
        ids = [int(i) for i in data.get("ids") or []]
        strings = [str(s) for s in data.get("tokens") or []]
        return Tokens(ids, strings, int(data.get("count", len(ids))))

    def health(self) -> dict[str, Any]:
        """``GET /health`` (no key needed)."""
        return self._http.request("GET", "/health")


class Models(Resource):
    """``/v1/models``: the models the server offers (and your served custom models)."""

    def list(self) -> list[dict[str, Any]]:
        """``GET /v1/models``: the model objects (``id``, ``capabilities``, limits)."""
        return self._http.get_list("/v1/models")


def _chat_delta(choice: dict[str, Any]) -> str | None:
    return (choice.get("delta") or {}).get("content")


def _chat_text(choice: dict[str, Any]) -> str | None:
    return (choice.get("message") or {}).get("content")


def _completion_delta(choice: dict[str, Any]) -> str | None:  # a streamed and a whole choice alike
    return choice.get("text")
