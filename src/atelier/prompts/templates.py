"""Prompt-engineering templates: k-shot examples, chain of thought, completion-style prompts.

Each helper returns chat messages (``list[dict]``, ready for ``formats.render_chat``) or,
for the ``*_text`` variants, one plain string for a completion model. This module knows
nothing about tokenizers or models.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field

from atelier.errors import InvalidInput

ZERO_SHOT_COT = "Let's think step by step."

MAX_TEXT = 100_000


class Example(BaseModel):
    """One worked input → output pair shown to the model before the query."""

    model_config = ConfigDict(extra="forbid")

    input: str = Field(min_length=1, max_length=MAX_TEXT, description="What the user says in the example.")
    output: str = Field(max_length=MAX_TEXT, description="The answer the model should give to that input.")


class ReasonedExample(BaseModel):
    """A chain-of-thought example: a question, the reasoning towards it, and the answer."""

    model_config = ConfigDict(extra="forbid")

    question: str = Field(min_length=1, max_length=MAX_TEXT, description="The example question.")
    reasoning: str = Field(max_length=MAX_TEXT, description="The steps that lead to the answer.")
    answer: str = Field(min_length=1, max_length=MAX_TEXT, description="The final answer, stated after the reasoning.")


class PromptTemplate(BaseModel):
    """Prompt-engineering options applied to a query before it reaches the model."""

    model_config = ConfigDict(extra="forbid")

    instruction: str | None = Field(None, max_length=MAX_TEXT, description="System instruction placed first.")
    examples: list[Example] = Field(default_factory=list, max_length=64, description="k-shot examples, in order.")
    chain_of_thought: bool = Field(False, description="Ask for step-by-step reasoning (zero-shot CoT).")

    def messages(self, query: str) -> list[dict]:
        """The chat messages for ``query`` under these options."""
        if self.chain_of_thought:
            query = _zero_shot_cot(query)
        return k_shot(self.examples, query, instruction=self.instruction)

    def text(self, query: str) -> str:
        """The completion-style prompt for ``query`` under these options."""
        if self.chain_of_thought:
            query = _zero_shot_cot(query)
        return k_shot_text(self.examples, query, instruction=self.instruction)


def _examples(examples: Sequence) -> list[Example]:
    """Pairs, ``{"input", "output"}`` dicts or ``Example`` objects, as ``Example`` objects."""
    out = []
    for i, ex in enumerate(examples):
        try:
            if isinstance(ex, Example):
                out.append(ex)
            elif isinstance(ex, Mapping):
                out.append(Example.model_validate(ex))
            else:
                x, y = ex
                out.append(Example(input=x, output=y))
        except (ValueError, TypeError) as exc:
            raise InvalidInput(f"an example needs an input and an output: {exc}", param=f"examples[{i}]") from exc
    return out


def k_shot(
    examples: Sequence[tuple[str, str] | Mapping | Example],
    query: str,
    instruction: str | None = None,
) -> list[dict]:
    """Few-shot chat layout: each example as a user turn and an assistant turn, then the query.

    Args:
        examples: ``(input, output)`` pairs, ``{"input", "output"}`` dicts or ``Example``s.
        query: the user's actual question, the last message.
        instruction: optional system message, placed first.

    Returns:
        ``[system?, user₁, assistant₁, …, userₖ, assistantₖ, user(query)]``.

    Raises:
        InvalidInput: an example without input or output (``param="examples[i]"``).
    """
    messages = [{"role": "system", "content": instruction}] if instruction else []
    for ex in _examples(examples):
        messages.append({"role": "user", "content": ex.input})
        messages.append({"role": "assistant", "content": ex.output})
    messages.append({"role": "user", "content": query})
    return messages


def k_shot_text(
    examples: Sequence[tuple[str, str] | Mapping | Example],
    query: str,
    instruction: str | None = None,
) -> str:
    """Few-shot completion prompt: ``Input:``/``Output:`` blocks, ending with an open ``Output:``.

    Args:
        examples: as for ``k_shot``.
        query: the input to complete.
        instruction: optional first paragraph.

    Returns:
        ``"{instruction}\\n\\nInput: x₁\\nOutput: y₁\\n\\n…Input: {query}\\nOutput:"``.
    """
    blocks = [instruction] if instruction else []
    blocks += [f"Input: {ex.input}\nOutput: {ex.output}" for ex in _examples(examples)]
    blocks.append(f"Input: {query}\nOutput:")
    return "\n\n".join(blocks)


def _zero_shot_cot(question: str) -> str:
    return f"{question.rstrip()}\n{ZERO_SHOT_COT}"


def _worked_answer(ex: ReasonedExample) -> str:
    answer = ex.answer.strip()
    answer = answer[:-1] if answer.endswith(".") else answer
    reasoning = ex.reasoning.strip()
    return f"{reasoning}\nThe answer is {answer}." if reasoning else f"The answer is {answer}."


def chain_of_thought(
    question: str,
    examples: Sequence[Mapping | ReasonedExample] | None = None,
    instruction: str | None = None,
) -> list[dict]:
    """Chain-of-thought prompt as chat messages.

    With examples (few-shot CoT), each is a user turn with its question and an assistant
    turn with its reasoning followed by ``The answer is X.``; the question comes last as is.
    Without examples (zero-shot CoT), ``Let's think step by step.`` follows the question.

    Args:
        question: the question to answer.
        examples: ``{"question", "reasoning", "answer"}`` dicts or ``ReasonedExample``s.
        instruction: optional system message.

    Returns:
        Chat messages ending with the user's question.

    Raises:
        InvalidInput: a malformed example (``param="examples[i]"``).
    """
    if not examples:
        return k_shot([], _zero_shot_cot(question), instruction=instruction)
    pairs = []
    for i, ex in enumerate(examples):
        try:
            ex = ex if isinstance(ex, ReasonedExample) else ReasonedExample.model_validate(ex)
        except ValueError as exc:
            message = f"a reasoning example needs question, reasoning and answer: {exc}"
            raise InvalidInput(message, param=f"examples[{i}]") from exc
        pairs.append((ex.question, _worked_answer(ex)))
    return k_shot(pairs, question, instruction=instruction)


_ANSWER = re.compile(r"the answer is\s*:?\s*(.+?)\s*(?:\.(?=\s|$)|$)", re.IGNORECASE | re.MULTILINE)


def extract_answer(completion: str) -> str | None:
    """The ``X`` of the last ``The answer is X.`` in a chain-of-thought completion, or None."""
    found = _ANSWER.findall(completion)
    return found[-1] if found else None
