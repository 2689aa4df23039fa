"""render_chat: text layouts, assistant masks, validation; the real SmolLM2 template (slow)."""

from __future__ import annotations

from pathlib import Path

import pytest

from atelier.engine.loading import tiny_tokenizer
from atelier.errors import InvalidInput
from atelier.prompts.formats import (
    RenderedPrompt,
    available_formats,
    normalize_messages,
    render_chat,
    with_system,
)

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Capital of Japan?"},
    {"role": "assistant", "content": "Tokyo. Café ☕"},
    {"role": "user", "content": "And France?"},
    {"role": "assistant", "content": "Paris.\n"},
]


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def masked_runs(tok, rendered: RenderedPrompt) -> list[str]:
    """The masked tokens decoded, one string per contiguous run."""
    runs, current = [], []
    for i, m in zip(rendered.ids, rendered.assistant_mask):
        if m:
            current.append(i)
        elif current:
            runs.append(tok.decode(current))
            current = []
    if current:
        runs.append(tok.decode(current))
    return runs


def test_available_formats():
    assert available_formats() == ["chatml", "llama2", "template"]


@pytest.mark.parametrize("chat_format", ["template", "chatml"])
def test_mask_covers_exactly_assistant_contents_multi_turn(tok, chat_format):
    r = render_chat(tok, CONVERSATION, chat_format=chat_format, add_generation_prompt=False)
    assert len(r.ids) == len(r.assistant_mask)
    assert masked_runs(tok, r) == ["Tokyo. Café ☕<|im_end|>", "Paris.\n<|im_end|>"]
    assert tok.decode(r.ids) == r.text
    assert r.text.endswith("Paris.\n<|im_end|>\n")


def test_template_and_chatml_agree_on_a_chatml_tokenizer(tok):
    a = render_chat(tok, CONVERSATION[:4], chat_format="template")
    b = render_chat(tok, CONVERSATION[:4], chat_format="chatml")
    assert a == b


def test_template_equals_apply_chat_template(tok):
    r = render_chat(tok, CONVERSATION[:4])
    text = tok.apply_chat_template(CONVERSATION[:4], tokenize=False, add_generation_prompt=True)
    assert r.text == text
    assert r.ids == tok(text, add_special_tokens=False)["input_ids"]


def test_generation_prompt_at_the_end(tok):
    r = render_chat(tok, CONVERSATION[:2])
    assert r.text.endswith("<|im_start|>user\nCapital of Japan?<|im_end|>\n<|im_start|>assistant\n")
    assert sum(r.assistant_mask) == 0
    tail = tok("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    assert r.ids[-len(tail) :] == tail
    no_prompt = render_chat(tok, CONVERSATION[:2], add_generation_prompt=False)
    assert no_prompt.text == r.text[: -len("<|im_start|>assistant\n")]


def test_chatml_layout_exact(tok):
    r = render_chat(tok, [{"role": "user", "content": "Hi"}], chat_format="chatml")
    assert r.text == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


def test_llama2_layout_exact(tok):
    r = render_chat(tok, CONVERSATION[:4], chat_format="llama2")
    assert r.text == (
        "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nCapital of Japan? [/INST] Tokyo. Café ☕ </s>"
        "<s>[INST] And France? [/INST]"
    )
    assert masked_runs(tok, r) == ["Tokyo. Café ☕ </s>"]


def test_llama2_without_system_has_no_sys_block(tok):
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    r = render_chat(tok, msgs, chat_format="llama2", add_generation_prompt=False)
    assert r.text == "<s>[INST] Hi [/INST] Hello </s>"
    assert masked_runs(tok, r) == ["Hello </s>"]


def test_llama2_needs_alternating_turns(tok):
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    with pytest.raises(InvalidInput) as err:
        render_chat(tok, msgs, chat_format="llama2")
    assert err.value.param == "messages[2].role"


def test_mask_falls_back_to_search_when_prefixes_differ():
    tok = tiny_tokenizer()
    # The header depends on the whole conversation, so renders of prefixes are not prefixes.
    tok.chat_template = "[{{ messages | length }}]" + tok.chat_template
    r = render_chat(tok, CONVERSATION, add_generation_prompt=False)
    assert r.text.startswith("[5]<|im_start|>system")
    assert masked_runs(tok, r) == ["Tokyo. Café ☕<|im_end|>", "Paris.\n<|im_end|>"]


@pytest.mark.parametrize("header", ["", "[{{ messages | length }}]"])
def test_mask_with_a_template_that_trims_content(header):
    tok = tiny_tokenizer()
    tok.chat_template = header + (
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content | trim }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    r = render_chat(tok, CONVERSATION, add_generation_prompt=False)
    assert masked_runs(tok, r) == ["Tokyo. Café ☕<|im_end|>", "Paris.<|im_end|>"]


def test_template_errors_become_invalid_input():
    tok = tiny_tokenizer()
    tok.chat_template = "{{ raise_exception('no system please') if messages[0]['role'] == 'system' }}"
    with pytest.raises(InvalidInput) as err:
        render_chat(tok, CONVERSATION)
    assert err.value.param == "messages"
    tok.chat_template = None
    with pytest.raises(InvalidInput) as err:
        render_chat(tok, CONVERSATION)
    assert err.value.param == "chat_format"


def test_unknown_format(tok):
    with pytest.raises(InvalidInput) as err:
        render_chat(tok, CONVERSATION, chat_format="alpaca")
    assert err.value.param == "chat_format"


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        ([], "messages"),
        ("hello", "messages"),
        ([{"role": "user", "content": "a"}, "b"], "messages[1]"),
        ([{"role": "user", "content": "a"}, {"role": "function", "content": "b"}], "messages[1].role"),
        ([{"role": "assistant", "content": None, "tool_calls": [{"type": "function"}]}], "messages[0].tool_calls[0]"),
        ([{"content": "a"}], "messages[0].role"),
        ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}, {"role": "system", "content": "c"}], "messages[2].role"),
        ([{"role": "user", "content": None}], "messages[0].content"),
        ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}], "messages[0].content[0].type"),
        ([{"role": "user", "content": [{"type": "text", "text": 3}]}], "messages[0].content[0].text"),
    ],
)
def test_validation_names_the_param(tok, messages, param):
    with pytest.raises(InvalidInput) as err:
        render_chat(tok, messages)
    assert err.value.param == param


def test_normalize_accepts_developer_and_content_parts():
    msgs = normalize_messages(
        [
            {"role": "developer", "content": "Rules."},
            {"role": "user", "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}], "name": "x"},
        ]
    )
    assert msgs == [{"role": "system", "content": "Rules."}, {"role": "user", "content": "one\ntwo"}]


def test_with_system_replaces_or_prefixes():
    msgs = [{"role": "system", "content": "Old."}, {"role": "user", "content": "Hi"}]
    assert with_system(msgs, "New.") == [{"role": "system", "content": "New."}, {"role": "user", "content": "Hi"}]
    assert with_system(msgs, "New.", mode="prefix")[0] == {"role": "system", "content": "New.\n\nOld."}
    assert with_system(msgs[1:], "New.") == [{"role": "system", "content": "New."}, {"role": "user", "content": "Hi"}]
    assert msgs[0]["content"] == "Old."  # the input is not modified


@pytest.mark.slow
def test_real_smollm2_template():
    from atelier.catalog import Catalog
    from atelier.engine.loading import load_tokenizer

    try:
        tok = load_tokenizer(Catalog.load().get("smollm2-135m-instruct"), Path("~/.cache/atelier").expanduser())
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"bundled SmolLM2 not available: {exc}")
    msgs = CONVERSATION[1:4]  # no system: the template injects its own
    text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    r = render_chat(tok, msgs)
    assert "You are a helpful AI assistant named SmolLM" in r.text
    assert r.text == text
    assert r.ids == tok(text, add_special_tokens=False)["input_ids"]
    assert masked_runs(tok, r) == ["Tokyo. Café ☕<|im_end|>"]
    full = render_chat(tok, CONVERSATION, add_generation_prompt=False)
    assert masked_runs(tok, full) == ["Tokyo. Café ☕<|im_end|>", "Paris.\n<|im_end|>"]
