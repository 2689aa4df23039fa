"""The headline task of the fine-tuning benchmark: a BBC News article's title from its first two sentences.

A short generation task beside the topic classification: the user turn is an instruction and
the article's lead (the title is not shown), the answer is the title (five words on average).
Articles come from the same fixed-seed split as the topics (the first N of its training part,
the first M of its held-out part); a held-out article whose title is also a training title
(31 titles repeat in the corpus) is dropped.

Scores: ROUGE-L F1 (``atelier.tuning.scoring``: Google's rouge-score, stemmed) and exact match
of the greedy answer (``max_tokens`` 24), generated as the service's ``evaluate`` job does
(``atelier.jobs.evaluate.Evaluator`` on Atelier's own engine, ``LocalEngine``, the adapter added
to a slot over the shared base); loss and token accuracy of the reference title (and its
end-of-turn token) from a batched forward pass of the float model with the adapter injected, as
the recipe's validation (the engine's prompt-log-probability path gives the same numbers but
computes the whole vocabulary at every prompt position: 6x slower with 5 shots). The base is
also scored k-shot: k training articles before every prompt as earlier user/assistant turns.

``greedy_answers`` is the same greedy decoding with ``transformers`` ``generate`` on a model
being trained (the defaults study scores each epoch that way without building an engine).
"""

from __future__ import annotations

import time
from pathlib import Path

from atelier.tuning.scoring import normalize
from bench.finetune_common import (
    CHAT,
    Article,
    completion_scores,
    examples_of,
    k_shot_scores,
)

INSTRUCTION = "Write the headline of this BBC news article (a few words). Answer with the headline only."
GENERATION_METRICS = ["rouge_l", "exact_match"]


def prompt_of(article: Article) -> str:
    """The user turn: the instruction and the first two sentences (no title)."""
    return f"{INSTRUCTION}\n\n{article.lead}"


def pairs_of(articles: list[Article]) -> list[tuple[str, str]]:
    """(prompt, answer) of each article."""
    return [(prompt_of(a), a.title) for a in articles]


def split(train: list[Article], held: list[Article], n_train: int, n_heldout: int) -> tuple[list, list]:
    """The first ``n_train`` training articles and the first ``n_heldout`` held-out ones whose title is not a training title."""
    train = train[:n_train]
    titles = {normalize(a.title) for a in train}
    return train, [a for a in held if normalize(a.title) not in titles][:n_heldout]


def _items(articles: list[Article]):
    from atelier.jobs.evaluate import Item

    return [Item([{"role": "user", "content": p}], t, [{"role": "user", "content": p}, {"role": "assistant", "content": t}])
            for p, t in pairs_of(articles)]


def open_engine(threads: int, quantization: str = "none"):
    """Atelier's in-process engine serving the bundled model (float weights unless told)."""
    from atelier.catalog import Catalog
    from atelier.engine.client import LocalEngine
    from atelier.settings import Settings

    catalog = Catalog.load()
    return LocalEngine(catalog, Settings(threads=threads, quantization=quantization)), catalog.get(CHAT)


def generate_scores(engine, spec, held: list[Article], *, shots: list[Article] = (), adapter_dir: Path | None = None,
                    key: str = "adapter", max_tokens: int = 24) -> dict:
    """ROUGE-L and exact match of the greedy answers, generated as the service's ``evaluate`` job does (its
    ``Evaluator`` on the engine, the adapter in a slot); the base k-shot with ``shots``."""
    from atelier.jobs.evaluate import Evaluator
    from atelier.prompts.templates import k_shot

    t0 = time.perf_counter()
    slot = engine.add_adapter(spec.name, key, Path(adapter_dir)) if adapter_dir else None
    try:
        prefix = k_shot(pairs_of(list(shots)), "")[:-1] if shots else None
        evaluator = Evaluator(engine, spec.name, engine.tokenizer(spec.name), spec.chat_format, spec.context_length,
                              max_tokens=max_tokens)
        report = evaluator.evaluate(_items(held), GENERATION_METRICS, slot=slot, prefix=prefix)
    finally:
        if slot is not None:
            engine.remove_adapter(slot)
    report["generation_seconds"] = time.perf_counter() - t0
    return report


def likelihood_scores(model, tokenizer, chat_format: str, held: list[Article], shots: list[Article] = ()) -> dict:
    """Loss and token accuracy of the reference titles under ``model`` (adapters injected or not), batched
    (k-shot: on a shared prefix), as the recipe's validation computes them."""
    t0 = time.perf_counter()
    if shots:
        out = k_shot_scores(model, tokenizer, chat_format, pairs_of(list(shots)), pairs_of(held))
    else:
        out = completion_scores(model, examples_of(pairs_of(held), tokenizer, chat_format))
    out.pop("picks")
    return {**out, "likelihood_seconds": time.perf_counter() - t0}


def greedy_answers(model, tokenizer, chat_format: str, eos_ids, prompts: list[str], max_new_tokens: int = 24,
                   batch_size: int = 32) -> list[str]:
    """Greedy answers of ``model`` (adapters injected or not) to single-turn prompts, left-padded batches."""
    import torch

    from atelier.prompts.formats import render_chat

    was_training = model.training
    model.eval()
    answers: list[str] = []
    eos = sorted(eos_ids)
    try:
        for start in range(0, len(prompts), batch_size):
            rendered = [render_chat(tokenizer, [{"role": "user", "content": p}], chat_format=chat_format).ids
                        for p in prompts[start : start + batch_size]]
            width = max(len(r) for r in rendered)
            ids = torch.tensor([[eos[0]] * (width - len(r)) + list(r) for r in rendered])  # (B, T) left-padded
            attention = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rendered])  # (B, T)
            with torch.no_grad():
                out = model.generate(input_ids=ids, attention_mask=attention, max_new_tokens=max_new_tokens,
                                     do_sample=False, eos_token_id=eos, pad_token_id=eos[0])  # (B, T + new)
            for row in out[:, width:].tolist():
                row = row[: next((i for i, t in enumerate(row) if t in eos_ids), len(row))]
                answers.append(tokenizer.decode(row, skip_special_tokens=True).strip())
    finally:
        model.train(was_training)
    return answers


def rouge_l(predictions: list[str], references: list[str]) -> float:
    from atelier.tuning.scoring import score

    return score(predictions, references, ["rouge_l"])["rouge_l"]
