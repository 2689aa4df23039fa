"""The topic task of the fine-tuning benchmark: a BBC News article's topic from its title and lead.

The user turn is the instruction, the title and the first two sentences; the answer is one of
``business, entertainment, politics, sport, tech``. Scores over held-out articles: loss and
token accuracy over the answer's tokens (the label and its end-of-turn token, as the recipe's
validation), and task accuracy: the label whose **first token** is the most probable at the
answer position (the five labels start with five distinct tokens, so this is greedy decoding
restricted to the label set; no free generation). k-shot prompts put k training examples
before the query as earlier user/assistant turns (``atelier.prompts.templates.k_shot``), one per
topic for k = 5; their shared prefix is run once and its KV cache reused.
"""

from __future__ import annotations

import time
from collections import Counter

from bench.finetune_common import (
    TOPICS,
    Article,
    completion_scores,
    examples_of,
    k_shot_scores,
)

INSTRUCTION = "Classify the topic of this BBC news article as one of: business, entertainment, politics, sport, tech."


def prompt_of(article: Article) -> str:
    """The user turn: the instruction, the title and the first two sentences of the article."""
    return f"{INSTRUCTION}\n\nTitle: {article.title}\n{article.lead}"


def pairs_of(articles: list[Article]) -> list[tuple[str, str]]:
    """(prompt, answer) of each article."""
    return [(prompt_of(a), a.topic) for a in articles]


def pick_shots(train: list[Article], k: int) -> list[Article]:
    """``k`` training articles, round-robin over the topics (one per topic for k = 5), in the split's order."""
    queues = {t: [x for x in train if x.topic == t] for t in TOPICS}
    shots: list[Article] = []
    while len(shots) < k and any(queues.values()):
        for t in TOPICS:
            if queues[t] and len(shots) < k:
                shots.append(queues[t].pop(0))
    return shots


def label_first_ids(tokenizer) -> list[int]:
    """The first token of each label as the assistant's answer starts (distinct, or scoring is ambiguous)."""
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"][0] for t in TOPICS]
    if len(set(ids)) != len(ids):
        raise RuntimeError(f"the labels do not start with distinct tokens: {dict(zip(TOPICS, ids))}")
    return ids


def _report(held: list[Article], picks: list[str], extra: dict) -> dict:
    confusion = {t: Counter() for t in TOPICS}
    for a, p in zip(held, picks):
        confusion[a.topic][p] += 1
    return {**extra, "task_accuracy": sum(a.topic == p for a, p in zip(held, picks)) / len(held),
            "confusion": {t: dict(c) for t, c in confusion.items()}}


def evaluate_zero_shot(model, tokenizer, chat_format: str, held: list[Article]) -> dict:
    """Scores of ``model`` (adapters injected or not) on the held-out articles, batched."""
    t0 = time.perf_counter()
    out = completion_scores(model, examples_of(pairs_of(held), tokenizer, chat_format), label_first_ids(tokenizer))
    picks = [TOPICS[i] for i in out.pop("picks")]
    return _report(held, picks, {**out, "seconds": time.perf_counter() - t0})


def evaluate_k_shot(model, tokenizer, chat_format: str, held: list[Article], shots: list[Article]) -> dict:
    """Scores with ``shots`` as earlier turns (only the query's answer carries labels), batch 1 on a shared prefix."""
    t0 = time.perf_counter()
    out = k_shot_scores(model, tokenizer, chat_format, pairs_of(shots), pairs_of(held), label_first_ids(tokenizer))
    picks = [TOPICS[i] for i in out.pop("picks")]
    return _report(held, picks, {**out, "shots": [s.topic for s in shots], "seconds": time.perf_counter() - t0})
