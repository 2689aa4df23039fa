"""What the console asks the API, and the plain values it shows.

Every call goes through ``atelier.client.AtelierClient`` to the HTTP API; nothing here
imports Streamlit, so the console's behaviour (which key is used, how an error reads, how
ingestion progress and citations are shown, which chat models the playground offers, what
code reproduces its request) is tested without a browser. Text that comes from documents
or from the model is data: it is escaped before it reaches Markdown, so a document cannot
add links, images or formatting to the page. The playground's form and answers are
``playground``'s.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from atelier.client import ApiError, AtelierClient, ServerUnreachable, resolve_api_key
from atelier.console.playground import StreamedAnswer
from atelier.settings import Settings

ANSWER_MODES = {
    "generative": "the model writes the answer and cites [n]",
    "extractive": "the passages' own sentences that answer, quoted with their spans (no model, instant)",
    "structured": "the model answers inside a JSON Schema that requires its citations",
}
"""How an answer is made (``answer_mode`` of the API), the default first."""

MODES = ("hybrid", "dense", "keyword")
"""Retrieval modes, the default first."""
MODE_HELP = {
    "hybrid": "both lists fused by reciprocal rank (best on most questions)",
    "dense": "embedding similarity (finds paraphrases and other languages)",
    "keyword": "BM25 over the words (finds exact names and codes)",
}
UNFINISHED = ("pending", "ingesting")
"""Document states that a later poll may change."""
DOCUMENT_TYPES = ("txt", "text", "md", "markdown", "html", "htm", "pdf", "docx")
"""File suffixes the upload widget offers (the server decides what it accepts)."""

_MARKDOWN_SPECIALS = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>$:~&=])")
_ESCAPED_MARKER = re.compile(r"\\\[(\d{1,3})\\\]")


@dataclass(frozen=True)
class Connection:
    """Where the console sends its requests, and with which key (never shown)."""

    url: str
    api_key: str | None = field(default=None, repr=False)
    key_source: str = "none"
    """Where the key came from: ``sidebar``, ``environment``, ``admin.key`` or ``none``."""

    def client(self) -> AtelierClient:
        """A client of ``url`` sending ``api_key`` (close it after use)."""
        return AtelierClient(self.url, self.api_key)


def resolve_connection(settings: Settings, typed_url: str = "", typed_key: str = "") -> Connection:
    """The URL and key to use: what was typed in the sidebar wins over the environment.

    Args:
        settings: ``ATELIER_URL`` and ``ATELIER_API_KEY`` (or the local ``admin.key``).
        typed_url: The sidebar's URL field ("" keeps the environment's).
        typed_key: The sidebar's key field ("" keeps the environment's).

    Returns:
        The connection; its ``key_source`` says where the key came from.
    """
    url = typed_url.strip() or settings.url
    if typed_key.strip():
        return Connection(url, typed_key.strip(), "sidebar")
    key = resolve_api_key(settings)
    if key is None:
        return Connection(url, None, "none")
    from_env = any(s is not None and s.get_secret_value() for s in (settings.api_key, settings.admin_key))
    return Connection(url, key, "environment" if from_env else "admin.key")


def describe_error(exc: Exception) -> str:
    """One sentence for a failed request, naming the HTTP status and what to do about it."""
    if isinstance(exc, ServerUnreachable):
        return f"Cannot reach the Atelier server at {exc.url} ({exc.reason}). Check the API URL and that it runs."
    if not isinstance(exc, ApiError):
        return f"Unexpected error: {exc}"
    detail = str(exc)
    hints = {
        400: "Invalid request",
        401: "Not authenticated",
        403: "Not allowed",
        404: "Not found",
        409: "Conflict",
        413: "Too large",
        422: "Invalid request",
        429: "Too many requests",
        503: "Service unavailable",
    }
    title = hints.get(exc.status, "Error")
    text = f"{title} (HTTP {exc.status}): {detail}"
    if exc.status == 401:
        text += " — check the API key in the sidebar."
    elif exc.status == 403:
        text += " — your key's policies do not allow this."
    elif exc.status in (429, 503) and exc.retry_after is not None:
        text += f" — retry in {exc.retry_after:g} s."
    return text


def escape_markdown(text: str) -> str:
    """``text`` shown literally by Markdown (no links, images, emphasis, math or HTML); line breaks kept."""
    return _MARKDOWN_SPECIALS.sub(r"\\\1", text).replace("\n", "  \n")


def plural(count: int, noun: str) -> str:
    """``1 chunk``, ``2 chunks``."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def parse_tags(text: str) -> list[str]:
    """Comma-separated tags → their list, blanks and repeats dropped, order kept."""
    tags: list[str] = []
    for part in text.split(","):
        tag = part.strip()
        if tag and tag not in tags:
            tags.append(tag)
    return tags


# --- documents ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class DocumentView:
    """A document of a knowledge base as the console lists it."""

    id: str
    filename: str
    state: str
    chunk_count: int = 0
    bytes: int = 0
    error: str | None = None
    chunks_done: int | None = None
    chunks_total: int | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DocumentView:
        progress = data.get("progress") if isinstance(data.get("progress"), dict) else {}
        done = progress.get("chunks_done", data.get("chunks_done"))
        total = progress.get("chunks_total", data.get("chunks_total"))
        return cls(
            id=str(data["id"]), filename=str(data.get("filename") or ""), state=str(data.get("state") or "pending"),
            chunk_count=int(data.get("chunk_count") or 0), bytes=int(data.get("bytes") or 0),
            error=data.get("error") or None, chunks_done=None if done is None else int(done),
            chunks_total=None if total is None else int(total),
        )  # fmt: skip

    @property
    def finished(self) -> bool:
        """``ready`` or ``failed``: polling will not change it."""
        return self.state not in UNFINISHED

    @property
    def fraction(self) -> float:
        """Ingestion progress in [0, 1] (a ready document is 1, a failed one 0)."""
        if self.state == "ready":
            return 1.0
        if self.state == "ingesting" and self.chunks_total:
            return min(1.0, max(0.0, (self.chunks_done or 0) / self.chunks_total))
        return 0.0

    @property
    def status(self) -> str:
        """``ready · 12 chunks``, ``ingesting · 5/12 chunks``, ``failed · <reason>``, ``pending``."""
        if self.state == "ready":
            return f"ready · {plural(self.chunk_count, 'chunk')}"
        if self.state == "failed":
            return f"failed · {self.error}" if self.error else "failed"
        if self.state == "ingesting" and self.chunks_total:
            return f"ingesting · {self.chunks_done or 0}/{self.chunks_total} chunks"
        return self.state


def documents(client: AtelierClient, kb_id: str) -> list[DocumentView]:
    """The knowledge base's documents, oldest first."""
    return [DocumentView.from_json(d) for d in client.knowledge_bases.documents.list(kb_id)]


def upload(client: AtelierClient, kb_id: str, filename: str, data: bytes, tags: str = "") -> tuple[DocumentView, bool]:
    """Upload one document (its ingestion is queued).

    Returns:
        The document, and whether it is new (False: the same bytes were there, nothing is done).
    """
    doc, created = client.knowledge_bases.documents.add(kb_id, data, filename=filename, tags=parse_tags(tags) or None)
    return DocumentView.from_json(doc), created


# --- knowledge bases ---------------------------------------------------------------------------


def knowledge_bases(client: AtelierClient) -> list[dict[str, Any]]:
    """The knowledge bases the key may see, oldest first."""
    return client.knowledge_bases.list()


def create_knowledge_base(client: AtelierClient, name: str, embedding_model: str | None = None,
                          chunk_size: int | None = None, chunk_overlap: int | None = None) -> dict[str, Any]:
    """Create a knowledge base; ``None`` settings take the server's defaults."""
    return client.knowledge_bases.create(name.strip(), embedding_model=embedding_model, chunk_size=chunk_size,
                                         chunk_overlap=chunk_overlap)


def models_with(client: AtelierClient, capability: str) -> list[str]:
    """Ids of the models that have ``capability`` (``chat`` or ``embedding``), in the server's order."""
    return [m["id"] for m in client.models.list() if capability in (m.get("capabilities") or [])]


# --- questions and searches --------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """A passage shown as a numbered source: its number, its document and where it sits in it."""

    index: int
    document_id: str
    filename: str
    text: str
    start: int
    end: int
    heading: str = ""
    score: float | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any], index: int) -> Source:
        return cls(
            index=int(data.get("index", index)), document_id=str(data.get("document_id") or ""),
            filename=str(data.get("filename") or ""), text=str(data.get("text") or ""),
            start=int(data.get("start") or 0), end=int(data.get("end") or 0), heading=str(data.get("heading") or ""),
            score=None if data.get("score") is None else float(data["score"]),
        )  # fmt: skip

    @property
    def label(self) -> str:
        """``[1] notes.md · characters 120–480 · Install > Disks`` (plain text)."""
        parts = [f"[{self.index}] {self.filename}", f"characters {self.start}–{self.end}"]
        if self.heading:
            parts.append(self.heading)
        return " · ".join(parts)


@dataclass(frozen=True)
class AnswerView:
    """A grounded answer: its text, the sources it cites, and every passage the model was given."""

    text: str
    citations: list[Source]
    passages: list[Source]
    model: str = ""
    answer_mode: str = "generative"

    @property
    def markdown(self) -> str:
        """The answer escaped for Markdown, its ``[n]`` markers of real citations in bold."""
        cited = {c.index for c in self.citations}

        def bold(match: re.Match[str]) -> str:
            return f"**{match.group(0)}**" if int(match.group(1)) in cited else match.group(0)

        return _ESCAPED_MARKER.sub(bold, escape_markdown(self.text))


def ask(client: AtelierClient, kb_id: str, question: str, mode: str = "hybrid", top_k: int = 5,
        model: str | None = None, max_tokens: int | None = None, answer_mode: str = "generative") -> AnswerView:
    """Ask the knowledge base a question: the model's answer and its cited sources.

    Args:
        client: The API client.
        kb_id: The knowledge base.
        question: The question.
        mode: How passages are retrieved (``MODES``).
        top_k: Passages given to the model.
        model: Chat model; ``None`` for the server's default.
        max_tokens: Most tokens of the answer; ``None`` for the server's default.
        answer_mode: How the answer is made (``ANSWER_MODES``).

    Raises:
        ApiError: The API refused (404 unknown knowledge base, 429, ...).
        ServerUnreachable: No connection.
    """
    data = client.knowledge_bases.ask(kb_id, question, model=model, top_k=top_k, mode=mode, max_tokens=max_tokens,
                                      answer_mode=answer_mode)
    citations = [Source.from_json(c, i) for i, c in enumerate(data.get("citations") or [], start=1)]
    passages = [Source.from_json(p, i) for i, p in enumerate(data.get("passages") or [], start=1)]
    return AnswerView(str(data.get("answer") or ""), citations, passages, str(data.get("model") or ""),
                      str(data.get("answer_mode") or answer_mode))


def search(client: AtelierClient, kb_id: str, query: str, mode: str = "hybrid", top_k: int = 5) -> list[Source]:
    """The passages that best match ``query``, numbered by rank."""
    hits = client.knowledge_bases.query(kb_id, query, mode=mode, top_k=top_k)
    return [Source.from_json({**h, "index": h.get("rank", i)}, i) for i, h in enumerate(hits, start=1)]


# --- playground --------------------------------------------------------------------------------

OPENAI_FIELDS = (
    "model", "messages", "max_tokens", "temperature", "top_p", "frequency_penalty", "presence_penalty", "stop",
    "seed", "response_format", "tools", "tool_choice", "logprobs", "top_logprobs", "stream", "stream_options",
)  # fmt: skip
"""Request fields of OpenAI's chat completions, in the order code shows them; the others are Atelier's
extensions, which the ``openai`` client sends in ``extra_body``."""
_SERVED_KINDS = {"ep_": "endpoint", "cm_": "custom model"}
_KIND_ORDER = {"base": 0, "endpoint": 1, "custom model": 2}


@dataclass(frozen=True)
class ChatModel:
    """A model the playground can chat with."""

    id: str
    kind: str = "base"
    """``base`` (of the catalog), ``endpoint`` (``ep_…``) or ``custom model`` (``cm_…``)."""
    max_output_tokens: int = 0
    """Largest ``max_tokens`` it accepts (0: unknown)."""

    @property
    def label(self) -> str:
        """``smollm2-135m-instruct``, ``ep_… (endpoint)``, ``cm_… (custom model)``."""
        return self.id if self.kind == "base" else f"{self.id} ({self.kind})"


def chat_models(client: AtelierClient) -> list[ChatModel]:
    """The models of ``GET /v1/models`` with the ``chat`` capability: base models, then your endpoints,
    then your custom models (each group in the server's order)."""
    found = []
    for model in client.models.list():
        if "chat" not in (model.get("capabilities") or []):
            continue
        model_id = str(model["id"])
        kind = next((k for prefix, k in _SERVED_KINDS.items() if model_id.startswith(prefix)), "base")
        found.append(ChatModel(model_id, kind, int(model.get("max_output_tokens") or 0)))
    return sorted(found, key=lambda m: _KIND_ORDER[m.kind])


def stream_chat(client: AtelierClient, body: dict[str, Any]) -> Iterator[tuple[str, StreamedAnswer]]:
    """Send ``body`` (``playground.build_request``'s) and follow the answer as it streams.

    Yields:
        After each chunk: the text it added, and the answer so far.

    Raises:
        ApiError: The API refused the request, or failed mid-stream.
        ServerUnreachable: No connection.
    """
    params = {k: v for k, v in body.items() if k not in ("messages", "stream", "stream_options")}
    stream = client.chat(body["messages"], stream=True, **params)
    answer = StreamedAnswer()
    try:
        for chunk in stream.chunks():
            yield answer.add(chunk), answer
    finally:
        stream.close()


# --- code views --------------------------------------------------------------------------------


def _literal(value: Any, python: bool, level: int = 0) -> str:
    """``value`` (JSON data) as Python source or as JSON: on one line when short, else one item per line."""
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a JSON string is a valid Python string literal too
    if value is None or isinstance(value, bool):
        return repr(value) if python else json.dumps(value)
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, dict):
        items = [f"{_literal(str(k), python)}: {_literal(v, python, level + 1)}" for k, v in value.items()]
        opening, closing = "{", "}"
    else:
        items = [_literal(v, python, level + 1) for v in value]
        opening, closing = "[", "]"
    inline = f"{opening}{', '.join(items)}{closing}"
    if len(inline) + 4 * (level + 1) <= 100 and "\n" not in inline:
        return inline
    inner = "    " * (level + 1)
    comma = "," if python else ""
    lines = [f"{inner}{item}," for item in items]
    lines[-1] = lines[-1][:-1] + comma
    return opening + "\n" + "\n".join(lines) + "\n" + "    " * level + closing


def python_code(body: dict[str, Any], base_url: str) -> str:
    """``body`` as a request of the ``openai`` Python client (Atelier's extensions in ``extra_body``).

    The key is read from ``ATELIER_API_KEY``; it is never written in the code.

    Args:
        body: A chat completions request (``playground.build_request``'s).
        base_url: The server's root URL (``/v1`` is added).
    """
    api = base_url.rstrip("/") + "/v1"
    kwargs = [f"    {k}={_literal(body[k], True, 1)}," for k in OPENAI_FIELDS if k in body]
    extra = {k: v for k, v in body.items() if k not in OPENAI_FIELDS}
    if extra:
        kwargs += ["    # Atelier's extensions, which the openai client sends as they are:",
                   f"    extra_body={_literal(extra, True, 1)},"]
    lines = [
        "import os",
        "",
        "from openai import OpenAI",
        "",
        f"client = OpenAI(base_url={_literal(api, True)}, api_key=os.environ[\"ATELIER_API_KEY\"])",
        f"{'stream' if body.get('stream') else 'reply'} = client.chat.completions.create(",
        *kwargs,
        ")",
    ]
    if body.get("stream"):
        lines += [
            "for chunk in stream:",
            "    for choice in chunk.choices:",
            "        if choice.delta.content:",
            "            print(choice.delta.content, end=\"\", flush=True)",
            "        if choice.delta.tool_calls:",
            "            print(choice.delta.tool_calls)",
            "    if chunk.usage:",
            "        print()",
            "        print(chunk.usage)",
        ]
    else:
        lines += ["print(reply.choices[0].message.content)", "print(reply.usage)"]
    return "\n".join(lines) + "\n"


def curl_command(body: dict[str, Any], base_url: str) -> str:
    """``body`` as a ``curl`` command; the key is ``$ATELIER_API_KEY``, never its value.

    Args:
        body: A chat completions request (``playground.build_request``'s).
        base_url: The server's root URL.
    """
    url = base_url.rstrip("/") + "/v1/chat/completions"
    data = _literal(body, False)
    return "\n".join([
        f"curl {'-N ' if body.get('stream') else ''}{shlex.quote(url)} \\",
        '  -H "Authorization: Bearer $ATELIER_API_KEY" \\',
        '  -H "Content-Type: application/json" \\',
        f"  -d {shlex.quote(data)}",
    ]) + "\n"  # fmt: skip
