"""Token counts and readable tokenizations."""

from __future__ import annotations

import pytest

from atelier.engine.loading import tiny_tokenizer
from atelier.errors import InvalidInput
from atelier.prompts.formats import render_chat
from atelier.prompts.tokens import count_chat_tokens, count_tokens, token_text, tokenize


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.mark.parametrize("text", ["", "hello world", "Café ☕ naïve", "<|im_start|>user\nhi<|im_end|>"])
def test_count_equals_len_ids(tok, text):
    out = tokenize(tok, text)
    assert out["count"] == len(out["ids"]) == len(out["tokens"]) == count_tokens(tok, text)
    assert out["ids"] == tok(text, add_special_tokens=False)["input_ids"]


def test_tokens_are_readable(tok):
    out = tokenize(tok, "a b\n<|im_end|>")
    assert out["tokens"] == ["a", " ", "b", "\n", "<|im_end|>"]
    assert not any("Ġ" in t or "Ċ" in t for t in out["tokens"])


def test_partial_utf8_bytes_shown_escaped(tok):
    out = tokenize(tok, "é")
    assert out["tokens"] == ["\\xc3", "\\xa9"]
    assert token_text(tok, out["ids"][0]) == "\\xc3"


@pytest.mark.parametrize("chat_format", ["template", "chatml", "llama2"])
def test_count_chat_tokens(tok, chat_format):
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "Hi"}]
    n = count_chat_tokens(tok, msgs, chat_format)
    assert n == len(render_chat(tok, msgs, chat_format=chat_format).ids)
    assert n == count_tokens(tok, render_chat(tok, msgs, chat_format=chat_format).text)


def test_count_chat_tokens_validates(tok):
    with pytest.raises(InvalidInput):
        count_chat_tokens(tok, [], "template")
