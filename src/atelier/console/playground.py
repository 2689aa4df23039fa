"""The playground's values: its form as a chat completions request, its streamed chunks as the answer shown.

Pure data, no Streamlit and no HTTP (``actions.stream_chat`` sends the request,
``playground_page`` shows the result), so what the playground sends and how it reads an
answer are unit-tested without a server. The request uses OpenAI's fields where OpenAI has
them (``response_format``, ``tools``, ``logprobs``...) and Atelier's extensions for the rest
(``top_k``, ``repetition_penalty``, ``preamble``, ``examples``, ``chain_of_thought``).
Knows nothing about how the server enforces them.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from atelier.client import Usage

TOOL_CHOICES = ("auto", "none", "required")
"""``tool_choice`` values the playground offers (sent only with tools)."""
MAX_STOP_SEQUENCES = 4
MAX_TOP_LOGPROBS = 20
"""Most alternatives per token the API returns (``top_logprobs``)."""


class FormError(ValueError):
    """A playground field that cannot make a request; shown before anything is sent.

    Attributes:
        field: The field's label in the form.
        message: What is wrong with it.
    """

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class PlaygroundForm:
    """The playground's fields as the form gives them (text fields as typed, checked by ``build_request``)."""

    model: str
    message: str
    max_tokens: int = 256
    temperature: float = 1.0
    top_k: int = 0
    """0 disables it (then it is not sent)."""
    top_p: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    repetition_penalty: float = 1.0
    """1 disables it (then it is not sent)."""
    stop: str = ""
    """Stop sequences, one per line."""
    seed: int | None = None
    system_prompt: str = ""
    """Sent as ``preamble``, which replaces any system message."""
    examples: tuple[dict[str, Any], ...] = ()
    """Rows of the examples table: ``{"input", "output"}`` (cells may be ``None``)."""
    chain_of_thought: bool = False
    json_schema: str = ""
    """A JSON Schema the answer must match, as JSON text ("" for free text)."""
    tools: str = ""
    """A JSON list of OpenAI tool definitions ("" for none)."""
    tool_choice: str = "auto"
    logprobs: bool = False
    top_logprobs: int = 5


def _number(value: float) -> float:
    """A float widget's value without its binary noise (``0.7000000000000001`` → ``0.7``)."""
    return round(float(value), 6)


def _json_field(text: str, field: str, expected: type, what: str) -> Any:
    """``text`` parsed as JSON of type ``expected``; ``None`` when blank. Raises ``FormError``."""
    if not text.strip():
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise FormError(field, f"not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    if not isinstance(value, expected):
        raise FormError(field, f"must be {what}")
    return value


def _cell(value: Any) -> str:
    return value if isinstance(value, str) else ""  # an empty cell is None (or NaN) in a data editor


def examples_from_rows(rows: Any) -> list[dict[str, str]]:
    """The k-shot examples of the examples table: rows with an input, blank rows dropped.

    Raises:
        FormError: A row has an output but no input.
    """
    examples = []
    for number, row in enumerate(rows or (), start=1):
        given, answer = _cell(row.get("input")), _cell(row.get("output"))
        if not given.strip():
            if answer.strip():
                raise FormError("Examples", f"example {number} has an output but no input")
            continue
        examples.append({"input": given, "output": answer})
    return examples


def build_request(form: PlaygroundForm) -> dict[str, Any]:
    """The body of ``POST /v1/chat/completions`` the form asks for, streamed with its usage.

    OpenAI's fields come first, then Atelier's extensions; optional ones are left out when
    they are off, so the server's defaults apply and code views stay short.

    Raises:
        FormError: A field cannot be sent (no message, invalid JSON, too many stop sequences...).
    """
    if not form.model:
        raise FormError("Model", "choose a model")
    if not form.message.strip():
        raise FormError("Message", "type a message first")
    stops = [line.rstrip("\r") for line in form.stop.split("\n") if line.strip()]
    if len(stops) > MAX_STOP_SEQUENCES:
        raise FormError("Stop sequences", f"at most {MAX_STOP_SEQUENCES}, one per line ({len(stops)} given)")
    schema = _json_field(form.json_schema, "JSON Schema", dict, "a JSON object (a JSON Schema)")
    tools = _json_field(form.tools, "Tools", list, "a JSON list of tool definitions")
    if tools and not all(isinstance(tool, dict) for tool in tools):
        raise FormError("Tools", 'each tool must be an object: {"type": "function", "function": {...}}')
    if form.tool_choice not in TOOL_CHOICES:
        raise FormError("Tool choice", f"one of {', '.join(TOOL_CHOICES)}")
    if form.logprobs and not 1 <= form.top_logprobs <= MAX_TOP_LOGPROBS:
        raise FormError("Top log probabilities", f"from 1 to {MAX_TOP_LOGPROBS}")
    examples = examples_from_rows(form.examples)
    body: dict[str, Any] = {
        "model": form.model,
        "messages": [{"role": "user", "content": form.message.strip()}],
        "max_tokens": int(form.max_tokens),
        "temperature": _number(form.temperature),
        "top_p": _number(form.top_p),
        "frequency_penalty": _number(form.frequency_penalty),
        "presence_penalty": _number(form.presence_penalty),
    }
    if stops:
        body["stop"] = stops
    if form.seed is not None:
        body["seed"] = int(form.seed)
    if schema is not None:
        body["response_format"] = {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}
    if tools:
        body["tools"] = tools
        body["tool_choice"] = form.tool_choice
    if form.logprobs:
        body["logprobs"] = True
        body["top_logprobs"] = int(form.top_logprobs)
    body["stream"] = True
    body["stream_options"] = {"include_usage": True}
    extensions = {
        "top_k": int(form.top_k) if form.top_k else None,
        "repetition_penalty": _number(form.repetition_penalty) if _number(form.repetition_penalty) != 1 else None,
        "preamble": form.system_prompt if form.system_prompt.strip() else None,
        "examples": examples or None,
        "chain_of_thought": True if form.chain_of_thought else None,
    }
    return {**body, **{k: v for k, v in extensions.items() if v is not None}}


# --- streamed answers --------------------------------------------------------------------------


def visible_token(token: str) -> str:
    """A token as the log-probability tables show it: spaces ``␣``, line breaks ``↵``, tabs ``⇥``, empty ``∅``."""
    if not token:
        return "∅"
    return token.replace(" ", "␣").replace("\r\n", "↵").replace("\r", "↵").replace("\n", "↵").replace("\t", "⇥")


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token's log probability and the likeliest tokens at its position."""

    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TokenLogprob:
        """One entry of a chunk's ``choices[0].logprobs.content``."""
        top = tuple((str(t.get("token") or ""), float(t.get("logprob") or 0.0)) for t in data.get("top_logprobs") or [])
        return cls(str(data.get("token") or ""), float(data.get("logprob") or 0.0), top)

    @property
    def label(self) -> str:
        """``␣Tokyo · logprob -0.0123 · 98.78 %`` (plain text)."""
        return f"{visible_token(self.token)} · logprob {self.logprob:.4f} · {_percent(self.logprob)}"

    def rows(self) -> list[dict[str, str]]:
        """The table of this position: each likely token by rank, its log probability and probability, the chosen
        one marked ✓."""
        return [{"#": str(rank), "token": visible_token(token), "logprob": f"{logprob:.4f}",
                 "probability": _percent(logprob), "✓": "✓" if token == self.token else ""}
                for rank, (token, logprob) in enumerate(self.top, start=1)]  # fmt: skip


def _percent(logprob: float) -> str:
    return f"{100 * math.exp(logprob):.2f} %"


@dataclass(frozen=True)
class ToolCall:
    """A call the model made: the function's name and its arguments (JSON text)."""

    id: str
    name: str
    arguments: str

    @property
    def pretty_arguments(self) -> str:
        """The arguments indented when they are JSON, else as they came."""
        try:
            return json.dumps(json.loads(self.arguments), indent=2, ensure_ascii=False)
        except json.JSONDecodeError:
            return self.arguments


@dataclass
class StreamedAnswer:
    """A streamed chat answer, built up from its chunks in order (``add`` each one's JSON).

    Only the first choice is read (the playground asks for one).
    """

    text: str = ""
    finish_reason: str | None = None
    usage: Usage | None = None
    chunks: int = 0
    """SSE chunks received."""
    model: str = ""
    tokens: list[TokenLogprob] = field(default_factory=list)
    """Log probabilities of the generated tokens (when they were asked for)."""
    calls: dict[int, dict[str, str]] = field(default_factory=dict)
    """Tool calls by index, their streamed pieces joined."""

    def add(self, chunk: dict[str, Any]) -> str:
        """Take one chunk in; returns the text it adds."""
        self.chunks += 1
        self.model = str(chunk.get("model") or self.model)
        if chunk.get("usage"):
            self.usage = Usage.from_json(chunk["usage"])
        added = ""
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            added += delta.get("content") or ""
            for call in delta.get("tool_calls") or []:
                self._add_call(call)
            self.tokens.extend(TokenLogprob.from_json(e) for e in (choice.get("logprobs") or {}).get("content") or [])
            if choice.get("finish_reason"):
                self.finish_reason = str(choice["finish_reason"])
        self.text += added
        return added

    def _add_call(self, delta: dict[str, Any]) -> None:
        """OpenAI streams a call's id and name once and its arguments in pieces; Atelier sends it whole."""
        call = self.calls.setdefault(int(delta.get("index", len(self.calls))), {"id": "", "name": "", "arguments": ""})
        function = delta.get("function") or {}
        call["id"] = str(delta.get("id") or call["id"])
        call["name"] = str(function.get("name") or call["name"])
        call["arguments"] += str(function.get("arguments") or "")

    @property
    def tool_calls(self) -> list[ToolCall]:
        """The calls the model made, in order."""
        return [ToolCall(**self.calls[i]) for i in sorted(self.calls)]

    @property
    def summary(self) -> str:
        """``Tokens: prompt 12 · completion 16 · total 28 — finish reason: length — 17 chunks``."""
        parts = []
        if self.usage is not None:
            u = self.usage
            parts.append(f"Tokens: prompt {u.prompt_tokens} · completion {u.completion_tokens} · total {u.total_tokens}")
        parts.append(f"finish reason: {self.finish_reason or 'none'}")
        parts.append(f"streamed in {self.chunks} chunk{'' if self.chunks == 1 else 's'}")
        return " — ".join(parts)


