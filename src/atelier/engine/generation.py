"""Per-sequence generation state: streaming detokenization, stop strings, token counts.

Knows nothing about batching or models: the scheduler pushes each sampled token id in,
and gets back the text that is now safe to emit. Text is held back while it ends in an
incomplete UTF-8 character (the tokenizer decodes it to U+FFFD) or while its tail could
still become one of the stop strings.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from atelier.engine.types import (
    FinishReason,
    GenerationRequest,
    LoopGuard,
    TokenEvent,
    TokenLogprob,
    Usage,
)

REPLACEMENT = "\ufffd"


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of some stop string."""
    longest = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:n]):
                longest = n
                break
    return longest


class TextStream:
    """Turns a growing list of token ids into safely emittable text deltas.

    The whole output is re-decoded at each step (a Rust call, fast next to a forward
    pass), so tokenizers whose pieces depend on their neighbours stay exact.
    """

    def __init__(self, tokenizer, stop: tuple[str, ...] = ()):
        self._tokenizer = tokenizer
        self._stops = tuple(s for s in stop if s)
        self._ids: list[int] = []
        self.text = ""  # decoded output so far, cut at a stop string once one is found
        self.emitted = 0  # characters of ``text`` already handed out
        self.stopped = False

    def _decode(self) -> str:
        return self._tokenizer.decode(self._ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def push(self, token_id: int) -> str:
        """Add one token; return the new text that can be emitted now."""
        self._ids.append(token_id)
        text = self._decode()
        if text.endswith(REPLACEMENT):
            return ""  # an incomplete multi-byte character: wait for its next bytes
        self.text = text
        if self._stops:
            start = max(0, self.emitted - max(len(s) for s in self._stops))
            hits = [i for i in (text.find(s, start) for s in self._stops) if i >= 0]
            if hits:
                self.text = text[: min(hits)]
                self.stopped = True
                return self.flush()
            safe = len(text) - _held_back(text, self._stops)
        else:
            safe = len(text)
        if safe <= self.emitted:
            return ""
        delta = text[self.emitted : safe]
        self.emitted = safe
        return delta

    def flush(self) -> str:
        """The rest of the text at the end of the sequence (held-back tails included)."""
        delta = self.text[self.emitted :]
        self.emitted = len(self.text)
        return delta


@dataclass
class Sequence:
    """One request being generated: its ids, sampling state and output stream."""

    request: GenerationRequest
    stream: TextStream
    eos_ids: frozenset[int]
    max_new: int
    """Tokens this sequence may still add (max_tokens, clipped to the context)."""
    generator: torch.Generator | None = None
    counts: torch.Tensor | None = None  # (V,) occurrences of each generated token, for penalties
    seen: torch.Tensor | None = None  # (V,) bool: tokens of the prompt and the output, for the repetition penalty
    prompt_logprobs: tuple[TokenLogprob | None, ...] | None = None
    """Sent with the first event (``SamplingParams.prompt_logprobs``), then dropped."""
    output_ids: list[int] = field(default_factory=list)
    finish_reason: FinishReason | None = None
    aborted: bool = False
    stopped_by: str | None = None
    loop: LoopGuard = field(default_factory=LoopGuard)
    """The output's n-grams, for the loop guard."""

    @property
    def prompt_len(self) -> int:
        return len(self.request.prompt_ids)

    @property
    def total_len(self) -> int:
        return self.prompt_len + len(self.output_ids)

    def usage(self) -> Usage:
        return Usage(prompt_tokens=self.prompt_len, completion_tokens=len(self.output_ids))

    def append(self, token_id: int, logprob: TokenLogprob | None = None, complete: bool = False) -> TokenEvent:
        """Record a sampled token and return the event to send (with finish and usage if done).

        Args:
            token_id: The sampled token.
            logprob: Its log probabilities, when the request asked for them.
            complete: The output constraint is complete (its grammar admits nothing more):
                the sequence ends with ``stop``. A constrained sequence also ends at an
                end-of-sequence token even with ``ignore_eos`` (the grammar allowed it only
                because the output is complete).
        """
        self.output_ids.append(token_id)
        if self.counts is not None:
            self.counts[token_id] += 1
        if self.seen is not None:
            self.seen[token_id] = True
        ignore_eos = self.request.params.ignore_eos and self.request.constraint is None
        if token_id in self.eos_ids and not ignore_eos:
            self.finish_reason = "stop"
            text = self.stream.flush()
        else:
            text = self.stream.push(token_id)
            if self.stream.stopped or complete:
                self.finish_reason = "stop"
                text += self.stream.flush()
            elif self.request.params.loop_guard and self.loop.repeating(token_id):
                self.finish_reason, self.stopped_by = "stop", "repetition"
                text += self.stream.flush()
            elif len(self.output_ids) >= self.max_new:
                self.finish_reason = "length"
                text += self.stream.flush()
        logprobs = (logprob,) if logprob is not None else ()
        prompt_logprobs, self.prompt_logprobs = self.prompt_logprobs, None
        if self.finish_reason is not None:
            return TokenEvent(text, (token_id,), self.finish_reason, self.usage(), logprobs, prompt_logprobs,
                              self.stopped_by)
        return TokenEvent(text, (token_id,), logprobs=logprobs, prompt_logprobs=prompt_logprobs)
