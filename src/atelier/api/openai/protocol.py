"""OpenAI-compatible request and response schemas, with Atelier's extensions marked as such.

Requests carry every bound the API promises (a value out of bounds is a 400 naming the
parameter, via ``api/errors.py``); unknown fields are ignored, as newer clients send
options this server has no use for, but the OpenAI options it cannot honour (``suffix``) are
refused rather than silently dropped. Structured outputs, tools and log probabilities are
translated for the engine by ``api/openai/options.py``.
Responses have the exact shape of OpenAI's objects, so the official client and LangChain
parse them. This module holds schemas only: no model math and no engine calls.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_serializer

from atelier.api.openai.options import ResponseFormat, StructuredOutputs
from atelier.cloud.generation import Limit
from atelier.engine.types import MAX_INPUTS
from atelier.engine.types import SamplingParams
from atelier.prompts.templates import Example

MAX_STOP = 4
MAX_CHOICES = 8
MAX_TOP_LOGPROBS = 20
MAX_COMPLETION_LOGPROBS = 5
MAX_TEXT = 1_000_000
"""Largest single text field, in characters (the body limit applies first in practice)."""

# ---------------------------------------------------------------- requests


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)


class StreamOptions(BaseModel):
    """Options for a streamed response."""

    model_config = ConfigDict(extra="ignore")

    include_usage: bool = Field(False, description="Send a last chunk with `choices: []` and the usage.")


class _Generation(_Request):
    """Sampling fields shared by chat and text completions."""

    model: str = Field(min_length=1, max_length=200, description="Catalog name of the model (see GET /v1/models).")
    max_tokens: int | None = Field(
        None, ge=1, description="Most tokens to generate; default: as many as the model's limit and context allow."
    )
    temperature: float | None = Field(1.0, ge=0, le=2, description="Sampling temperature; 0 is greedy, deterministic.")
    top_p: float | None = Field(
        1.0, gt=0, le=1, description="Nucleus sampling: keep the smallest set of tokens reaching this mass."
    )
    top_k: int | None = Field(
        0, ge=0, description="Atelier extension: keep the k most likely tokens (before top_p); 0 disables."
    )
    frequency_penalty: float | None = Field(0.0, ge=-2, le=2, description="Penalty per past occurrence of a token.")
    presence_penalty: float | None = Field(0.0, ge=-2, le=2, description="Penalty on every token already generated.")
    stop: str | list[str] | None = Field(None, description=f"Up to {MAX_STOP} strings that end the generation.")
    seed: int | None = Field(
        None, ge=-(2**63), le=2**64 - 1, description="Same seed and parameters give the same text."
    )
    stream: bool = Field(False, description="Stream the answer as server-sent events.")
    stream_options: StreamOptions | None = Field(None, description="Options for `stream: true`.")
    n: int = Field(1, ge=1, le=MAX_CHOICES, description=f"Choices to generate (1 to {MAX_CHOICES}); with a seed, "
                                                         "choice i uses seed + i.")
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = Field(
        None, max_length=300, description="Token id (as a string) → bias from -100 to 100 added to its logit."
    )
    repetition_penalty: float | None = Field(
        None, gt=0, le=2, description="Atelier extension (vLLM's): >1 discourages tokens already in the prompt or "
        "the output (a positive logit divided by it, a negative one multiplied); 1 disables.",
    )
    structured_outputs: StructuredOutputs | None = Field(
        None, description="Atelier extension (vLLM's names): constrain the output to a JSON Schema (`json`), one "
        "of a list of strings (`choice`), a regular expression (`regex`) or a Lark grammar (`grammar`).",
    )
    ignore_eos: bool = Field(
        False, description="Atelier extension (vLLM's and llama.cpp's): keep generating past the end-of-sequence "
        "token until max_tokens or a stop string (benchmarks; ignored for structured outputs, which end when "
        "complete).",
    )
    logprobs_mode: Literal["raw", "processed"] = Field(
        "raw", description="Atelier extension: log probabilities of the model's raw distribution, or of the "
        "processed one actually sampled from (after penalties, bias, grammar mask and temperature).",
    )
    user: str | None = Field(None, max_length=256, description="End-user id; accepted and ignored.")

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else value or []
        if len(stops) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop sequences are supported")
        if any(not s for s in stops):
            raise ValueError("a stop sequence must not be empty")
        return value

    @field_validator("logit_bias")
    @classmethod
    def _check_logit_bias(cls, value: dict | None) -> dict | None:
        for key in value or {}:
            if not key.isdigit():
                raise ValueError(f"logit_bias keys are token ids; {key!r} is not one")
        return value

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def requested_max_tokens(self) -> tuple[int | None, str]:
        """The requested token limit and the name of the parameter that carried it."""
        return self.max_tokens, "max_tokens"

    def limit(self, prompt_param: str) -> Limit:
        """The requested token limit, with the parameters to name when it or the prompt does not fit."""
        requested, max_param = self.requested_max_tokens()
        return Limit(requested, max_param, prompt_param)

    def requested_logprobs(self) -> tuple[int | None, int | None]:
        """``(top log probabilities per generated token or None, per prompt token or None)``."""
        return None, None

    def sampling(self, max_tokens: int) -> SamplingParams:
        """The engine's sampling parameters, defaults filled in for null fields."""
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        logprobs, prompt_logprobs = self.requested_logprobs()
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=1.0 if self.temperature is None else self.temperature,
            top_k=self.top_k or 0,
            top_p=1.0 if self.top_p is None else self.top_p,
            frequency_penalty=self.frequency_penalty or 0.0,
            presence_penalty=self.presence_penalty or 0.0,
            stop=stop,
            seed=self.seed,
            repetition_penalty=self.repetition_penalty or 1.0,
            logit_bias=tuple(sorted((int(k), float(v)) for k, v in (self.logit_bias or {}).items())),
            logprobs=logprobs,
            logprobs_mode=self.logprobs_mode,
            prompt_logprobs=prompt_logprobs,
            ignore_eos=self.ignore_eos,
        )


class ContentPart(BaseModel):
    """One part of a message's content; only ``{"type": "text", "text": ...}`` is supported."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(description="Part type; only 'text' is supported.")
    text: str | None = Field(None, max_length=MAX_TEXT, description="The text of a text part.")


class FunctionCall(BaseModel):
    """A call an assistant made: the function and its arguments as JSON text."""

    name: str = Field(max_length=64, description="The function's name.")
    arguments: str = Field(max_length=MAX_TEXT, description="The arguments, a JSON object as text.")


class ToolCallMessage(BaseModel):
    """One tool call of an assistant message."""

    id: str = Field(max_length=100, description="The call's id, which the tool message answering it repeats.")
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(BaseModel):
    """One chat message (``developer`` is read as ``system``; ``tool`` answers an assistant's tool call)."""

    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"] = Field(description="Who speaks.")
    content: str | list[ContentPart] | None = Field(None, description="The text, or a list of text parts.")
    name: str | None = Field(None, max_length=256, description="Participant name; ignored.")
    tool_calls: list[ToolCallMessage] | None = Field(None, max_length=64, description="An assistant's tool calls.")
    tool_call_id: str | None = Field(None, max_length=100, description="The call a tool message answers.")


class KnowledgeBaseOption(BaseModel):
    """Atelier extension: answer from a knowledge base (``knowledge_base`` of a chat completion)."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=100, description="The knowledge base (`kb_…`).")
    top_k: int = Field(5, ge=1, le=20, description="Passages given to the model.")
    mode: Literal["dense", "keyword", "hybrid"] = Field("hybrid", description="How passages are retrieved.")
    document_ids: list[str] = Field(default_factory=list, max_length=100, description="Only these documents.")
    tags: list[str] = Field(default_factory=list, max_length=32, description="Only documents with one of these tags.")
    rerank: bool = Field(False, description="Rerank a wider pool (MMR) before choosing the passages.")
    answer_mode: Literal["generative", "extractive", "structured"] = Field(
        "generative", description="`generative`: the model answers, citing `[n]`; `extractive`: the passages' "
        "sentences that answer, quoted with their spans, no generation; `structured`: the model answers inside the "
        "JSON `{\"citations\": [n, …], \"answer\": …}` (the message content is that JSON).",
    )


class ChatCompletionRequest(_Generation):
    """``POST /v1/chat/completions``."""

    messages: list[ChatMessage] = Field(min_length=1, description="The conversation so far.")
    max_completion_tokens: int | None = Field(None, ge=1, description="Same as max_tokens (newer name); wins if both.")
    logprobs: bool | None = Field(None, description="Return each output token's log probability.")
    top_logprobs: int | None = Field(
        None, ge=0, le=MAX_TOP_LOGPROBS, description=f"With logprobs: the 0 to {MAX_TOP_LOGPROBS} likeliest tokens "
        "at each position too.",
    )
    tools: list[dict[str, Any]] | None = Field(
        None, max_length=128, description="Functions the model may call: `{\"type\": \"function\", \"function\": "
        "{\"name\", \"description\", \"parameters\"}}`.",
    )
    tool_choice: str | dict[str, Any] | None = Field(
        None, description="`none`, `auto` (default with tools), `required`, or `{\"type\": \"function\", "
        "\"function\": {\"name\": ...}}` to force one.",
    )
    parallel_tool_calls: bool | None = Field(None, description="Allow several calls in one answer (auto; default true).")
    response_format: ResponseFormat | None = Field(
        None, description="`{\"type\": \"text\"}`, `{\"type\": \"json_object\"}` or `{\"type\": \"json_schema\", "
        "\"json_schema\": {\"name\", \"schema\", \"strict\"}}`: the answer is valid JSON (of the schema).",
    )
    preamble: str | None = Field(
        None, max_length=MAX_TEXT, description="Atelier extension: system prompt that replaces any system message."
    )
    chat_format: Literal["template", "llama2", "chatml"] | None = Field(
        None, description="Atelier extension: prompt format; default: the model's own ('template' for built-ins)."
    )
    examples: list[Example] = Field(
        default_factory=list,
        max_length=64,
        description="Atelier extension: k-shot examples, put as turns before the last user message.",
    )
    chain_of_thought: bool = Field(
        False, description="Atelier extension: ask for step-by-step reasoning on the last user message (zero-shot CoT)."
    )
    knowledge_base: str | KnowledgeBaseOption | None = Field(
        None,
        description="Atelier extension: a knowledge base id (or options) to answer from; the last user message is "
        "the question, the answer cites passages as [n] and the response adds `citations`.",
    )

    def requested_logprobs(self) -> tuple[int | None, int | None]:
        return (self.top_logprobs or 0) if self.logprobs else None, None

    def requested_max_tokens(self) -> tuple[int | None, str]:
        if self.max_completion_tokens is not None:
            return self.max_completion_tokens, "max_completion_tokens"
        return self.max_tokens, "max_tokens"


class CompletionRequest(_Generation):
    """``POST /v1/completions``: one prompt, as text or as token ids."""

    prompt: str | list[str] | list[int] = Field(description="The text to continue: a string, [string] or token ids.")
    echo: bool = Field(False, description="Return the prompt before the completion (with its log probabilities "
                                          "when `logprobs` is set).")
    suffix: str | None = Field(None, description="Not supported: must be absent.")
    best_of: int | None = Field(
        None, ge=1, le=MAX_CHOICES, description="Generate this many and return the `n` with the highest mean log "
        "probability (at least `n`; not with `stream`).",
    )
    logprobs: int | None = Field(
        None, ge=0, le=MAX_COMPLETION_LOGPROBS, description=f"Log probabilities of each token and of the 0 to "
        f"{MAX_COMPLETION_LOGPROBS} likeliest at its position.",
    )

    @field_validator("prompt")
    @classmethod
    def _check_prompt(cls, value: str | list) -> str | list:
        if isinstance(value, list):
            if not value:
                raise ValueError("prompt must not be an empty list")
            if isinstance(value[0], str) and len(value) != 1:
                raise ValueError("only one prompt per request is supported")
        return value

    @field_validator("suffix")
    @classmethod
    def _check_suffix(cls, value: str | None) -> str | None:
        if value:
            raise ValueError("suffix is not supported by this server")
        return value

    def requested_logprobs(self) -> tuple[int | None, int | None]:
        return self.logprobs, (self.logprobs if self.echo and self.logprobs is not None else None)


class EmbeddingRequest(_Request):
    """``POST /v1/embeddings``."""

    model: str = Field(min_length=1, max_length=200, description="Catalog name of an embedding model.")
    input: str | list[str] | list[int] | list[list[int]] = Field(
        description=f"A text or a list of 1 to {MAX_INPUTS} texts."
    )
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="'float' lists, or 'base64' of little-endian float32 (the openai client's default)."
    )
    dimensions: int | None = Field(None, ge=1, description="Must equal the model's dimensions if given.")
    truncate: Literal["NONE", "START", "END"] = Field(
        "END", description="Atelier extension: over-long input is refused (NONE) or cut at its start or end."
    )
    input_type: Literal["search_document", "search_query", "classification", "clustering"] | None = Field(
        None, description="Atelier extension: the texts' role; applied where the model defines prefixes."
    )
    user: str | None = Field(None, max_length=256, description="End-user id; accepted and ignored.")

    @field_validator("input")
    @classmethod
    def _check_input(cls, value: str | list) -> str | list:
        if isinstance(value, list):
            if not value:
                raise ValueError("input must hold at least one text")
            if not all(isinstance(v, str) for v in value):
                raise ValueError(
                    "token-id input is not supported: send text (LangChain's OpenAIEmbeddings: "
                    "check_embedding_ctx_length=False)"
                )
            if len(value) > MAX_INPUTS:
                raise ValueError(f"input holds {len(value)} texts, more than the limit of {MAX_INPUTS}")
        return value

    @property
    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)  # type: ignore[arg-type]


class TokenizeRequest(_Request):
    """``POST /v1/tokenize`` (Atelier extension)."""

    model: str | None = Field(
        None, min_length=1, max_length=200, description="Catalog name of the model; default: the default chat model."
    )
    text: str = Field(max_length=MAX_TEXT, description="The text to tokenize (no special tokens are added).")


# ---------------------------------------------------------------- responses


FinishReason = Literal["stop", "length", "tool_calls"]


class TopLogprob(BaseModel):
    """One of the likeliest tokens at a position."""

    token: str
    logprob: float
    bytes: list[int] | None = Field(description="The token's UTF-8 bytes.")


class TokenLogprobOut(TopLogprob):
    """A generated token's log probability, with the likeliest tokens at its position."""

    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    """``choices[].logprobs`` of a chat completion."""

    content: list[TokenLogprobOut] | None
    refusal: None = None


class CompletionLogprobs(BaseModel):
    """``choices[].logprobs`` of a text completion (the legacy shape)."""

    tokens: list[str]
    token_logprobs: list[float | None] = Field(description="None for the first token of an echoed prompt.")
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class ToolCallOut(BaseModel):
    """A call the model made."""

    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ToolCallDelta(BaseModel):
    """A streamed tool call (sent whole, in one chunk)."""

    index: int
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class UsageInfo(BaseModel):
    """Exact token counts of a request."""

    prompt_tokens: int
    completion_tokens: int = 0
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: None = None
    tool_calls: list[ToolCallOut] | None = None


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: FinishReason


class ChatCompletion(BaseModel):
    """OpenAI's ``chat.completion`` object."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    system_fingerprint: str
    choices: list[ChatChoice]
    usage: UsageInfo


class ChunkDelta(BaseModel):
    """What a chunk adds to the message; absent fields are left out of the JSON."""

    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None

    @model_serializer(mode="wrap")
    def _drop_nulls(self, handler: Any) -> dict:
        return {k: v for k, v in handler(self).items() if v is not None}


class ChunkChoice(BaseModel):
    index: int = 0
    delta: ChunkDelta
    logprobs: ChoiceLogprobs | None = None
    finish_reason: FinishReason | None = None


class ChatCompletionChunk(BaseModel):
    """OpenAI's ``chat.completion.chunk`` object (one SSE event)."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    system_fingerprint: str
    choices: list[ChunkChoice]
    usage: UsageInfo | None = None


class CompletionChoice(BaseModel):
    text: str
    index: int = 0
    logprobs: CompletionLogprobs | None = None
    finish_reason: FinishReason | None = None


class Completion(BaseModel):
    """OpenAI's ``text_completion`` object (also each streamed chunk)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    system_fingerprint: str
    choices: list[CompletionChoice]
    usage: UsageInfo | None = None


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str = Field(description="The vector, or base64 of little-endian float32.")


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(BaseModel):
    """OpenAI's embeddings response."""

    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


class ModelCard(BaseModel):
    """OpenAI's ``model`` object, with Atelier's extra fields on limits and uses."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    capabilities: list[str] = Field(description="e.g. ['chat', 'completion'] or ['embedding'].")
    context_length: int = Field(description="Prompt + output tokens (chat) or tokens per input (embedding).")
    max_output_tokens: int = Field(description="Largest max_tokens a request may ask (chat models; 0 otherwise).")
    dimensions: int = Field(description="Embedding size (embedding models; 0 otherwise).")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class TokenizeResponse(BaseModel):
    model: str
    ids: list[int]
    tokens: list[str] = Field(description="Each id decoded on its own.")
    count: int


class WorkersHealth(BaseModel):
    """The job workers, as ``/health`` reports them."""

    alive: int = Field(description="Worker processes seen alive in the last 20 s (any machine).")
    expected: int | None = Field(None, description="Workers `atelier serve` keeps running (null: none started here).")
    running: int | None = Field(None, description="Of those, processes running now.")
    restarts: int = Field(0, description="Workers `atelier serve` restarted after they ended.")
    queued_jobs: int = Field(description="Jobs waiting in the queue.")
    oldest_queued_seconds: float | None = Field(None, description="Age of the oldest waiting job.")
    unserved_kinds: list[str] = Field(description="Kinds of waiting jobs that no live worker runs.")


class Health(BaseModel):
    status: Literal["ok", "degraded"] = Field("ok", description="`degraded`: jobs wait with no live worker for "
                                                                "their kind, or a worker of `serve` is down.")
    problems: list[str] = Field(default_factory=list, description="What makes the service degraded.")
    version: str
    engine: dict[str, Any]
    workers: WorkersHealth | None = None
