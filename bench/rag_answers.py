"""Knowledge-base answer quality on the bundled chat model: the three answer modes against LangChain's RAG prompt.

The labelled set is the Debian FAQ (Debian packages ``debian-faq``/``debian-faq-fr``): its
aligned questions (the same section numbers in English and French), each with its answer
section, one document per section, chunked and embedded as ``bench/rag.py`` does
(``multilingual-e5-small``, 256-token chunks, Chroma + SQLite FTS5). The questions are split
in two halves by ``bench/rag.held_out`` (a hash of the English question, so the same
sections in every direction): prompts and defaults are tuned with ``--split tuning``, the
tables reported are on the held-out half (the first ``--questions`` of it). Directions: EN→EN, FR→FR (the French FAQ) and FR→EN (French questions, English FAQ).

For each question: ``hybrid`` retrieval, the relevance gate, then an answer in each mode,
through the code the API runs (``rag.grounded_prompt``, ``cloud.grounding.answer_shape``,
``guarded`` with ``markup_tokens``, ``read_answer``, ``rag.extractive``) on ``LocalEngine`` with the bundled
``smollm2-135m-instruct``, greedy:

- ``generative``, ``structured`` (the citation JSON Schema through the constrained decoder)
  and ``extractive`` (no model);
- **baseline**: LangChain's RAG tutorial prompt (``rlm/rag-prompt`` of the LangChain Hub,
  quoted below; the passages joined by blank lines as the tutorial's ``format_docs`` does)
  on the same model and passages, with the same token limit and no stop sequences (what a
  LangChain user gets). It asks for no citations: its citation column is empty.

Measures, per direction and mode: **retrieved** (the gold section is among the passages:
the ceiling of citation accuracy), **cites gold** (the answer cites a passage of the gold
section), **ROUGE-L** F1 of the answer (its ``[n]`` markers removed) against the gold
section (``rouge-score``, offline, with a Unicode word tokenizer so French is scored on its
words), **degenerate** (a word 4-gram repeated 3+ times, or prompt text echoed: a prompt
marker, a run of 6 words of the instructions, or the question itself), tokens and time per
answer; and **no answer** on ``--no-answer`` questions with the gold section removed from
what retrieval returns (the gate or the model says it does not know). Targets (issue 17):
degenerate 0 %, generative cites gold ≥ 80 %, structured ≥ 90 %, extractive ROUGE-L above
generative.

    sudo apt-get install debian-faq debian-faq-fr    # once, if missing
    flock /tmp/atelier-bench.lock .venv/bin/python bench/rag_answers.py
    flock /tmp/atelier-bench.lock .venv/bin/python bench/rag_answers.py --quick   # 12 questions a direction

``bench/rag.py`` runs it as its last section (on its own store), so one command prints the
retrieval, answer and speed tables.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import machine_info, write_json  # noqa: E402

CHAT = "smollm2-135m-instruct"
EMBEDDER = "multilingual-e5-small"
MODES = ("generative", "structured", "extractive", "langchain")
DIRECTIONS = {"EN→EN": ("en", "faq-en"), "FR→FR": ("fr", "faq-fr"), "FR→EN": ("fr", "faq-en")}

LANGCHAIN_RAG_PROMPT = (
    "You are an assistant for question-answering tasks. Use the following pieces of retrieved context to answer "
    "the question. If you don't know the answer, just say that you don't know. Use three sentences maximum and "
    "keep the answer concise.\nQuestion: {question} \nContext: {context} \nAnswer:"
)
"""``rlm/rag-prompt`` (LangChain Hub), the prompt of LangChain's RAG tutorial, sent as one human message."""

ECHO_MARKERS = ("<source", "</source", "<sources", "Question:", "Context:", "DATA-", "Answer:")
DONT_KNOW = re.compile(r"don'?t know|do not know|ne sais pas|not (?:contain|mention|provide)|no information|"
                       r"pas d'information|ne (?:contient|mentionne) pas", re.IGNORECASE)
WORD = re.compile(r"\w+", re.UNICODE)
MARKER = re.compile(r"\[\s*\d{1,3}(?:\s*[,;]\s*\d{1,3})*\s*\]")


def log(msg: str) -> None:
    print(f"[rag-answers] {msg}", file=sys.stderr, flush=True)


class UnicodeTokenizer:
    """rouge-score's tokenizer interface over Unicode words (its default keeps only ``[a-z0-9]``)."""

    @staticmethod
    def tokenize(text: str) -> list[str]:
        return WORD.findall(text.lower())


def degenerate(answer: str, question: str, instructions: str) -> bool:
    """A word 4-gram repeated 3+ times, or prompt text echoed (a marker, 6 words of the instructions, the question).

    The fixed no-answer text is an answer, not an echo (the instructions quote it)."""
    from atelier.rag.answer import NO_ANSWER

    if answer.strip() == NO_ANSWER:
        return False
    words = WORD.findall(answer.lower())
    grams = Counter(tuple(words[i:i + 4]) for i in range(len(words) - 3))
    if grams and max(grams.values()) >= 3:
        return True
    if any(marker.lower() in answer.lower() for marker in ECHO_MARKERS):
        return True
    flat = " ".join(words)
    asked = " ".join(WORD.findall(question.lower()))
    if len(asked) > 15 and asked in flat:
        return True
    told = WORD.findall(instructions.lower())
    return any(" ".join(told[i:i + 6]) in flat for i in range(len(told) - 5))


@dataclass
class Tally:
    """One (direction, mode) cell."""

    n: int = 0
    retrieved: int = 0
    cites_gold: int = 0
    rouge: list[float] = field(default_factory=list)
    degenerate: int = 0
    tokens: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    no_answer_asked: int = 0
    no_answer: int = 0
    examples: list[str] = field(default_factory=list)


@dataclass
class Bench:
    """What the questions share: the store, the embedder, the engine and its tokenizer."""

    at: object
    scopes: dict
    embedder: object
    engine: object
    tokenizer: object
    threshold: float
    top_k: int
    concurrency: int
    rouge: object = None
    banned: tuple[int, ...] | None = None

    def passages(self, scope, question: str, drop: str | None = None):
        """The relevant hybrid passages for ``question`` (``drop``: a document removed from what retrieval returns)."""
        from atelier.rag.answer import relevant

        hits = self.at.search(scope, question, "hybrid", self.top_k + (5 if drop else 0))
        if drop:
            hits = [h for h in hits if h.chunk.document_id != drop][: self.top_k]
        return relevant(hits, "hybrid", min_similarity=self.threshold)

    def prompt_ids(self, messages: list[dict], prefix: str = "") -> list[int]:
        from atelier.prompts.formats import render_chat

        text = render_chat(self.tokenizer, messages, chat_format="template").text + prefix
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    async def generate(self, ids: list[int], params, constraint=None) -> tuple[str, int, float, str | None]:
        """Text, tokens, seconds and ``stopped_by`` of one generation."""
        from atelier.engine.types import GenerationRequest

        request = GenerationRequest(request_id=f"ans-{uuid.uuid4().hex[:12]}", prompt_ids=ids, params=params,
                                    constraint=constraint)
        t0, text, tokens, stopped_by = time.perf_counter(), [], 0, None
        async for event in self.engine.generate(CHAT, request):
            text.append(event.text)
            tokens += len(event.token_ids)
            stopped_by = event.stopped_by or stopped_by
        return "".join(text), tokens, time.perf_counter() - t0, stopped_by

    async def answer(self, mode: str, question: str, passages) -> tuple[str, list[str], int, float]:
        """The answer text, the documents it cites, its tokens and seconds."""
        from atelier.cloud.grounding import answer_shape, guarded, markup_tokens, read_answer
        from atelier.engine.types import SamplingParams
        from atelier.rag.answer import NO_ANSWER
        from atelier.rag.extractive import extract
        from atelier.rag.grounded_prompt import build_messages

        if not passages:
            return NO_ANSWER, [], 0, 0.0
        plain = SamplingParams(max_tokens=256, temperature=0.0)
        if mode == "extractive":
            t0 = time.perf_counter()
            query = self.embedder.embed_array([question], input_type="search_query")[0][0]
            found = extract(question, passages,
                            lambda texts: self.embedder.embed_array(texts, input_type="search_document")[0], query)
            if found is None:
                return NO_ANSWER, [], 0, time.perf_counter() - t0
            return found.text, [c.document_id for c in found.citations], 0, time.perf_counter() - t0
        if mode == "langchain":
            context = "\n\n".join(h.chunk.text for h in passages)
            messages = [{"role": "user", "content": LANGCHAIN_RAG_PROMPT.format(question=question, context=context)}]
            text, tokens, secs, _ = await self.generate(self.prompt_ids(messages), plain)
            return text.strip(), [], tokens, secs
        shape = answer_shape(mode, question, len(passages))
        ids = self.prompt_ids(build_messages(question, passages), shape.prefix)
        if self.banned is None:
            self.banned = markup_tokens(self.tokenizer)
        text, tokens, secs, stopped_by = await self.generate(ids, guarded(plain, None, self.banned), shape.constraint)
        answered = read_answer(mode, passages, shape.prefix + text, stopped_by)
        return answered.text, [c.document_id for c in answered.citations], tokens, secs


def load_faq():
    """Section → (EN question, EN answer, FR question, FR answer), and the two corpora."""
    import rag as rag_bench  # bench/rag.py

    en, fr = rag_bench.faq_pairs("en"), rag_bench.faq_pairs("fr")
    shared = sorted(set(en) & set(fr))
    corpora = {"faq-en": {f"faq-{k}": f"{en[k][0]}\n\n{en[k][1]}" for k in en},
               "faq-fr": {f"faq-{k}": f"{fr[k][0]}\n\n{fr[k][1]}" for k in fr}}
    return {k: (en[k][0], en[k][1], fr[k][0], fr[k][1]) for k in shared}, corpora


async def measure(bench: Bench, sections: dict, args) -> dict[tuple[str, str], Tally]:
    """Every (direction, mode) cell, questions run ``bench.concurrency`` at a time through the engine."""
    import rag as rag_bench
    from atelier.rag.answer import NO_ANSWER
    from atelier.rag.grounded_prompt import SYSTEM_PROMPT

    held = [k for k, (q_en, *_rest) in sections.items() if rag_bench.held_out(q_en) == (args.split == "held-out")]
    asked = held[: args.questions] if args.questions else held
    modes = args.modes
    tallies = {(d, m): Tally() for d in DIRECTIONS for m in modes}
    gate = asyncio.Semaphore(bench.concurrency)
    instructions = {"langchain": LANGCHAIN_RAG_PROMPT}

    async def one(direction: str, key: str, mode: str, no_answer: bool) -> None:
        lang, corpus = DIRECTIONS[direction]
        q_en, a_en, q_fr, a_fr = sections[key]
        question, gold_text = (q_en, a_en) if lang == "en" else (q_fr, a_fr)
        if corpus == "faq-en":
            gold_text = a_en
        gold = f"faq-{key}"
        passages = bench.passages(bench.scopes[corpus], question, drop=gold if no_answer else None)
        async with gate:
            text, cited, tokens, secs = await bench.answer(mode, question, passages)
        tally = tallies[(direction, mode)]
        if no_answer:
            tally.no_answer_asked += 1
            tally.no_answer += text == NO_ANSWER or bool(DONT_KNOW.search(text))
            return
        tally.n += 1
        tally.retrieved += any(h.chunk.document_id == gold for h in passages)
        tally.cites_gold += gold in cited
        scorer = bench.rouge
        tally.rouge.append(scorer.score(gold_text, MARKER.sub("", text))["rougeL"].fmeasure)
        bad = degenerate(text, question, instructions.get(mode, SYSTEM_PROMPT))
        tally.degenerate += bad
        if mode != "extractive":
            tally.tokens.append(tokens)
            tally.seconds.append(secs)
        if bad and len(tally.examples) < 2:
            tally.examples.append(f"{question!r} → {text[:160]!r}")

    for direction in DIRECTIONS:
        t0 = time.perf_counter()
        jobs = [one(direction, key, mode, False) for key in asked for mode in modes]
        jobs += [one(direction, key, mode, True) for key in asked[: args.no_answer] for mode in modes]
        await asyncio.gather(*jobs)
        log(f"{direction}: {len(asked)} questions, {len(jobs)} answers in {time.perf_counter() - t0:.0f} s")
    return tallies


def table(tallies: dict[tuple[str, str], Tally], top_k: int, split: str) -> str:
    def pct(a: int, b: int) -> str:
        return f"{100 * a / b:.0f}%" if b else "—"

    lines = [f"answer quality (Debian FAQ, {split} half; hybrid top-{top_k}; {CHAT}, greedy; "
             f"langchain = rlm/rag-prompt on the same model and passages)",
             f"{'direction':<9} {'mode':<11} {'n':>3} {'retrieved':>9} {'cites gold':>10} {'ROUGE-L':>8} "
             f"{'degenerate':>10} {'no answer':>9} {'tokens':>6} {'s/answer':>8}"]
    for (direction, mode), t in tallies.items():
        cites = "—" if mode == "langchain" else pct(t.cites_gold, t.n)
        tokens = f"{statistics.median(t.tokens):.0f}" if t.tokens else "—"
        secs = f"{statistics.median(t.seconds):.1f}" if t.seconds else "0"
        lines.append(f"{direction:<9} {mode:<11} {t.n:>3} {pct(t.retrieved, t.n):>9} {cites:>10} "
                     f"{statistics.fmean(t.rouge) if t.rouge else 0:>8.3f} {pct(t.degenerate, t.n):>10} "
                     f"{pct(t.no_answer, t.no_answer_asked):>9} {tokens:>6} {secs:>8}")
    return "\n".join(lines)


def targets(tallies: dict[tuple[str, str], Tally]) -> list[str]:
    """The issue's targets, each ``ok`` or ``MISSED`` with its figure."""
    out = []
    if set(MODES) - {m for _, m in tallies}:
        return ["(targets need every mode)"]
    for direction in DIRECTIONS:
        cell = {m: tallies[(direction, m)] for m in MODES}
        rouge = {m: statistics.fmean(c.rouge) if c.rouge else 0.0 for m, c in cell.items()}
        checks = [
            ("degenerate 0% (our modes)", all(cell[m].degenerate == 0 for m in MODES if m != "langchain"),
             ", ".join(f"{m} {cell[m].degenerate}" for m in MODES if m != "langchain")),
            ("generative cites gold >= 80%", cell["generative"].cites_gold >= 0.8 * cell["generative"].n,
             f"{cell['generative'].cites_gold}/{cell['generative'].n}"),
            ("structured cites gold >= 90%", cell["structured"].cites_gold >= 0.9 * cell["structured"].n,
             f"{cell['structured'].cites_gold}/{cell['structured'].n}"),
            ("extractive ROUGE-L > generative", rouge["extractive"] > rouge["generative"],
             f"{rouge['extractive']:.3f} vs {rouge['generative']:.3f}"),
        ]
        out += [f"{direction} {name}: {'ok' if ok else 'MISSED'} ({figure})" for name, ok, figure in checks]
    return out


def run_answers(at, scopes: dict, embedder, args) -> tuple[str, list[str], dict]:
    """The answer section over an ingested store (``scopes``: ``faq-en``/``faq-fr``): (table, target lines, json)."""
    import torch
    from rouge_score import rouge_scorer

    from atelier.catalog import Catalog
    from atelier.engine.client import LocalEngine
    from atelier.engine.loading import load_chat_model
    from atelier.settings import Settings

    settings = Settings(threads=args.threads)
    catalog = Catalog.load()
    loaded = load_chat_model(catalog.get(CHAT), settings.cache_path, settings.device)
    engine = LocalEngine(catalog, settings, preloaded={CHAT: loaded})
    torch.set_num_threads(args.threads)
    sections, _ = load_faq()
    bench = Bench(at=at, scopes=scopes, embedder=embedder, engine=engine, tokenizer=engine.tokenizer(CHAT),
                  threshold=catalog.get(EMBEDDER, kind="embedding").relevance_threshold, top_k=args.top_k,
                  concurrency=args.concurrency, rouge=rouge_scorer.RougeScorer(["rougeL"], tokenizer=UnicodeTokenizer()))
    try:
        tallies = asyncio.run(measure(bench, sections, args))
    finally:
        engine.close()
    for (direction, mode), t in tallies.items():
        for example in t.examples:
            log(f"degenerate {direction} {mode}: {example}")
    data = {f"{d} {m}": {"n": t.n, "retrieved": t.retrieved, "cites_gold": t.cites_gold,
                         "rouge_l": statistics.fmean(t.rouge) if t.rouge else None, "degenerate": t.degenerate,
                         "no_answer": [t.no_answer, t.no_answer_asked],
                         "median_tokens": statistics.median(t.tokens) if t.tokens else None,
                         "median_seconds": statistics.median(t.seconds) if t.seconds else None}
            for (d, m), t in tallies.items()}
    return table(tallies, args.top_k, args.split), targets(tallies), data


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--questions", type=int, default=30, help="questions per direction (default 30; 0: all ~70)")
    ap.add_argument("--no-answer", type=int, default=10, help="questions asked with their gold section removed")
    ap.add_argument("--split", choices=("held-out", "tuning"), default="held-out",
                    help="the half asked (tune prompts on `tuning`, report `held-out`)")
    ap.add_argument("--top-k", type=int, default=5, help="passages given to the model (the API's default, 5)")
    ap.add_argument("--concurrency", type=int, default=8, help="answers generated at once (default 8)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES), help="answer modes measured (default all)")


def main(argv: list[str] | None = None) -> int:
    import rag as rag_bench
    from atelier.catalog import Catalog
    from atelier.engine.embedding import Embedder
    from atelier.rag.indexing import Scope

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(ap)
    ap.add_argument("--quick", action="store_true", help="12 questions a direction, 6 without their gold section")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.quick:
        args.questions, args.no_answer = 12, 6
    info = machine_info(args.threads)
    t_start = time.perf_counter()
    embedder = Embedder.load(Catalog.load().get(EMBEDDER))
    _, corpora = load_faq()
    with tempfile.TemporaryDirectory() as tmp:
        at = rag_bench.Atelier(Path(tmp), embedder)
        scopes = {name: Scope("bench", f"kb_{name.replace('-', '_')}") for name in corpora}
        for name, docs in corpora.items():
            chunks = [c for doc, text in docs.items() for c in at.chunks(doc, text, 256, 32)]
            at.ingest(scopes[name], chunks)
            log(f"ingested {name}: {len(chunks)} chunks")
        answers, checks, data = run_answers(at, scopes, embedder, args)
    info["loadavg_at_end"] = list(os.getloadavg())
    info["seconds"] = round(time.perf_counter() - t_start, 1)
    print()
    print(answers)
    print("\n".join("  " + line for line in checks))
    print(f"load average {info['loadavg_at_start'][0]:.2f} → {info['loadavg_at_end'][0]:.2f}; {info['seconds']:.0f} s")
    path = write_json("rag_answers", {"benchmark": "rag_answers", "args": {k: str(v) for k, v in vars(args).items()},
                                      "machine": info, "cells": data, "targets": checks}, args.json)
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
