"""Function calling: OpenAI ``tools`` checked, and Hermes-style text for chat templates without tools.

A model whose chat template has a tools section (Qwen2.5's) renders tools and tool turns
itself (``prompts.formats.render_chat`` finds out); for every other model and named format:
the tools go into the system message as a ``<tools>`` block of their JSON signatures, with
the instruction to answer a call as ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``
(the convention NousResearch's Hermes models and Qwen2.5's template use). An assistant turn
that called tools is written back with those tags, and a ``tool`` message becomes a user turn
holding ``<tool_response>…</tool_response>``, so any chat format renders a tool-calling
conversation. :func:`parse_tool_calls` reads calls back out of generated text;
:func:`call_schema` is the JSON Schema a forced call must match (the API constrains the
output to it, so its arguments always validate against the function's ``parameters``).
Knows nothing about models or HTTP: messages and text in, messages and text out.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from atelier.errors import InvalidInput

TOOLS_PROMPT = (
    "You may call functions to answer. Their signatures are in the <tools></tools> block below.\n"
    "<tools>\n{tools}\n</tools>\n"
    "To call a function, answer with one line per call, each a JSON object with the function's "
    "name and its arguments inside <tool_call></tool_call> tags:\n"
    '<tool_call>{{"name": "<function name>", "arguments": {{<arguments>}}}}</tool_call>\n'
    "Otherwise answer the user normally."
)
"""The system block that describes the tools (``{tools}``: one JSON signature per line)."""

_CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.S)


@dataclass(frozen=True)
class ToolCall:
    """A call the model made: the function's name and its arguments as JSON text."""

    name: str
    arguments: str


def tool_functions(tools: Sequence[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    """The functions of an OpenAI ``tools`` list by name, checked as OpenAI checks them.

    Raises:
        InvalidInput: A tool that is not ``{"type": "function", "function": {"name", ...}}``,
            a bad name, or two functions of one name (``param`` names the entry).
    """
    functions: dict[str, Mapping[str, Any]] = {}
    for i, tool in enumerate(tools):
        if not isinstance(tool, Mapping) or tool.get("type") != "function":
            raise InvalidInput("only tools of type 'function' are supported", param=f"tools[{i}].type")
        function = tool.get("function")
        if not isinstance(function, Mapping):
            raise InvalidInput("a function tool needs a 'function' object", param=f"tools[{i}].function")
        name = function.get("name")
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name):
            raise InvalidInput("a function name is 1 to 64 of a-z A-Z 0-9 _ -", param=f"tools[{i}].function.name")
        parameters = function.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(parameters, Mapping):
            raise InvalidInput("parameters must be a JSON Schema object", param=f"tools[{i}].function.parameters")
        if name in functions:
            raise InvalidInput(f"two functions are named {name!r}", param=f"tools[{i}].function.name")
        functions[name] = {**function, "parameters": parameters}
    return functions


def with_tools(messages: Sequence[Mapping[str, Any]], functions: Mapping[str, Mapping[str, Any]]) -> list[dict]:
    """The conversation as plain system/user/assistant turns, the tools described in the system turn.

    Args:
        messages: Messages as ``prompts.formats.normalize_messages(..., tool_turns=True)``
            returns them: ``assistant`` turns may hold ``tool_calls``, ``tool`` turns hold results.
        functions: The request's functions (``tool_functions``); none leaves no tools block.

    Returns:
        Messages that any chat format renders.
    """
    out: list[dict] = []
    for message in messages:
        role, content = message["role"], message["content"]
        if role == "assistant" and message.get("tool_calls"):
            calls = [_call_text(call) for call in message["tool_calls"]]
            out.append({"role": "assistant", "content": "\n".join(([content] if content else []) + calls)})
        elif role == "tool":
            response = f"<tool_response>\n{content}\n</tool_response>"
            previous = out[-1] if out else None
            if previous and previous["role"] == "user" and str(previous["content"]).startswith("<tool_response>"):
                previous["content"] += "\n" + response  # parallel calls' results: one turn
            else:
                out.append({"role": "user", "content": response})
        else:
            out.append({"role": role, "content": content})
    if functions:
        block = TOOLS_PROMPT.format(tools="\n".join(json.dumps({"type": "function", "function": f}, sort_keys=True)
                                                    for f in functions.values()))
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{block}"}
        else:
            out.insert(0, {"role": "system", "content": block})
    return out


def _call_text(call: Mapping[str, Any]) -> str:
    function = call["function"]
    arguments = function.get("arguments") or "{}"
    try:
        arguments = json.loads(arguments) if isinstance(arguments, str) else arguments
    except ValueError:
        pass
    return "<tool_call>" + json.dumps({"name": function["name"], "arguments": arguments}) + "</tool_call>"


def parse_tool_calls(text: str) -> tuple[str, list[ToolCall]]:
    """The calls written in ``text`` and the text left around them.

    A ``<tool_call>`` block whose content is not ``{"name": <str>, "arguments": <object>}``
    is not a call: it stays in the text.
    """
    calls: list[ToolCall] = []
    kept: list[str] = []
    cursor = 0
    for match in _CALL.finditer(text):
        call = parse_call(match.group(1))
        if call is None:
            continue
        kept.append(text[cursor:match.start()])
        cursor = match.end()
        calls.append(call)
    kept.append(text[cursor:])
    return "".join(kept).strip() if calls else text, calls


def parse_call(text: str) -> ToolCall | None:
    """A call written as ``{"name": ..., "arguments": {...}}``, or None."""
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        return None
    arguments = data.get("arguments", data.get("parameters", {}))
    if not isinstance(arguments, dict):
        return None
    return ToolCall(data["name"], json.dumps(arguments))


def call_schema(functions: Mapping[str, Mapping[str, Any]], only: str | None = None) -> dict[str, Any]:
    """The JSON Schema of one call ``{"name", "arguments"}`` to ``only``, or to any of ``functions``."""
    names = [only] if only is not None else list(functions)
    options = [
        {"type": "object", "properties": {"name": {"const": name}, "arguments": functions[name]["parameters"]},
         "required": ["name", "arguments"], "additionalProperties": False}
        for name in names
    ]  # fmt: skip
    return options[0] if len(options) == 1 else {"anyOf": options}
