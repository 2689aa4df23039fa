"""A generated choice in OpenAI's shapes: its message or text, its tool calls, its log probabilities.

``ChoiceReader`` reads what a generation produced as the request asked: with tools, the text
is read for calls (a forced call is the whole output, a JSON object; ``auto`` parses
``<tool_call>`` blocks out of the text) and ``finish_reason`` becomes ``tool_calls``; log
probabilities become ``choices[].logprobs`` (chat) or the legacy ``tokens`` /
``token_logprobs`` / ``top_logprobs`` / ``text_offset`` lists (text completions), each token
decoded on its own. Knows nothing about HTTP.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from atelier.api.openai.options import ToolPlan
from atelier.api.openai.protocol import (
    AssistantMessage,
    ChatChoice,
    ChoiceLogprobs,
    CompletionLogprobs,
    FunctionCall,
    TokenLogprobOut,
    ToolCallDelta,
    ToolCallOut,
    TopLogprob,
)
from atelier.engine.types import TokenLogprob
from atelier.prompts.tools import ToolCall, parse_call, parse_tool_calls


def call_id() -> str:
    """A fresh tool call id such as ``call_5f1e…``."""
    return f"call_{secrets.token_hex(12)}"


class ChoiceReader:
    """Reads choices for one request (see the module docstring).

    Args:
        tokenizer: The model's tokenizer (decodes tokens for log probabilities).
        tools: How the request uses tools.
        top_logprobs: How many likeliest tokens to show per position; None: no log probabilities.
    """

    def __init__(self, tokenizer: Any, tools: ToolPlan = ToolPlan(), top_logprobs: int | None = None):
        self._tokenizer = tokenizer
        self.tools = tools
        self.top_logprobs = top_logprobs
        self._piece = lru_cache(maxsize=65536)(self._decode)

    @property
    def buffers(self) -> bool:
        """Whether a stream must hold the text back until the end (it may be tool calls)."""
        return self.tools.mode != "none"

    def _decode(self, token_id: int) -> str:
        return self._tokenizer.decode([token_id], skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def piece(self, token_id: int) -> str:
        """A token decoded on its own."""
        return self._piece(token_id)

    # ---------------------------------------------------------------- tool calls

    def calls(self, text: str) -> tuple[str | None, list[ToolCall]]:
        """The content and the calls of a finished text."""
        if self.tools.mode == "forced":
            call = parse_call(text)
            return (None, [call]) if call is not None else (text, [])
        if self.tools.mode == "auto":
            content, calls = parse_tool_calls(text)
            calls = [c for c in calls if c.name in self.tools.functions]
            if not self.tools.parallel:
                calls = calls[:1]
            return (content or None) if calls else text, calls
        return text, []

    def message(self, text: str, finish_reason: str) -> tuple[AssistantMessage, str]:
        """The assistant message of a finished text, and its finish reason (``tool_calls`` when it called)."""
        content, calls = self.calls(text)
        if not calls:
            return AssistantMessage(content=text), finish_reason
        out = [ToolCallOut(id=call_id(), function=FunctionCall(name=c.name, arguments=c.arguments)) for c in calls]
        return AssistantMessage(content=content, tool_calls=out), "tool_calls" if finish_reason == "stop" else \
            finish_reason

    def call_deltas(self, calls: Sequence[ToolCall]) -> list[ToolCallDelta]:
        """The calls as streamed deltas (each whole)."""
        return [ToolCallDelta(index=i, id=call_id(), function=FunctionCall(name=c.name, arguments=c.arguments))
                for i, c in enumerate(calls)]

    # ---------------------------------------------------------------- log probabilities

    def _entry(self, logprob: TokenLogprob) -> TokenLogprobOut:
        token = self.piece(logprob.token_id)
        top = [TopLogprob(token=self.piece(t), logprob=lp, bytes=list(self.piece(t).encode()))
               for t, lp in logprob.top[: self.top_logprobs or 0]]
        return TokenLogprobOut(token=token, logprob=logprob.logprob, bytes=list(token.encode()), top_logprobs=top)

    def chat_logprobs(self, logprobs: Sequence[TokenLogprob]) -> ChoiceLogprobs | None:
        """``choices[].logprobs`` for these tokens (None when the request did not ask)."""
        if self.top_logprobs is None:
            return None
        return ChoiceLogprobs(content=[self._entry(lp) for lp in logprobs])

    def completion_logprobs(self, logprobs: Sequence[TokenLogprob | None], ids: Sequence[int], offset: int
                            ) -> CompletionLogprobs | None:
        """The legacy lists for tokens ``ids`` (their ``logprobs``; None for a prompt's first token),
        the first starting at character ``offset`` of the returned text."""
        if self.top_logprobs is None:
            return None
        tokens, offsets, position = [], [], offset
        for token_id in ids:
            piece = self.piece(token_id)
            tokens.append(piece)
            offsets.append(position)
            position += len(piece)
        return CompletionLogprobs(
            tokens=tokens, text_offset=offsets,
            token_logprobs=[lp.logprob if lp is not None else None for lp in logprobs],
            top_logprobs=[{self.piece(t): v for t, v in lp.top[: self.top_logprobs]} if lp is not None else None
                          for lp in logprobs],
        )  # fmt: skip

    def chat_choice(self, index: int, text: str, finish_reason: str, logprobs: Sequence[TokenLogprob]) -> ChatChoice:
        """One finished chat choice."""
        message, finish = self.message(text, finish_reason)
        return ChatChoice(index=index, message=message, finish_reason=finish, logprobs=self.chat_logprobs(logprobs))
