"""Hermes-style function calling: tools described, tool turns rewritten, calls parsed back, forced schemas."""

from __future__ import annotations

import json

import jsonschema
import pytest

from atelier.errors import InvalidInput
from atelier.prompts.formats import normalize_messages
from atelier.prompts.tools import ToolCall, call_schema, parse_tool_calls, tool_functions, with_tools

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
TIME = {"type": "function", "function": {"name": "get_time"}}


def test_tools_are_checked_as_openai_does():
    functions = tool_functions([WEATHER, TIME])
    assert list(functions) == ["get_weather", "get_time"]
    assert functions["get_time"]["parameters"] == {"type": "object", "properties": {}}
    for tools, param in (([{"type": "retrieval"}], "tools[0].type"),
                         ([WEATHER, WEATHER], "tools[1].function.name"),
                         ([{"type": "function", "function": {"name": "a b"}}], "tools[0].function.name"),
                         ([{"type": "function", "function": {"name": "f", "parameters": []}}],
                          "tools[0].function.parameters")):
        with pytest.raises(InvalidInput) as refused:
            tool_functions(tools)
        assert refused.value.param == param


LOOP = [
    {"role": "user", "content": "Weather in Paris and Rome?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
        {"id": "c2", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}}]},
    {"role": "tool", "tool_call_id": "c1", "content": "21 C"},
    {"role": "tool", "tool_call_id": "c2", "content": "25 C"},
]  # fmt: skip
"""A tool-calling loop: two parallel calls and their results (also rendered natively in test_native_tools)."""


def test_a_tool_calling_conversation_becomes_plain_turns():
    messages = [{"role": "system", "content": "Be brief."}, *LOOP]
    out = with_tools(normalize_messages(messages, tool_turns=True), tool_functions([WEATHER]))
    assert [m["role"] for m in out] == ["system", "user", "assistant", "user"]
    assert out[0]["content"].startswith("Be brief.\n\n") and '"name": "get_weather"' in out[0]["content"]
    assert out[2]["content"].count("<tool_call>") == 2 and '"city": "Rome"' in out[2]["content"]
    assert out[3]["content"] == "<tool_response>\n21 C\n</tool_response>\n<tool_response>\n25 C\n</tool_response>"
    assert with_tools([{"role": "user", "content": "hi"}], {}) == [{"role": "user", "content": "hi"}]


def test_calls_are_parsed_out_of_text_and_bad_blocks_stay_text():
    text = 'Let me check.\n<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
    content, calls = parse_tool_calls(text)
    assert content == "Let me check." and calls == [ToolCall("get_weather", '{"city": "Paris"}')]
    assert parse_tool_calls("<tool_call>not json</tool_call>") == ("<tool_call>not json</tool_call>", [])
    assert parse_tool_calls("plain answer") == ("plain answer", [])


def test_a_forced_call_schema_accepts_only_calls_with_valid_arguments():
    functions = tool_functions([WEATHER, TIME])
    named = call_schema(functions, "get_weather")
    jsonschema.validate({"name": "get_weather", "arguments": {"city": "Paris"}}, named)
    for bad in ({"name": "get_time", "arguments": {}}, {"name": "get_weather", "arguments": {}}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, named)
    either = call_schema(functions)
    jsonschema.validate({"name": "get_time", "arguments": {}}, either)
    assert json.loads(json.dumps(either))["anyOf"][0]["properties"]["name"] == {"const": "get_weather"}


def test_tool_turns_are_checked_like_every_message():
    with pytest.raises(InvalidInput) as refused:
        normalize_messages([{"role": "user", "content": "hi"}, {"role": "tool", "content": [{"type": "image_url"}]}],
                           tool_turns=True)
    assert refused.value.param == "messages[1].content[0].type"
    with pytest.raises(InvalidInput):
        normalize_messages([{"role": "assistant", "content": [{"type": "text"}], "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}], tool_turns=True)
    with pytest.raises(InvalidInput) as refused:
        normalize_messages([{"role": "assistant", "content": None, "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": 3}}]}], tool_turns=True)
    assert refused.value.param == "messages[0].tool_calls[0].function.arguments"
    with pytest.raises(InvalidInput) as refused:
        normalize_messages([{"role": "user", "content": "hi"}, {"role": "tool", "content": "x"}])
    assert refused.value.param == "messages[1].role"  # tool turns only where the caller accepts them
