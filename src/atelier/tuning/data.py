"""Training files: parse and validate JSONL, tokenize with the serving chat format, split.

A file is validated as a whole before any training: every problem is named by its line
number and all of them are reported at once (``validate`` returns them; ``load_examples``
raises one ``InvalidInput`` listing them). Examples are tokenized with
``atelier.prompts.formats.render_chat``, the rendering serving uses, so the model is trained
on exactly the text it will see; labels are ``-100`` on every token but the assistant's.
This module knows tokenizers and bytes only: no model, no storage, no tenants.

Accepted lines (blank lines are skipped; line numbers count every physical line from 1):

* ``{"prompt": "...", "completion": "..."}``: rendered as a two-message conversation, a
  user message (the prompt) then an assistant message (the completion), in the model's chat
  format, which is what serving does for a chat request; the loss is on the completion.
* ``{"messages": [...]}`` (OpenAI's chat fine-tuning format): an optional ``system``
  message first, then ``user`` and ``assistant`` turns alternating, starting with ``user``
  and ending with ``assistant``. Content is a non-empty string or a list of text parts. An
  assistant message may carry ``"weight": 0`` to leave it out of the loss (default 1).
* with a ``text_template`` (see ``TextTemplate``), any JSON object holding the template's
  fields; it becomes a prompt/completion pair as above.
"""

from __future__ import annotations

import json
import random
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from atelier.errors import InvalidInput
from atelier.prompts.formats import render_chat

MIN_EXAMPLES = 10
"""Fewest examples a training file may hold."""
IGNORE_INDEX = -100
"""Label of a token that carries no loss (PyTorch's cross-entropy ``ignore_index``)."""
MAX_LISTED_PROBLEMS = 50
"""Problems spelled out in an exception message (the report keeps them all)."""

_ROLE_SYNONYMS = {"developer": "system"}


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a training file."""

    line: int | None
    """1-based line number, or None for a problem of the whole file."""
    message: str
    """What is wrong, in words the user can act on."""

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}" if self.line is not None else self.message


@dataclass(frozen=True)
class Example:
    """One tokenized training example."""

    line: int
    """Line of the file it came from."""
    input_ids: list[int]
    """Token ids of the whole rendered conversation."""
    labels: list[int]
    """``input_ids[i]`` where token ``i`` carries loss (assistant content), else ``-100``; unshifted."""

    @property
    def n_loss_tokens(self) -> int:
        """Tokens the loss is computed on."""
        return sum(1 for t in self.labels if t != IGNORE_INDEX)


@dataclass(frozen=True)
class ValidationReport:
    """The outcome of validating one file."""

    examples: list[Example]
    """The valid examples, in file order."""
    problems: list[Problem] = field(default_factory=list)
    """Every problem found, by line (file-level problems last)."""
    n_records: int = 0
    """Non-blank lines in the file."""

    @property
    def ok(self) -> bool:
        """True when the file can be trained on."""
        return not self.problems

    @property
    def n_tokens(self) -> int:
        """Tokens over all valid examples (what an epoch processes)."""
        return sum(len(e.input_ids) for e in self.examples)

    def message(self, limit: int = MAX_LISTED_PROBLEMS) -> str:
        """The problems as one message, one per line, the first ``limit`` of them spelled out."""
        head = f"the file has {len(self.problems)} problem{'s' if len(self.problems) != 1 else ''}:"
        lines = [str(p) for p in self.problems[:limit]]
        if len(self.problems) > limit:
            lines.append(f"... and {len(self.problems) - limit} more")
        return "\n".join([head, *lines])

    def raise_for_problems(self, param: str = "training_file") -> None:
        """Raise one ``InvalidInput`` listing the problems, if any.

        Raises:
            InvalidInput: with ``param`` and ``line`` set to the first problem's line.
        """
        if self.problems:
            raise InvalidInput(self.message(), param=param, line=self.problems[0].line)


class _Bad(Exception):
    """Problems with one line (internal: turned into ``Problem`` entries)."""

    def __init__(self, *messages: str):
        super().__init__(messages[0])
        self.messages = messages


# ---------------------------------------------------------------- text templates


@dataclass(frozen=True)
class TextTemplate:
    """A template turning records with any field names into prompt/completion pairs.

    The template is cut just before its **last** ``{field}``: the text up to that point,
    with the earlier fields filled in, is the prompt; the last field and all literal text
    after it are the completion. ``"<prompt>{question}</prompt>{answer}"`` gives the prompt
    ``"<prompt>…question…</prompt>"`` and the completion ``"…answer…"``;
    ``"Q: {q}\\nA: {a}\\n"`` gives ``"Q: …\\nA: "`` and ``"…\\n"``. Fields are plain names
    (no format specs, conversions, indexes or attributes); ``{{`` and ``}}`` are literal
    braces. Field values must be strings or numbers.
    """

    prompt: tuple[tuple[str, str | None], ...]
    """(literal text, field name or None) pieces of the prompt part."""
    completion: tuple[tuple[str, str | None], ...]
    """Pieces of the completion part; the first is ``("", last field)``."""

    @property
    def fields(self) -> tuple[str, ...]:
        """The field names, in template order (possibly repeated)."""
        return tuple(name for _, name in (*self.prompt, *self.completion) if name is not None)

    @classmethod
    def parse(cls, template: str) -> "TextTemplate":
        """Parse a template.

        Raises:
            InvalidInput: (``param="text_template"``) bad brace syntax, a field that is not a
                plain name, no field, or nothing before the last field (no prompt).
        """
        try:
            parsed = list(string.Formatter().parse(template))
        except ValueError as exc:
            raise InvalidInput(f"text_template: {exc}", param="text_template") from None
        pieces: list[tuple[str, str | None]] = []
        for literal, name, spec, conversion in parsed:
            if literal:
                pieces.append((literal, None))
            if name is None:
                continue
            if not name.isidentifier() or spec or conversion:
                raise InvalidInput(
                    f"text_template: {{{name}}} is not a plain field name like {{question}}", param="text_template"
                )
            pieces.append(("", name))
        last = max((i for i, (_, name) in enumerate(pieces) if name is not None), default=None)
        if last is None:
            raise InvalidInput("text_template has no {field}", param="text_template")
        if last == 0:
            raise InvalidInput(
                "text_template has nothing before its last field, so no prompt; e.g. '{question}\\n{answer}'",
                param="text_template",
            )
        return cls(prompt=tuple(pieces[:last]), completion=tuple(pieces[last:]))

    def apply(self, record: Mapping) -> tuple[str, str]:
        """``(prompt, completion)`` of one record.

        Raises:
            _Bad: a field is missing, not a string or number, or the completion field is empty.
        """
        errors, values = [], {}
        for name in dict.fromkeys(self.fields):
            value = record.get(name)
            if value is None:
                errors.append(f"missing field {name!r} (used by text_template)")
            elif isinstance(value, bool) or not isinstance(value, (str, int, float)):
                errors.append(f"field {name!r} must be a string or a number")
            else:
                values[name] = str(value)
        completion_field = self.completion[0][1]
        if completion_field in values and not values[completion_field].strip():
            errors.append(f"field {completion_field!r} (the completion) is empty")
        if errors:
            raise _Bad(*errors)

        def fill(pieces) -> str:
            return "".join(values[name] if name is not None else literal for literal, name in pieces)

        prompt = fill(self.prompt)
        if not prompt.strip():
            raise _Bad("the prompt part of text_template is empty for this line")
        return prompt, fill(self.completion)


# ---------------------------------------------------------------- one record → messages


def _text(content: object, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list) and content:
        parts = []
        for j, part in enumerate(content):
            if not isinstance(part, Mapping) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise _Bad(f"{where}[{j}] must be a text part {{'type': 'text', 'text': '...'}}")
            parts.append(part["text"])
        return "\n".join(parts)
    raise _Bad(f"{where} must be a string or a list of text parts")


def _chat(messages: object) -> tuple[list[dict], list[int]]:
    """Validate a ``messages`` list; plain messages plus the weight of each assistant turn."""
    if not isinstance(messages, list) or not messages:
        raise _Bad("'messages' must be a non-empty list")
    errors: list[str] = []
    out: list[dict] = []
    weights: list[int] = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, Mapping):
            errors.append(f"{where} must be an object with 'role' and 'content'")
            continue
        role = m.get("role")
        role = _ROLE_SYNONYMS.get(role, role) if isinstance(role, str) else role
        if role not in ("system", "user", "assistant"):
            errors.append(f"{where}.role must be system, user or assistant; got {m.get('role')!r}")
            continue
        if m.get("tool_calls") or m.get("function_call"):
            errors.append(f"{where}: tool and function calls are not supported")
            continue
        try:
            content = _text(m.get("content"), f"{where}.content")
        except _Bad as exc:
            errors.append(exc.messages[0] if m.get("content") is not None else f"{where}.content is missing")
            continue
        if not content.strip():
            errors.append(f"{where}.content is empty")
        weight = m.get("weight", 1)
        if "weight" in m and (role != "assistant" or weight not in (0, 1) or isinstance(weight, bool)):
            errors.append(f"{where}.weight must be 0 or 1, on assistant messages only")
        out.append({"role": role, "content": content})
        if role == "assistant":
            weights.append(int(weight) if weight in (0, 1) else 1)
    if errors:
        raise _Bad(*errors)
    # order: [system] user assistant (user assistant)*
    expected = "user"
    for i, m in enumerate(out):
        if m["role"] == "system":
            if i != 0:
                errors.append(f"messages[{i}].role: a system message may only come first")
            continue
        if m["role"] != expected:
            errors.append(f"messages[{i}].role: expected {expected!r} (user and assistant alternate, user first)")
            break
        expected = "assistant" if expected == "user" else "user"
    if not errors and out[-1]["role"] != "assistant":
        errors.append("the last message must be from the assistant (it is what the model learns)")
    if not errors and not any(weights):
        errors.append("every assistant message has weight 0: nothing to learn")
    if errors:
        raise _Bad(*errors)
    return out, weights


def to_messages(record: object, template: TextTemplate | None = None) -> tuple[list[dict], list[int]]:
    """One parsed JSON line as chat messages plus per-assistant-message weights.

    Raises:
        _Bad: the line's problems.
    """
    if not isinstance(record, Mapping):
        raise _Bad("expected a JSON object")
    if template is not None:
        prompt, completion = template.apply(record)
        return [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}], [1]
    has_chat = "messages" in record
    has_pair = "prompt" in record or "completion" in record
    if has_chat and has_pair:
        raise _Bad("a line holds either 'messages' or 'prompt'/'completion', not both")
    if has_chat:
        return _chat(record["messages"])
    if not has_pair:
        raise _Bad("expected {'prompt', 'completion'} or {'messages': [...]} (or give a text_template)")
    errors = []
    for name in ("prompt", "completion"):
        value = record.get(name)
        if value is None:
            errors.append(f"missing field {name!r}")
        elif not isinstance(value, str):
            errors.append(f"field {name!r} must be a string")
        elif not value.strip():
            errors.append(f"field {name!r} is empty")
    if errors:
        raise _Bad(*errors)
    return [{"role": "user", "content": record["prompt"]}, {"role": "assistant", "content": record["completion"]}], [1]


# ---------------------------------------------------------------- tokenization


def _runs(mask: Sequence[int]) -> list[tuple[int, int]]:
    """``[start, end)`` of each run of ones."""
    runs, start = [], None
    for i, bit in enumerate(mask):
        if bit and start is None:
            start = i
        elif not bit and start is not None:
            runs.append((start, i))
            start = None
    if start is not None:
        runs.append((start, len(mask)))
    return runs


def tokenize_example(
    tokenizer, messages: list[dict], weights: list[int], *, chat_format: str = "template", line: int = 0
) -> Example:
    """Render a conversation and label its assistant tokens.

    Args:
        tokenizer: the base model's (fast) tokenizer.
        messages: validated messages ending with an assistant turn.
        weights: 0 or 1 per assistant message; a 0 leaves that turn's tokens out of the loss.
        chat_format: the model's chat format (``render_chat``).
        line: the file line, kept on the example.

    Returns:
        The example; ``labels[i] = input_ids[i]`` on assistant content and end-of-turn tokens
        of weight-1 turns, ``-100`` elsewhere.

    Raises:
        _Bad: the chat format rejects the messages, or no token is left to learn from.
    """
    try:
        rendered = render_chat(tokenizer, messages, chat_format=chat_format, add_generation_prompt=False)
    except InvalidInput as exc:
        raise _Bad(f"the model's chat format cannot render this conversation: {exc.message}") from None
    mask = list(rendered.assistant_mask)
    if not all(weights):
        runs = _runs(mask)
        if len(runs) != len(weights):
            raise _Bad("cannot tell the assistant turns apart in this chat format to apply 'weight'")
        for (start, end), weight in zip(runs, weights):
            if not weight:
                mask[start:end] = [0] * (end - start)
    if not any(mask):
        raise _Bad("no assistant tokens to learn from after rendering with the model's chat format")
    labels = [tid if bit else IGNORE_INDEX for tid, bit in zip(rendered.ids, mask)]
    return Example(line=line, input_ids=list(rendered.ids), labels=labels)


# ---------------------------------------------------------------- a whole file


def validate(
    data: bytes | str,
    tokenizer,
    *,
    context_length: int,
    chat_format: str = "template",
    text_template: str | None = None,
    min_examples: int = MIN_EXAMPLES,
) -> ValidationReport:
    """Parse, check and tokenize a JSONL training file, collecting every problem.

    Args:
        data: the file's bytes (UTF-8; a leading BOM is ignored).
        tokenizer: the base model's fast tokenizer.
        context_length: the base model's context; a longer example is a problem.
        chat_format: the model's chat format (see ``render_chat``).
        text_template: optional template mapping other field names to prompt/completion.
        min_examples: fewest non-blank lines accepted (10 for training files; 1 suits a
            separate validation file).

    Returns:
        The valid examples and all problems (bad JSON or UTF-8, missing or empty fields,
        wrong roles or role order, too long, too few examples), by line.

    Raises:
        InvalidInput: only for a malformed ``text_template`` (``param="text_template"``):
            that is a problem of the request, not of a line.
    """
    template = TextTemplate.parse(text_template) if text_template is not None else None
    raw = data.encode() if isinstance(data, str) else bytes(data)
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    examples: list[Example] = []
    problems: list[Problem] = []
    records = 0
    for number, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        records += 1
        try:
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise _Bad(f"not valid UTF-8 (byte {exc.start + 1})") from None
            try:
                record = json.loads(text)
            except json.JSONDecodeError as exc:
                raise _Bad(f"not valid JSON: {exc.msg} at column {exc.colno}") from None
            messages, weights = to_messages(record, template)
            example = tokenize_example(tokenizer, messages, weights, chat_format=chat_format, line=number)
            if len(example.input_ids) > context_length:
                raise _Bad(
                    f"the example is {len(example.input_ids)} tokens long, more than the model's context "
                    f"of {context_length} tokens"
                )
            examples.append(example)
        except _Bad as bad:
            problems.extend(Problem(number, m) for m in bad.messages)
    if records < min_examples:
        plural = "s" if records != 1 else ""
        problems.append(Problem(None, f"the file has {records} example{plural}; at least {min_examples} are needed"))
    return ValidationReport(examples=examples, problems=problems, n_records=records)


def load_examples(data: bytes | str, tokenizer, *, param: str = "training_file", **options) -> list[Example]:
    """The examples of a file that must be valid as a whole (``options``: those of ``validate``).

    Raises:
        InvalidInput: one error listing every problem by line (``param`` as given).
    """
    report = validate(data, tokenizer, **options)
    report.raise_for_problems(param)
    return report.examples


def split_examples(
    examples: Sequence[Example], validation_split: float, seed: int
) -> tuple[list[Example], list[Example]]:
    """A deterministic train/validation split.

    ``round(n × validation_split)`` examples (at least 1 when the split is positive, and
    never all of them) chosen by a ``random.Random(seed)`` shuffle go to validation; both
    parts keep file order.

    Returns:
        ``(train, validation)``.
    """
    n = len(examples)
    if validation_split <= 0 or n < 2:
        return list(examples), []
    n_val = min(max(1, round(n * validation_split)), n - 1)
    order = list(range(n))
    random.Random(seed).shuffle(order)
    held = set(order[:n_val])
    train = [e for i, e in enumerate(examples) if i not in held]
    val = [e for i, e in enumerate(examples) if i in held]
    return train, val
