"""Plain data passed across the engine boundary: what to generate and what comes back.

The engine knows nothing about HTTP or tenants: a request is token ids, sampling
parameters and an opaque adapter slot resolved by the caller after its policy check.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


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


@dataclass(frozen=True)
class GenerationRequest:
    """One sequence to generate."""

    request_id: str
    prompt_ids: list[int]
    params: SamplingParams = field(default_factory=SamplingParams)
    adapter_slot: int | None = None
    """Opaque adapter reference resolved after the policy check; None = the base model."""


@dataclass(frozen=True)
class Usage:
    """Exact token counts of one request."""

    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


FinishReason = Literal["stop", "length", "abort"]


@dataclass(frozen=True)
class TokenEvent:
    """A step of a streamed generation.

    ``text`` is the newly decodable text since the previous event (may be empty while a
    multi-byte character or a possible stop string is incomplete). The last event of a
    request has ``finish_reason`` and ``usage`` set.
    """

    text: str
    token_ids: tuple[int, ...] = ()
    finish_reason: FinishReason | None = None
    usage: Usage | None = None


TruncateMode = Literal["NONE", "START", "END"]
InputType = Literal["search_document", "search_query", "classification", "clustering"]


@dataclass(frozen=True)
class EmbeddingResult:
    """L2-normalised vectors, one per input, and the tokens consumed."""

    vectors: list[list[float]]
    prompt_tokens: int
