"""Render chat messages into token ids plus an assistant mask, in one of a few chat formats.

One function, ``render_chat``, is shared by serving (ids of the prompt, ending with the
generation prompt) and fine-tuning (ids of a whole conversation, with ``assistant_mask``
selecting the tokens the loss is computed on). This module knows only tokenizers and text.

Every format first builds the conversation as text together with the character spans of
the assistant turns (content plus end-of-turn marker); the text is then tokenized once with
offsets, and a token is masked when its character span overlaps an assistant span.
"""

from __future__ import annotations

import json
import logging
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from atelier.errors import InvalidInput
from atelier.prompts.tools import with_tools

log = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant")
ROLE_SYNONYMS = {"developer": "system"}
TOOL_ROLE = "tool"

Span = tuple[int, int]


@dataclass(frozen=True)
class RenderedPrompt:
    """A conversation rendered for a model."""

    ids: list[int]
    """Token ids of ``text`` (no special tokens added beyond those written in the text)."""
    assistant_mask: list[int]
    """1 where the token belongs to an assistant message's content (+ its end-of-turn token), else 0."""
    text: str
    """The rendered conversation."""


# ---------------------------------------------------------------- validation


def content_text(content: object, param: str) -> str:
    """A message's content as one string: a string, or OpenAI text parts joined by newlines."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            if not isinstance(part, Mapping) or part.get("type") != "text":
                raise InvalidInput("only content parts of type 'text' are supported", param=f"{param}[{j}].type")
            if not isinstance(part.get("text"), str):
                raise InvalidInput("a text content part needs a string 'text'", param=f"{param}[{j}].text")
            texts.append(part["text"])
        return "\n".join(texts)
    raise InvalidInput("content must be a string or a list of text parts", param=param)


def normalize_messages(messages: Sequence[Mapping], *, tool_turns: bool = False) -> list[dict]:
    """Validate chat messages and return them as plain ``{"role", "content"}`` dicts.

    Args:
        messages: OpenAI-style messages. ``developer`` is read as ``system``; content may be a
            string or a list of ``{"type": "text", "text": ...}`` parts (joined with newlines).
            Other keys are ignored, except with ``tool_turns``.
        tool_turns: Also accept what a tool-calling conversation holds: ``tool`` messages
            (``tool_call_id`` kept) and assistant messages with ``tool_calls`` (kept, checked;
            their content may be null).

    Returns:
        New dicts with a role among ``system``, ``user``, ``assistant`` (and ``tool``) and string content.

    Raises:
        InvalidInput: empty list, unknown role, non-text content, a malformed tool call, or a
            system message that is not first. ``param`` names the offending field, e.g.
            ``messages[2].role``.
    """
    if not isinstance(messages, Sequence) or isinstance(messages, (str, bytes)) or not messages:
        raise InvalidInput("messages must be a non-empty list", param="messages")
    roles = (*ROLES, TOOL_ROLE) if tool_turns else ROLES
    out: list[dict] = []
    for i, message in enumerate(messages):
        if hasattr(message, "model_dump"):
            message = message.model_dump()
        if not isinstance(message, Mapping):
            raise InvalidInput("each message must be an object with role and content", param=f"messages[{i}]")
        role = message.get("role")
        role = ROLE_SYNONYMS.get(role, role) if isinstance(role, str) else role
        if role not in roles:
            allowed = ", ".join((*roles, *ROLE_SYNONYMS))
            got = message.get("role")
            raise InvalidInput(f"role must be one of {allowed}; got {got!r}", param=f"messages[{i}].role")
        if role == "system" and i > 0:
            raise InvalidInput("a system message may only come first", param=f"messages[{i}].role")
        calls = message.get("tool_calls") if tool_turns and role == "assistant" else None
        content = message.get("content")
        text = "" if content is None and (calls or role == TOOL_ROLE) else content_text(content, f"messages[{i}].content")
        out.append({"role": role, "content": text})
        if calls:
            out[-1]["tool_calls"] = [_tool_call(call, f"messages[{i}].tool_calls[{j}]") for j, call in enumerate(calls)]
        if role == TOOL_ROLE and isinstance(message.get("tool_call_id"), str):
            out[-1]["tool_call_id"] = message["tool_call_id"]
    return out


def _tool_call(call: object, param: str) -> dict:
    """An assistant message's tool call as ``{"id", "type", "function": {"name", "arguments"}}``."""
    function = call.get("function") if isinstance(call, Mapping) else None
    if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
        raise InvalidInput('a tool call is {"type": "function", "function": {"name", "arguments"}}', param=param)
    arguments = function.get("arguments", "{}")
    if not isinstance(arguments, (str, Mapping)):
        raise InvalidInput("a tool call's arguments are a JSON string", param=f"{param}.function.arguments")
    return {"id": call.get("id"), "type": "function", "function": {"name": function["name"], "arguments": arguments}}


def has_tool_turns(messages: Sequence[Mapping]) -> bool:
    """Whether normalized messages hold tool calls or tool results."""
    return any(m["role"] == TOOL_ROLE or m.get("tool_calls") for m in messages)


def with_system(
    messages: Sequence[Mapping], preamble: str, *, mode: Literal["replace", "prefix"] = "replace"
) -> list[dict]:
    """Messages with a preamble override as their system message.

    Args:
        messages: chat messages (validated by ``normalize_messages``; tool turns kept).
        preamble: the system text to impose.
        mode: ``replace`` drops any existing system message; ``prefix`` puts the preamble
            before it, separated by a blank line.

    Returns:
        New normalized messages whose first one is the system message.
    """
    msgs = normalize_messages(messages, tool_turns=True)
    if msgs[0]["role"] == "system":
        old = msgs.pop(0)["content"]
        if mode == "prefix" and old:
            preamble = f"{preamble}\n\n{old}"
    return [{"role": "system", "content": preamble}, *msgs]


# ---------------------------------------------------------------- formats: text + assistant spans


def _join(pieces: list[tuple[str, bool]]) -> tuple[str, list[Span]]:
    """Concatenate ``(text, is_assistant)`` pieces; the spans of the assistant pieces."""
    text, spans, pos = [], [], 0
    for piece, assistant in pieces:
        if assistant:
            spans.append((pos, pos + len(piece)))
        text.append(piece)
        pos += len(piece)
    return "".join(text), spans


def _render_chatml(tokenizer, msgs: list[dict], add_generation_prompt: bool) -> tuple[str, list[Span]]:
    """``<|im_start|>role\\ncontent<|im_end|>\\n`` per message; ``<|im_start|>assistant\\n`` to generate."""
    pieces: list[tuple[str, bool]] = []
    for m in msgs:
        pieces.append((f"<|im_start|>{m['role']}\n", False))
        pieces.append((m["content"] + "<|im_end|>", m["role"] == "assistant"))
        pieces.append(("\n", False))
    if add_generation_prompt:
        pieces.append(("<|im_start|>assistant\n", False))
    return _join(pieces)


def _render_llama2(tokenizer, msgs: list[dict], add_generation_prompt: bool) -> tuple[str, list[Span]]:
    """``<s>[INST] <<SYS>>\\n{system}\\n<</SYS>>\\n\\n{user} [/INST] {assistant} </s>`` per exchange.

    The system message is folded into the first user turn. A user turn always ends with
    ``[/INST]``, which is the generation prompt, so ``add_generation_prompt`` changes nothing.
    """
    system = msgs[0]["content"] if msgs[0]["role"] == "system" else None
    turns = msgs[1:] if system is not None else msgs
    pieces: list[tuple[str, bool]] = []
    expected = "user"
    for k, m in enumerate(turns):
        if m["role"] != expected:
            index = k + (system is not None)
            raise InvalidInput(
                "llama2 format needs alternating user/assistant turns, user first", param=f"messages[{index}].role"
            )
        if m["role"] == "user":
            sys_block = f"<<SYS>>\n{system}\n<</SYS>>\n\n" if system is not None and k == 0 else ""
            pieces.append((f"<s>[INST] {sys_block}{m['content']} [/INST]", False))
            expected = "assistant"
        else:
            pieces.append((" ", False))
            pieces.append((f"{m['content']} </s>", True))
            expected = "user"
    if not turns and system is not None:
        pieces.append((f"<s>[INST] <<SYS>>\n{system}\n<</SYS>>\n\n [/INST]", False))
    return _join(pieces)


def _apply_template(tokenizer, msgs: list[dict], add_generation_prompt: bool, tools: list[dict] | None = None) -> str:
    return tokenizer.apply_chat_template(msgs, tools=tools, tokenize=False, add_generation_prompt=add_generation_prompt)


def _span_by_prefix(tokenizer, msgs: list[dict], i: int, text: str, tools: list[dict] | None = None) -> Span | None:
    """Assistant turn ``i`` as the text added by ``msgs[i]`` after the generation prompt.

    ``render(msgs[:i], generation prompt)`` must be a prefix of ``render(msgs[:i+1])``, itself
    a prefix of the full text; the difference, minus trailing whitespace (but never cutting
    the content), is the turn. None when the template does not render prefixes that way.
    """
    try:
        before = _apply_template(tokenizer, msgs[:i], True, tools)
        upto = _apply_template(tokenizer, msgs[: i + 1], False, tools)
    except Exception:  # noqa: BLE001  (templates may refuse partial conversations)
        return None
    if not (upto.startswith(before) and text.startswith(upto)):
        return None
    turn = upto[len(before) :]
    end = len(turn.rstrip())
    content = msgs[i]["content"]
    at = turn.find(content) if content else -1
    if at >= 0:
        end = max(end, at + len(content))
    return (len(before), len(before) + end)


def _span_by_search(tokenizer, content: str, text: str, cursor: int) -> Span | None:
    """Fallback: ``content`` (as is, else stripped) after ``cursor``, plus an end of turn just after it."""
    for needle in (content, content.strip()):
        at = text.find(needle, cursor) if needle else -1
        if at >= 0:
            break
    else:
        return None
    end = at + len(needle)
    gap = len(text[end:]) - len(text[end:].lstrip())  # templates may trim or pad the content
    for marker in (getattr(tokenizer, "eos_token", None), "<|im_end|>"):
        if isinstance(marker, str) and marker and text.startswith(marker, end + gap):
            return (at, end + gap + len(marker))
    return (at, end)


def _render_template(
    tokenizer, msgs: list[dict], add_generation_prompt: bool, tools: list[dict] | None = None
) -> tuple[str, list[Span]]:
    """The tokenizer's own chat template (given ``tools`` when it renders them); assistant spans found by rendering prefixes."""
    if not getattr(tokenizer, "chat_template", None):
        raise InvalidInput(
            "this model's tokenizer has no chat template; choose a named chat_format", param="chat_format"
        )
    try:
        text = _apply_template(tokenizer, msgs, add_generation_prompt, tools)
    except Exception as exc:  # noqa: BLE001  (jinja raise_exception → the caller's messages)
        raise InvalidInput(f"the model's chat template rejected the messages: {exc}", param="messages") from exc
    spans: list[Span] = []
    cursor = 0
    for i, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
        span = _span_by_prefix(tokenizer, msgs, i, text, tools) or _span_by_search(tokenizer, m["content"], text, cursor)
        if span is None:
            log.warning("chat template changes assistant message %d: it is left out of the mask", i)
            continue
        spans.append(span)
        cursor = span[1]
    return text, spans


FORMATS: dict[str, Callable[..., tuple[str, list[Span]]]] = {
    "template": _render_template,
    "chatml": _render_chatml,
    "llama2": _render_llama2,
}


_PROBE_TOOL = {"type": "function", "function": {"name": "probe", "description": "Probe.",
                                               "parameters": {"type": "object", "properties": {}}}}
_RENDERS_TOOLS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def renders_tools(tokenizer) -> bool:
    """Whether the tokenizer's chat template has a tools section (Qwen2.5's does, SmolLM2's not).

    Found by rendering one user turn with and without a probe tool: a template that ignores
    ``tools`` renders both alike. Remembered per tokenizer.
    """
    try:
        return _RENDERS_TOOLS[tokenizer]
    except (KeyError, TypeError):
        pass
    answer = False
    if getattr(tokenizer, "chat_template", None):
        probe = [{"role": "user", "content": "Hi"}]
        try:
            answer = _apply_template(tokenizer, probe, True, [_PROBE_TOOL]) != _apply_template(tokenizer, probe, True)
        except Exception:  # noqa: BLE001  (a template that raises on tools has no tools section)
            answer = False
    try:
        _RENDERS_TOOLS[tokenizer] = answer
    except TypeError:
        pass
    return answer


def _template_tool_turns(msgs: list[dict]) -> list[dict]:
    """Tool calls as chat templates expect them: arguments as an object (JSON text parsed), as vLLM passes them."""
    out = []
    for m in msgs:
        if m.get("tool_calls"):
            calls = []
            for call in m["tool_calls"]:
                arguments = call["function"]["arguments"]
                if isinstance(arguments, str):
                    try:
                        arguments = json.loads(arguments)
                    except ValueError:
                        pass
                calls.append({**call, "function": {**call["function"], "arguments": arguments}})
            m = {**m, "tool_calls": calls}
        out.append(m)
    return out


def available_formats() -> list[str]:
    """Names accepted as ``chat_format``."""
    return sorted(FORMATS)


# ---------------------------------------------------------------- tokenization + mask


def _mask(offsets: Sequence[Span], spans: list[Span]) -> list[int]:
    """1 for each token whose ``[start, end)`` overlaps an assistant span (both sorted by start)."""
    mask, k = [], 0
    for start, end in offsets:
        while k < len(spans) and spans[k][1] <= start:
            k += 1
        hit = k < len(spans) and start < spans[k][1] and end > spans[k][0]
        mask.append(int(hit))
    return mask


def render_chat(
    tokenizer,
    messages: Sequence[Mapping],
    *,
    chat_format: str = "template",
    add_generation_prompt: bool = True,
    functions: Mapping[str, Mapping] | None = None,
) -> RenderedPrompt:
    """Render messages into token ids and an assistant mask.

    Args:
        tokenizer: a Hugging Face fast tokenizer (offsets are needed for the mask).
        messages: OpenAI-style chat messages (see ``normalize_messages``).
        chat_format: ``template`` (the tokenizer's chat template), ``chatml`` or ``llama2``.
        add_generation_prompt: end with the opening of an assistant turn (serving); False
            to render a finished conversation (fine-tuning).
        functions: The tools described to the model, by name (``prompts.tools.tool_functions``).
            With them, or with tool calls and results in ``messages``, a ``template`` whose chat
            template has a tools section renders them itself; every other format gets the
            Hermes-style rewrite of ``prompts.tools.with_tools``.

    Returns:
        The text, its ids (tokenized once, without adding special tokens) and, per id, 1 if
        it belongs to an assistant message's content or end-of-turn marker.

    Raises:
        InvalidInput: unknown ``chat_format``, invalid messages, or messages the format or
            the template cannot render.
    """
    builder = FORMATS.get(chat_format)
    if builder is None:
        raise InvalidInput(
            f"unknown chat_format {chat_format!r}; available: {', '.join(available_formats())}", param="chat_format"
        )
    msgs = normalize_messages(messages, tool_turns=True)
    if functions or has_tool_turns(msgs):
        if chat_format == "template" and renders_tools(tokenizer):
            tools = [{"type": "function", "function": dict(f)} for f in (functions or {}).values()] or None
            text, spans = _render_template(tokenizer, _template_tool_turns(msgs), add_generation_prompt, tools)
        else:
            text, spans = builder(tokenizer, with_tools(msgs, functions or {}), add_generation_prompt)
    else:
        text, spans = builder(tokenizer, msgs, add_generation_prompt)
    enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)
    ids = list(enc["input_ids"])
    return RenderedPrompt(ids=ids, assistant_mask=_mask(enc["offset_mapping"], spans), text=text)
