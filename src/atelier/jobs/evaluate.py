"""The ``evaluate`` job: a model scored on a test file, with the base model prompted k-shot beside it.

Runs in a worker process, through the same engine interface serving uses (``open_engine``:
in-process or vLLM, the served quantization), so a report measures what the service
answers. For each test example (any line format of training files: the last assistant turn
is the reference, the turns before it the prompt):

- **likelihood** metrics from one request over the whole rendered conversation with prompt
  log probabilities: loss (mean negative log likelihood of the reference's tokens, its
  end-of-turn token included, as training's validation loss), perplexity, token accuracy
  (reference tokens that are the model's most likely next token);
- **generation** metrics from the greedy answer (``max_tokens``): exact match, label accuracy
  and macro-F1, ROUGE-L, BLEU, chrF (``tuning.scoring``).

The baseline (``k_shot``) runs the same metrics on the base model with ``k`` examples of a
training file (drawn with a fixed seed) as earlier user/assistant turns of every prompt.
Requests go to the engine ``CONCURRENCY`` at a time (its scheduler batches them); the job
stops between groups when cancelled. The result is the report.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import shutil
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from atelier.catalog import Catalog
from atelier.engine.types import GenerationRequest, SamplingParams
from atelier.errors import InvalidInput
from atelier.jobs.context import JobContext, JobStopped
from atelier.prompts.formats import render_chat
from atelier.prompts.templates import k_shot
from atelier.store.files import FileStore
from atelier.store.objects import ObjectStore
from atelier.tuning.data import IGNORE_INDEX, tokenize_example, to_messages
from atelier.tuning.export import unpack_weights
from atelier.tuning.scoring import GENERATION_METRICS, LIKELIHOOD_METRICS, score

log = logging.getLogger(__name__)

CONCURRENCY = 16
"""Requests in flight at once (rows of one engine batch)."""
SAMPLES = 5
"""Predictions shown in the report next to their references."""


@dataclass(frozen=True)
class Item:
    """One test example: the conversation before the reference answer, and the reference."""

    prompt: list[dict]
    reference: str
    messages: list[dict]


def read_items(data: bytes, text_template: str | None = None) -> list[Item]:
    """The examples of a JSONL file (validated when the job was created): prompts and reference answers."""
    from atelier.tuning.data import TextTemplate

    template = TextTemplate.parse(text_template) if text_template else None
    items = []
    for line in data.decode("utf-8-sig").splitlines():
        if line.strip():
            messages, _ = to_messages(json.loads(line), template)
            items.append(Item(messages[:-1], messages[-1]["content"], messages))
    return items


class Evaluator:
    """Scores one model (base or adapter slot) on items, through an engine.

    Args:
        engine: The ``EngineClient``.
        model: The base model's catalog name.
        tokenizer, chat_format, context_length: The base model's.
        max_tokens: Longest generated answer.
        should_stop: Checked between groups of requests (raises ``JobStopped``).
        progress: Called with (items done, items in all) after each group.
    """

    def __init__(self, engine, model: str, tokenizer, chat_format: str, context_length: int, *, max_tokens: int,
                 should_stop: Callable[[], bool] = lambda: False,
                 progress: Callable[[int, int], None] = lambda done, total: None):
        self.engine, self.model, self.tokenizer = engine, model, tokenizer
        self.chat_format, self.context_length, self.max_tokens = chat_format, context_length, max_tokens
        self.should_stop, self.progress = should_stop, progress

    async def _run(self, request: GenerationRequest) -> tuple[str, Any]:
        text, first = [], None
        async for event in self.engine.generate(self.model, request):
            first = first or event
            text.append(event.text)
        return "".join(text), first

    async def _one(self, item: Item, prefix: list[dict], slot: int | None, metrics: set[str]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if metrics & set(LIKELIHOOD_METRICS):
            weights = [0] * (sum(m["role"] == "assistant" for m in item.messages) - 1) + [1]
            example = tokenize_example(self.tokenizer, prefix + item.messages, [0] * (len(prefix) // 2) + weights,
                                       chat_format=self.chat_format)
            self._fits(len(example.input_ids) + 1)
            request = GenerationRequest(f"eval-{uuid.uuid4().hex[:12]}", example.input_ids,
                                        SamplingParams(max_tokens=1, temperature=0, prompt_logprobs=1),
                                        adapter_slot=slot)
            _, first = await self._run(request)
            nll, correct, count = 0.0, 0, 0
            for position, label in enumerate(example.labels):
                entry = first.prompt_logprobs[position] if position else None
                if label == IGNORE_INDEX or entry is None:
                    continue
                nll -= entry.logprob
                correct += bool(entry.top) and entry.top[0][0] == label
                count += 1
            out.update(nll=nll, correct=correct, count=count)
        if metrics & set(GENERATION_METRICS):
            ids = render_chat(self.tokenizer, prefix + item.prompt, chat_format=self.chat_format).ids
            self._fits(len(ids) + 1)
            request = GenerationRequest(f"eval-{uuid.uuid4().hex[:12]}", ids,
                                        SamplingParams(max_tokens=min(self.max_tokens, self.context_length - len(ids)),
                                                       temperature=0), adapter_slot=slot)
            out["prediction"] = (await self._run(request))[0].strip()
        return out

    def _fits(self, length: int) -> None:
        if length > self.context_length:
            raise InvalidInput(f"a prompt of {length} tokens does not fit the model's context of "
                               f"{self.context_length} (fewer k-shot examples?)", param="k_shot.k")

    def evaluate(self, items: list[Item], metrics: list[str], *, slot: int | None = None,
                 prefix: list[dict] | None = None, labels: list[str] | None = None) -> dict[str, Any]:
        """The metrics of the model on the items (``prefix``: k-shot turns before every prompt)."""
        wanted = set(metrics)
        rows: list[dict[str, Any]] = []
        for start in range(0, len(items), CONCURRENCY):
            if self.should_stop():
                raise JobStopped("stopped")
            group = items[start:start + CONCURRENCY]

            async def run_group(group=group):
                return await asyncio.gather(*(self._one(item, prefix or [], slot, wanted) for item in group))

            rows.extend(asyncio.run(run_group()))
            self.progress(len(rows), len(items))
        report: dict[str, Any] = {}
        count = sum(r.get("count", 0) for r in rows)
        if count:
            loss = sum(r["nll"] for r in rows) / count
            likelihood = {"loss": loss, "perplexity": math.exp(min(loss, 700.0)),
                          "token_accuracy": sum(r["correct"] for r in rows) / count}
            report.update({k: v for k, v in likelihood.items() if k in wanted})
        if wanted & set(GENERATION_METRICS):
            predictions = [r["prediction"] for r in rows]
            references = [item.reference for item in items]
            report.update(score(predictions, references, metrics, labels))
            report["samples"] = [{"prediction": p, "reference": r} for p, r in
                                 list(zip(predictions, references))[:SAMPLES]]
        return report


def build_report(ctx: JobContext, engine, spec, items: list[Item], options: dict[str, Any], slot: int | None,
                 pool: list[Item]) -> dict[str, Any]:
    """The report of a model (``slot``: its adapter, None for the base) on ``items``, with the k-shot baseline.

    Args:
        ctx: The job (progress events, stop signal).
        engine: The engine serving ``spec``'s base model.
        spec: The base model's catalog entry.
        items: The test examples.
        options: ``metrics``, ``max_tokens``, ``labels`` and ``k_shot`` (``{"k", "seed"}`` or None).
        slot: The engine slot of the model's adapter.
        pool: The examples k-shot prompts are drawn from.
    """
    tokenizer = engine.tokenizer(spec.name)

    def evaluator(what: str) -> Evaluator:
        def progress(done: int, total: int) -> None:
            ctx.emit(f"{what}: {done}/{total} examples", {"stage": what, "done": done, "total": total})

        return Evaluator(engine, spec.name, tokenizer, spec.chat_format, spec.context_length,
                         max_tokens=options["max_tokens"], should_stop=ctx.should_stop, progress=progress)

    report: dict[str, Any] = {"base_model": spec.name, "n_examples": len(items)}
    report["metrics"] = evaluator("model").evaluate(items, options["metrics"], slot=slot, labels=options.get("labels"))
    shot = options.get("k_shot")
    if shot:
        prefix = k_shot_prefix(pool, shot["k"], shot["seed"])
        report["baseline"] = {"kind": "k_shot", "model": spec.name, "k": shot["k"], "seed": shot["seed"],
                              "metrics": evaluator("baseline").evaluate(items, options["metrics"], prefix=prefix,
                                                                        labels=options.get("labels"))}
    return report


def k_shot_prefix(examples: list[Item], k: int, seed: int) -> list[dict]:
    """``k`` single-turn examples drawn with ``seed``, as user/assistant turns."""
    singles = [item for item in examples if len(item.prompt) == 1 and item.prompt[0]["role"] == "user"]
    if len(singles) < k:
        raise InvalidInput(f"the k-shot file has {len(singles)} single-turn examples, fewer than k={k}",
                           param="k_shot.k")
    drawn = random.Random(seed).sample(singles, k)
    return k_shot([(item.prompt[0]["content"], item.reference) for item in drawn], "")[:-1]


class EvaluateHandler:
    """Runs ``evaluate`` jobs (the payload is written by ``cloud.evaluations.EvaluationService.create``).

    Args:
        objects: The sealed object store (files and adapters).
        files: The files' store (to open the test and k-shot files).
        catalog: The base models.
        engine_factory: Builds the engine (called once per job, closed after it).
        tokenizer: A base model's tokenizer by catalog spec.
        scratch: Where adapters are unpacked for the engine's one read (private temporary directories).
    """

    def __init__(self, objects: ObjectStore, files: FileStore, catalog: Catalog, engine_factory: Callable[[], Any],
                 scratch: Path):
        self._objects, self._files, self._catalog = objects, files, catalog
        self._engine_factory, self._scratch = engine_factory, scratch

    def __call__(self, ctx: JobContext) -> dict[str, Any]:
        payload, tenancy = ctx.job.payload, ctx.job.tenancy_id
        spec = self._catalog.get(payload["base_model"], kind="chat")
        items = read_items(self._files.file_content(tenancy, payload["test_file"]), payload.get("text_template"))
        shot = payload.get("k_shot")
        pool = read_items(self._files.file_content(tenancy, shot["file"]), payload.get("text_template")) if shot \
            else []
        engine = self._engine_factory()
        try:
            slot = self._adapter(engine, tenancy, payload, spec.name)
            return {"model": payload["model"], **build_report(ctx, engine, spec, items, payload, slot, pool)}
        finally:
            engine.close()

    def _adapter(self, engine, tenancy: str, payload: dict[str, Any], base: str) -> int | None:
        """The engine slot of the custom model's adapter (None for the base model)."""
        if not payload.get("adapter_object_id"):
            return None
        self._scratch.mkdir(mode=0o700, parents=True, exist_ok=True)
        directory = Path(tempfile.mkdtemp(prefix="eval-adapter-", dir=self._scratch))
        try:
            unpack_weights(self._objects.get(tenancy, payload["adapter_object_id"]), directory, overwrite=True)
            return engine.add_adapter(base, payload["custom_model_id"], directory)
        finally:
            shutil.rmtree(directory, ignore_errors=True)


def build_evaluate(settings, db, objects: ObjectStore) -> EvaluateHandler:
    """The handler as a worker of this service runs it."""
    from atelier.engine.factory import open_engine

    catalog = Catalog.load(settings.catalog_file)
    return EvaluateHandler(objects, FileStore(db, objects), catalog, lambda: open_engine(catalog, settings),
                           settings.data_path / "tmp")
