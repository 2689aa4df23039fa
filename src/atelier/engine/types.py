"""Plain data passed across the engine boundary: what to generate and what comes back.

The engine knows nothing about HTTP or tenants: a request is token ids, sampling
parameters and an opaque adapter slot resolved by the caller after its policy check.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from atelier.errors import InvalidInput


@dataclass(frozen=True)
class SamplingParams:
    """How to draw each next token. Bounds are checked by the API schema before this is built."""

    max_tokens: int = 256
    """Most tokens to generate (the model's limit is enforced by the caller)."""
    temperature: float = 1.0
    """Softmax temperature; 0 means greedy (argmax), deterministic."""
    top_k: int = 0
    """Keep the k most likely tokens; 0 disables."""
    top_p: float = 1.0
    """Then keep the smallest prefix of the sorted distribution whose mass reaches p; 1 disables."""
    frequency_penalty: float = 0.0
    """Subtract ``count(token) * frequency_penalty`` from a logit (OpenAI's formula)."""
    presence_penalty: float = 0.0
    """Subtract ``presence_penalty`` from the logit of every token generated at least once."""
    stop: tuple[str, ...] = ()
    """Strings that end generation; the stop string itself is not returned."""
    seed: int | None = None
    """Same seed and parameters → same text. None draws a fresh seed."""
    ignore_eos: bool = False
    """Keep generating past end-of-sequence tokens (benchmarks)."""
    repetition_penalty: float = 1.0
    """vLLM's (CTRL's) repetition penalty over the prompt and the output: a seen token's positive logit
    is divided by it, a negative one multiplied; 1 disables."""
    logit_bias: tuple[tuple[int, float], ...] = ()
    """``(token id, bias)`` pairs added to those tokens' logits before sampling (OpenAI's ``logit_bias``)."""
    logprobs: int | None = None
    """None: no log probabilities; ``k >= 0``: each generated token's log probability and the ``k`` most likely."""
    logprobs_mode: Literal["raw", "processed"] = "raw"
    """``raw``: ``log_softmax`` of the model's logits; ``processed``: of the logits actually sampled from
    (after penalties, bias, grammar mask and temperature; before top-k/top-p)."""
    prompt_logprobs: int | None = None
    """None: none; ``k >= 0``: every prompt token's log probability (the first has none) and the ``k``
    most likely at its position (``echo`` of text completions)."""
    loop_guard: bool = False
    """End the generation (``stop``, ``TokenEvent.stopped_by = "repetition"``) once it repeats itself:
    its last ``LOOP_NGRAM`` tokens have occurred ``LOOP_REPEATS`` times in the output."""


ConstraintKind = Literal["json_schema", "json_object", "regex", "choice", "grammar"]


@dataclass(frozen=True)
class Constraint:
    """What a generation's output must match, enforced by a token mask at every step.

    ``spec`` is the JSON Schema as JSON text (``json_schema``), empty (``json_object``: any
    JSON object), a regular expression (``regex``), a JSON list of strings (``choice``: exactly
    one of them), or a Lark grammar (``grammar``).
    """

    kind: ConstraintKind
    spec: str = ""


@dataclass(frozen=True)
class GenerationRequest:
    """One sequence to generate."""

    request_id: str
    prompt_ids: list[int]
    params: SamplingParams = field(default_factory=SamplingParams)
    adapter_slot: int | None = None
    """Opaque adapter reference resolved after the policy check; None = the base model."""
    constraint: Constraint | None = None
    """The output must match it (structured outputs, forced tool calls); None: free text."""
    cache_scope: str = ""
    """Who may reuse this prompt's cached prefix (the tenancy): prefixes are shared within a scope only."""


@dataclass(frozen=True)
class Usage:
    """Exact token counts of one request."""

    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


FinishReason = Literal["stop", "length", "abort"]
LOOP_NGRAM = 4
LOOP_REPEATS = 3


@dataclass
class LoopGuard:
    """``SamplingParams.loop_guard``: counts each ``LOOP_NGRAM`` of an output as its tokens arrive."""

    tail: list[int] = field(default_factory=list)
    counts: dict[tuple[int, ...], int] = field(default_factory=dict)

    def repeating(self, token_id: int) -> bool:
        """Add a token; whether the output's last ``LOOP_NGRAM`` tokens have now occurred ``LOOP_REPEATS`` times."""
        self.tail = [*self.tail[-(LOOP_NGRAM - 1):], token_id]
        if len(self.tail) < LOOP_NGRAM:
            return False
        gram = tuple(self.tail)
        self.counts[gram] = self.counts.get(gram, 0) + 1
        return self.counts[gram] >= LOOP_REPEATS


@dataclass(frozen=True)
class TokenLogprob:
    """A token's log probability and the most likely tokens at its position (``SamplingParams.logprobs``)."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()
    """``(token id, log probability)`` of the most likely tokens, most likely first."""


@dataclass(frozen=True)
class TokenEvent:
    """A step of a streamed generation.

    ``text`` is the newly decodable text since the previous event (may be empty while a
    multi-byte character or a possible stop string is incomplete). The last event of a
    request has ``finish_reason`` and ``usage`` set. ``logprobs`` has one entry per token of
    ``token_ids`` when the request asked for them; the first event carries ``prompt_logprobs``
    (one per prompt token, None for the first) when asked.
    """

    text: str
    token_ids: tuple[int, ...] = ()
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    logprobs: tuple[TokenLogprob, ...] = ()
    prompt_logprobs: tuple[TokenLogprob | None, ...] | None = None
    stopped_by: Literal["repetition"] | None = None
    """On the last event: what ended a ``stop`` that was not the model's (the loop guard)."""


TruncateMode = Literal["NONE", "START", "END"]
InputType = Literal["search_document", "search_query", "classification", "clustering"]

MAX_INPUTS = 96
"""Most texts in one embedding request (Cohere's and OCI's limit)."""
TRUNCATE_MODES: tuple[str, ...] = ("NONE", "START", "END")
INPUT_TYPES: tuple[str, ...] = ("search_document", "search_query", "classification", "clustering")


def check_embedding_inputs(texts: Sequence[str], truncate: str) -> None:
    """Refuse an embedding request every embedder refuses the same way.

    Raises:
        InvalidInput: An unknown ``truncate``; no inputs or more than ``MAX_INPUTS`` (param
            ``input``); a non-string or empty input (param ``input[i]``).
    """
    if truncate not in TRUNCATE_MODES:
        raise InvalidInput(f"truncate must be one of {', '.join(TRUNCATE_MODES)}", param="truncate")
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise InvalidInput("input must be a list of strings", param="input")
    if not texts:
        raise InvalidInput("input must hold at least one text", param="input")
    if len(texts) > MAX_INPUTS:
        raise InvalidInput(f"input holds {len(texts)} texts, more than the limit of {MAX_INPUTS}", param="input")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise InvalidInput(f"input[{i}] must be a string", param=f"input[{i}]")
        if not text:
            raise InvalidInput(f"input[{i}] is empty", param=f"input[{i}]")


@dataclass(frozen=True)
class EmbeddingResult:
    """L2-normalised vectors, one per input, and the tokens consumed."""

    vectors: list[list[float]]
    prompt_tokens: int
