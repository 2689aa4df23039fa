"""Token counts and human-readable tokenizations (for ``/v1/tokenize``, limits and costs).

Text is tokenized without adding special tokens, exactly as ``formats.render_chat`` does,
so a count here is the count the engine sees. This module knows only tokenizers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache

from atelier.prompts.formats import render_chat


def _ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def count_tokens(tokenizer, text: str) -> int:
    """Number of tokens in ``text`` (no special tokens added)."""
    return len(_ids(tokenizer, text))


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet: printable character → byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    bs = list(printable)
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def token_text(tokenizer, token_id: int) -> str:
    """One token as readable text: decoded alone; a partial UTF-8 character shown as ``\\xNN``."""
    text = tokenizer.decode([token_id], skip_special_tokens=False)
    if "\ufffd" not in text:
        return text
    raw = tokenizer.convert_ids_to_tokens(token_id)
    table = _byte_decoder()
    if isinstance(raw, str) and raw and all(ch in table for ch in raw):
        return bytes(table[ch] for ch in raw).decode("utf-8", errors="backslashreplace")
    return raw if isinstance(raw, str) else text


def tokenize(tokenizer, text: str) -> dict:
    """Ids of ``text``, each one's text, and their count.

    Args:
        tokenizer: a Hugging Face tokenizer.
        text: the text to tokenize (no special tokens added).

    Returns:
        ``{"ids": [...], "tokens": [...], "count": n}``; ``tokens[i]`` is ``ids[i]`` decoded on
        its own, so byte-level markers such as ``Ġ`` do not show.
    """
    ids = _ids(tokenizer, text)
    return {"ids": ids, "tokens": [token_text(tokenizer, i) for i in ids], "count": len(ids)}


def count_chat_tokens(
    tokenizer,
    messages: Sequence[Mapping],
    chat_format: str = "template",
    add_generation_prompt: bool = True,
) -> int:
    """Number of prompt tokens of a chat request, as rendered by ``render_chat``.

    Raises:
        InvalidInput: as ``render_chat``.
    """
    rendered = render_chat(tokenizer, messages, chat_format=chat_format, add_generation_prompt=add_generation_prompt)
    return len(rendered.ids)
