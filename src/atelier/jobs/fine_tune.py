"""The ``fine-tune`` job: sealed JSONL in, sealed PEFT adapter (or whole model, for ``full``) and a custom model out.

Runs in a worker process. For one job it:

1. opens the training (and validation) file from the object store (sealed under the
   tenancy's key) and validates them as a whole; any problem fails the job with every
   problem listed by line, before the model is even loaded;
2. loads the base model from the catalog, splits the examples (``validation_split``
   unless a validation file was given) and runs ``atelier.tuning.recipe.run`` in the job's
   private work directory (0700), which resumes from the last complete checkpoint after a
   worker crash; metric and checkpoint events are forwarded to the job's events, once per
   step (a resumed run re-sends the events after its checkpoint; those are dropped). Each
   checkpoint is also sealed in the object store before its event is recorded
   (``jobs.checkpoints``), and put back in the work directory when it is not there, so a
   job resumes on any node; it is discarded once the job has ended;
3. packs the adapter (``full``: the model's config and weights) and records the custom model through the same service the API reads
   it with (``cloud.custom_models.CustomModelService.record``: sealed adapter, ids and name
   derived from the job's, so a worker that dies between the two steps is resumed without
   duplicates).

The job's result is ``{"fine_tuned_model": <custom model id>, ...}``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from typing import Any

from atelier.catalog import Catalog, ModelSpec
from atelier.cloud.custom_models import CustomModelService
from atelier.cloud.fine_tuning import KIND
from atelier.errors import InvalidInput, NotFound
from atelier.jobs.checkpoints import JobCheckpoints
from atelier.jobs.context import JobContext, JobStopped
from atelier.store.db import Database
from atelier.store.files import FileStore
from atelier.store.jobs import JobQueue
from atelier.store.objects import ObjectStore
from atelier.store.tables import CustomModel
from atelier.tuning.config import TuneConfig, auto_epochs
from atelier.tuning.data import load_examples, split_examples

log = logging.getLogger(__name__)

__all__ = ["KIND", "FineTuneHandler", "build_fine_tune"]

FORWARDED = ("metrics", "checkpoint", "early_stopped", "resumed")
"""Recipe events recorded as job events (``resumed``: the checkpoint step an attempt continues from)."""

ModelLoader = Callable[[ModelSpec], Any]
"""``load(spec)`` → a ``LoadedModel``-like holder (``.name``, ``.model``, ``.tokenizer``)."""
TokenizerLoader = Callable[[ModelSpec], Any]
"""``load(spec)`` → the base model's tokenizer (to validate files before loading the model)."""


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else "-"


def describe(event: dict[str, Any]) -> str:
    """The human message of a recipe event."""
    kind, step = event.get("type"), event.get("step")
    if kind == "metrics":
        return (f"step {step}/{event.get('total_steps')}: train loss {_fmt(event.get('train_loss'))}, "
                f"valid loss {_fmt(event.get('valid_loss'))}, "
                f"token accuracy {_fmt(event.get('valid_token_accuracy'))}")
    if kind == "checkpoint":
        return f"checkpoint saved at step {step}"
    if kind == "resumed":
        return f"resumed training from the checkpoint of step {step}"
    return f"early stopping at step {step} (best step {event.get('best_step')})"


def openai_metrics(event: dict[str, Any]) -> dict[str, Any]:
    """A metrics event with OpenAI's names added (``train_loss``, ``valid_loss``, ``valid_mean_token_accuracy``)."""
    return {**event, "valid_mean_token_accuracy": event.get("valid_token_accuracy")}


class FineTuneHandler:
    """The handler of ``fine-tune`` jobs (see the module docstring).

    Args:
        db: The metadata database (files, the job's events, custom models).
        objects: The sealed object store (training data in, the adapter out).
        catalog: The base models.
        load_model: Loads a base model for training (fresh for each job: training wraps it).
        load_tokenizer: Loads a base model's tokenizer (files are validated before the model loads).
        device: Training device; the model's when None.
        engine_factory: Builds the serving engine for a job's ``evaluation`` (``jobs.evaluate``); None: none.
    """

    def __init__(self, db: Database, objects: ObjectStore, catalog: Catalog, load_model: ModelLoader,
                 load_tokenizer: TokenizerLoader, device: str | None = None,
                 engine_factory: Callable[[], Any] | None = None):
        self._files = FileStore(db, objects)
        self._jobs = JobQueue(db)
        self._custom_models = CustomModelService(db, objects)
        self._checkpoints = JobCheckpoints(objects)
        self._catalog = catalog
        self._load_model = load_model
        self._load_tokenizer = load_tokenizer
        self._device = device
        self._engine_factory = engine_factory

    def __call__(self, ctx: JobContext) -> dict[str, Any]:
        """Run one job (see the module docstring).

        Raises:
            InvalidInput: A file is invalid (every problem by line), or a setting does not fit the model.
            JobStopped: Cancelled, shutting down or lease lost (a checkpoint is kept).
        """
        with self._checkpoints.kept_while_resumable(ctx):
            return self._run(ctx)

    def _run(self, ctx: JobContext) -> dict[str, Any]:
        job, payload = ctx.job, ctx.job.payload
        os.chmod(ctx.workdir, 0o700)
        spec = self._catalog.get(payload["model"], kind="chat")
        config = TuneConfig.model_validate(payload["training_config"])
        existing = self._custom_models.of_job(job.tenancy_id, job.id)
        if existing is not None:  # a previous attempt finished everything but the job's row
            return self._result(existing, trained_tokens=None)
        train_bytes = self._file(job.tenancy_id, payload["training_file"])
        val_bytes = self._file(job.tenancy_id, payload["validation_file"]) if payload.get("validation_file") else None
        tokenizer = self._load_tokenizer(spec)
        examples = load_examples(train_bytes, tokenizer, context_length=spec.context_length,
                                 chat_format=spec.chat_format, text_template=config.text_template)
        if val_bytes is not None:
            train = examples
            val = load_examples(val_bytes, tokenizer, context_length=spec.context_length,
                                chat_format=spec.chat_format, text_template=config.text_template,
                                min_examples=1, param="validation_file")
        else:
            train, val = split_examples(examples, config.validation_split, config.seed)
        if payload.get("epochs") == "auto":  # n_epochs "auto": from the number of training examples
            epochs = auto_epochs(len(train))
            config = config.model_copy(update={"total_training_epochs": epochs})
            payload = {**payload, "training_config": {**payload["training_config"], "total_training_epochs": epochs}}
            ctx.emit(f"n_epochs auto: {epochs} epochs for {len(train)} training examples",
                     {"type": "message", "n_epochs": epochs})
        ctx.raise_if_stopped()
        loaded = self._load_model(spec)  # fresh for this job: QLoRA may quantize it for good
        if config.quantize_base != "none":
            from atelier.tuning.qlora import quantize_frozen_base

            quantized = quantize_frozen_base(loaded.model, config.quantize_base)
            ctx.emit(f"base quantized to {config.quantize_base} for training ({quantized} linear layers)",
                     {"type": "message", "quantize_base": config.quantize_base})
        ctx.emit(f"training {config.type} on {len(train)} examples ({len(val)} for validation)",
                 {"type": "message", "train_examples": len(train), "validation_examples": len(val)})
        seen = self._seen(job.tenancy_id, job.id)
        from atelier.tuning.recipe import CHECKPOINT_DIR, run  # torch and PEFT: only in workers that train

        def forward(event: dict[str, Any]) -> None:
            kind, step = event.get("type"), event.get("step")
            if kind == "checkpoint":  # stored before its event: a checkpoint the events show can be restored
                self._checkpoints.save(ctx, ctx.workdir / CHECKPOINT_DIR / f"step-{step}", step)
            if kind not in FORWARDED or (kind != "resumed" and (kind, step) in seen):  # every resume is news
                return
            seen.add((kind, step))
            data = openai_metrics(event) if kind == "metrics" else dict(event)
            ctx.emit(describe(event), data)

        extra: dict[str, Any] = {}
        if payload.get("search"):  # trials chosen by Optuna, the best one kept (jobs/search.py)
            result, config, extra["search"] = self._search(ctx, payload, loaded, train, val)
        else:
            self._checkpoints.restore(ctx)
            result = run(config, loaded, train, val, ctx.workdir, forward, ctx.should_stop, device=self._device)
        if result.interrupted:
            raise JobStopped(ctx.stop_reason or "stopped")
        if payload.get("evaluation") and val_bytes is not None:
            extra["evaluation"] = self._evaluate(ctx, spec, config, result, val_bytes, train_bytes)
        row = self._store(ctx, spec, config, result, extra.get("evaluation"))
        trained = round(sum(len(e.input_ids) for e in train) * result.epochs)
        return self._result(row, trained_tokens=trained, steps=result.steps, stopped_early=result.stopped_early,
                            best_step=result.best_step, **extra)

    # ------------------------------------------------------------ pieces

    def _search(self, ctx: JobContext, payload: dict[str, Any], loaded, train, val):
        """The best trial's result and settings, and the search's summary (``jobs.search``)."""
        from atelier.jobs.search import run_search
        from atelier.tuning.recipe import run
        from atelier.tuning.search_space import SearchSpec

        seen = {(e.data.get("trial"), e.data.get("step")) for e in self._jobs.history(ctx.job.tenancy_id, ctx.job.id)
                if isinstance(e.data, dict) and e.data.get("trial") is not None}

        def emit(number: int, event: dict[str, Any]) -> None:
            if event.get("type") == "metrics" and (number, event.get("step")) not in seen:
                seen.add((number, event.get("step")))
                ctx.emit(f"trial {number}: {describe(event)}", {**openai_metrics(event), "trial": number})

        def train_one(config, workdir, on_event, should_stop):
            workdir.mkdir(mode=0o700, exist_ok=True)
            return run(config, loaded, train, val, workdir, on_event, should_stop, device=self._device)

        spec = SearchSpec.model_validate(payload["search"])
        outcome = run_search(ctx, spec, payload["training_config"], train_one, emit)
        ctx.emit(f"search: trial {outcome.best_trial} is the best of {len(outcome.trials)}",
                 {"type": "message", "best_trial": outcome.best_trial})
        return outcome.result, outcome.config, {"best_trial": outcome.best_trial, "trials": outcome.trials}

    def _file(self, tenancy_id: str, file_id: str) -> bytes:
        try:
            return self._files.file_content(tenancy_id, file_id)
        except NotFound:
            raise InvalidInput(f"file {file_id!r} was deleted before training", param="training_file") from None

    def _seen(self, tenancy_id: str, job_id: str) -> set[tuple[str, int]]:
        """The (type, step) of the recipe events already recorded for this job."""
        return {(e.data.get("type"), e.data.get("step")) for e in self._jobs.history(tenancy_id, job_id)
                if isinstance(e.data, dict) and e.data.get("type") in FORWARDED}

    def _evaluate(self, ctx: JobContext, spec: ModelSpec, config: TuneConfig, result, val_bytes: bytes,
                  train_bytes: bytes) -> dict[str, Any]:
        """The trained adapter scored on the validation file through the serving engine (``jobs.evaluate``)."""
        from atelier.jobs.evaluate import build_report, read_items

        if self._engine_factory is None:
            raise InvalidInput("this worker cannot run evaluations", param="evaluation")
        options = ctx.job.payload["evaluation"]
        items = read_items(val_bytes, config.text_template)
        pool = read_items(train_bytes, config.text_template) if options.get("k_shot") else []
        engine = self._engine_factory()
        try:
            slot = engine.add_adapter(spec.name, f"{ctx.job.id}-evaluation", result.adapter_dir)
            report = build_report(ctx, engine, spec, items, options, slot, pool)
        finally:
            engine.close()
        ctx.emit(f"evaluated on the validation file ({len(items)} examples)", {"type": "message", **report})
        return {"test_file": ctx.job.payload["validation_file"], **report}

    def _store(self, ctx: JobContext, spec: ModelSpec, config: TuneConfig, result,
               evaluation: dict[str, Any] | None = None) -> CustomModel:
        """Record the custom model (idempotent: its ids derive from the job's)."""
        from atelier.tuning.config import ADAPTER_METHODS
        from atelier.tuning.export import pack_adapter, pack_model

        metrics = {**result.final_metrics, "trainable_fraction": result.trainable_fraction,
                   "steps": result.steps, "stopped_early": result.stopped_early, "best_step": result.best_step,
                   "training_config": config.applicable_dump(),
                   **({"evaluation": evaluation} if evaluation else {})}
        row = self._custom_models.record(
            ctx.job, base_model=spec.name, method=config.type, adapter=(pack_adapter if config.type in ADAPTER_METHODS else pack_model)(result.adapter_dir),
            trainable_params=result.trainable_params, total_params=result.total_params,
            metrics=json.loads(json.dumps(metrics)), curve=json.loads(json.dumps(result.curve)),
        )  # fmt: skip
        ctx.emit(f"custom model {row.id} ({row.name}) created", {"type": "message", "fine_tuned_model": row.id})
        return row

    @staticmethod
    def _result(row: CustomModel, *, trained_tokens: int | None, **extra: Any) -> dict[str, Any]:
        return {
            "fine_tuned_model": row.id,
            "custom_model_name": row.name,
            "trained_tokens": trained_tokens,
            "trainable_params": row.trainable_params,
            "total_params": row.total_params,
            "final_metrics": {k: v for k, v in row.metrics.items() if k != "training_config"},
            **extra,
        }


def build_fine_tune(settings, db: Database, objects: ObjectStore) -> FineTuneHandler:
    """The handler as a worker of this service runs it: stores, catalog and model loading from settings."""
    import torch

    from atelier.engine.loading import load_chat_model, load_tokenizer

    torch.set_num_threads(settings.threads)
    catalog = Catalog.load(settings.catalog_file)

    def load(spec: ModelSpec):
        return load_chat_model(spec, settings.cache_path, settings.device)

    from atelier.engine.factory import open_engine

    return FineTuneHandler(db, objects, catalog, load, lambda spec: load_tokenizer(spec, settings.cache_path),
                           device=settings.device, engine_factory=lambda: open_engine(catalog, settings))
