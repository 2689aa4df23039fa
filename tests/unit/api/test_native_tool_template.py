"""Chat with tools on a model whose chat template has a tools section: the template renders them, end to end."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest

from atelier.catalog import BUILTIN, Catalog, ModelSource, ModelSpec
from atelier.engine.client import LocalEngine
from atelier.engine.loading import tiny_loaded
from atelier.prompts.formats import render_chat
from atelier.prompts.tools import tool_functions

TEMPLATE = (Path(__file__).parents[1] / "prompts" / "templates" / "qwen2_5_style.jinja").read_text()
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string", "maxLength": 2}}, "required": ["city"]}}}
ASK = [{"role": "user", "content": "Weather in Paris?"}]


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    """The tiny model with room for the template's tools block (the byte tokenizer spends a token a byte)."""
    long = ModelSpec(name="tiny", kind="chat", source=ModelSource(path="/nonexistent"), context_length=1024,
                     max_output_tokens=64)
    return Catalog([*BUILTIN, long])


@pytest.fixture(scope="module")
def loaded():
    model = tiny_loaded("tiny")
    model.tokenizer.chat_template = TEMPLATE
    return model


@pytest.fixture(scope="module")
def engine(catalog, api_settings, loaded) -> Iterator[LocalEngine]:
    eng = LocalEngine(catalog, api_settings, preloaded={"tiny": loaded})
    yield eng
    eng.close()


def test_a_forced_call_is_prompted_by_the_models_template_and_validates(client, loaded):
    body = {"model": "tiny", "messages": ASK, "tools": [WEATHER], "max_tokens": 64, "temperature": 0,
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    choice = response.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"  # the call's grammar fits in 64 byte tokens
    [call] = choice["message"]["tool_calls"]
    assert call["function"]["name"] == "get_weather"
    jsonschema.validate(json.loads(call["function"]["arguments"]), WEATHER["function"]["parameters"])
    functions = tool_functions([WEATHER])
    native = render_chat(loaded.tokenizer, ASK, functions=functions)
    hermes = render_chat(loaded.tokenizer, ASK, chat_format="chatml", functions=functions)
    assert "# Tools" in native.text and len(native.ids) != len(hermes.ids)
    assert response.json()["usage"]["prompt_tokens"] == len(native.ids)


def test_a_tool_calling_history_is_answered(client, loaded):
    messages = [*ASK,
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "21 C, sunny"}]  # fmt: skip
    response = client.post("/v1/chat/completions", json={"model": "tiny", "messages": messages, "tools": [WEATHER],
                                                        "max_tokens": 4})
    assert response.status_code == 200, response.text
    expected = render_chat(loaded.tokenizer, messages, functions=tool_functions([WEATHER]))
    assert "<tool_response>\n21 C, sunny\n</tool_response>" in expected.text
    assert response.json()["usage"]["prompt_tokens"] == len(expected.ids)
