"""Tools rendered by the model's own chat template when it has a tools section (Qwen2.5-style), Hermes otherwise."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from atelier.engine.loading import tiny_tokenizer
from atelier.prompts.formats import render_chat, renders_tools
from atelier.prompts.tools import TOOLS_PROMPT, parse_tool_calls, tool_functions
from tests.unit.prompts.test_tools import LOOP, WEATHER

TEMPLATE = (Path(__file__).parent / "templates" / "qwen2_5_style.jinja").read_text()
HERMES_LINE = TOOLS_PROMPT.splitlines()[0]


@pytest.fixture(scope="module")
def qwen_tok():
    tok = tiny_tokenizer()
    tok.chat_template = TEMPLATE
    return tok


def test_a_template_with_a_tools_section_is_recognised(qwen_tok):
    assert renders_tools(qwen_tok)
    assert not renders_tools(tiny_tokenizer())  # ChatML without tools: Hermes text instead
    no_template = tiny_tokenizer()
    no_template.chat_template = None
    assert not renders_tools(no_template)


def test_the_models_own_template_renders_tools_calls_and_results(qwen_tok):
    text = render_chat(qwen_tok, LOOP, functions=tool_functions([WEATHER])).text
    assert "# Tools" in text and HERMES_LINE not in text
    signature = json.loads(text.split("<tools>\n")[1].split("\n</tools>")[0])
    assert signature["function"]["name"] == "get_weather" and signature["function"]["parameters"]["required"] == ["city"]
    # the calls as the template writes them (arguments as an object), read back by the same parser
    turn = text.split("<|im_start|>assistant")[1].split("<|im_end|>")[0]
    assert [c.name for c in parse_tool_calls(turn)[1]] == ["get_weather", "get_weather"]
    assert '"arguments": {"city": "Rome"}' in turn
    # parallel results: one user turn with both responses, then the generation prompt
    assert text.endswith("<|im_start|>user\n<tool_response>\n21 C\n</tool_response>\n<tool_response>\n25 C\n"
                         "</tool_response><|im_end|>\n<|im_start|>assistant\n")


def test_named_formats_and_templates_without_tools_get_the_hermes_block(qwen_tok):
    functions = tool_functions([WEATHER])
    for tok, chat_format in ((qwen_tok, "chatml"), (tiny_tokenizer(), "template")):
        text = render_chat(tok, LOOP, chat_format=chat_format, functions=functions).text
        assert HERMES_LINE in text and "# Tools" not in text
        assert "<|im_start|>user\n<tool_response>\n21 C\n</tool_response>\n<tool_response>\n25 C" in text


def test_tool_turns_without_tools_render_and_plain_chats_are_unchanged(qwen_tok):
    text = render_chat(qwen_tok, LOOP).text  # tool_choice "none": history kept, no tools section
    assert "# Tools" not in text and '"arguments": {"city": "Paris"}' in text
    plain = [{"role": "user", "content": "Hi"}]
    assert render_chat(qwen_tok, plain).text == qwen_tok.apply_chat_template(plain, tokenize=False,
                                                                             add_generation_prompt=True)
