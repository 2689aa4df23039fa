"""Shared pieces of the tuning tests: one torch thread (faster on a shared 2-core box), tiny data."""

from __future__ import annotations

import json

import pytest
import torch

from atelier.engine.loading import tiny_loaded
from atelier.tuning.data import load_examples, split_examples

WORDS = ("cat", "dog", "sun", "map")


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def loaded():
    return tiny_loaded()


def memorization_file(n: int) -> bytes:
    """``n`` prompt/completion lines mapping a numbered word to one of four answers."""
    return "\n".join(
        json.dumps({"prompt": f"word {i}", "completion": WORDS[i % len(WORDS)]}) for i in range(n)
    ).encode()


@pytest.fixture
def split(loaded):
    """13 examples: 10 to train on, 3 held out (seed 0)."""
    examples = load_examples(memorization_file(13), loaded.tokenizer, context_length=256)
    return split_examples(examples, 0.2, seed=0)
