"""Evaluations: a model (base, custom model or endpoint) scored on a test file, as a job.

An evaluation is a job of kind ``evaluate`` in the job queue (``atelier.jobs.evaluate`` runs
it on the service's workers, through the engine serving uses): it shares the jobs' states,
events, cancellation, leases and tenancy scoping, and policies decide on it as on the
tenancy's other jobs (resource type ``fine-tuning-jobs``). Creating one checks, in the
calling process: the model (``ServedModels.identify``: the caller must be allowed to invoke
an endpoint or custom model), the metrics, and the files (the caller's ``fine-tune`` files,
valid as training files are, with the base model's tokenizer and chat format, every
problem by line); the job's payload then holds everything the worker needs (base model,
the custom model's sealed adapter, file ids), never a path.

The report (the job's result): ``metrics`` of the model and, with ``k_shot``, a ``baseline``
with the same metrics of the base model prompted with ``k`` examples of a training file.
Knows nothing about HTTP.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from atelier.catalog import Catalog
from atelier.cloud.served_models import Authorizer, ServedModels
from atelier.errors import InvalidInput, NotFound
from atelier.principal import Principal
from atelier.store.files import FileStore
from atelier.store.jobs import JobQueue
from atelier.store.tables import Job, JobEvent
from atelier.tuning.data import validate
from atelier.tuning.scoring import GENERATION_METRICS, LIKELIHOOD_METRICS, METRICS

KIND = "evaluate"
"""The job kind of an evaluation (the worker's handler is registered under it)."""
DEFAULT_METRICS = ("loss", "perplexity", "token_accuracy", "exact_match", "accuracy", "macro_f1", "rouge_l")


class KShot(BaseModel):
    """The baseline: the base model prompted with ``k`` examples of a training file."""

    model_config = ConfigDict(extra="forbid")

    k: int = Field(5, ge=1, le=32, description="Examples before every prompt.")
    file: str = Field(min_length=1, max_length=100, description="A `fine-tune` file the examples are drawn from.")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Seed of the draw (the same examples for every prompt).")


class JobEvaluation(BaseModel):
    """``evaluation`` of a fine-tuning job: the custom model scored on the job's ``validation_file`` at the end."""

    model_config = ConfigDict(extra="forbid")

    metrics: list[str] = Field(list(DEFAULT_METRICS), min_length=1, max_length=len(METRICS))
    labels: list[str] | None = Field(None, min_length=2, max_length=200)
    max_tokens: int = Field(64, ge=1, le=4096)
    k_shot: int = Field(0, ge=0, le=32, description="A baseline of the base model with k examples of the training "
                        "file (0: none).")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Seed of the k-shot draw.")

    def options(self) -> dict[str, Any]:
        """What ``jobs.evaluate.build_report`` takes (checked metric names)."""
        check_metrics(self.metrics, "evaluation.metrics")
        return {"metrics": self.metrics, "labels": self.labels, "max_tokens": self.max_tokens,
                "k_shot": {"k": self.k_shot, "seed": self.seed} if self.k_shot else None}


def check_metrics(metrics: list[str], param: str) -> None:
    """Raise ``InvalidInput`` (``param``) unless the metrics are distinct known names."""
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or len(set(metrics)) != len(metrics):
        raise InvalidInput(f"metrics must be distinct names among {', '.join(METRICS)}; got {unknown or 'repeats'}",
                           param=param)


class EvaluationRequest(BaseModel):
    """The body of ``POST /v1/evaluations``."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=200, description="A base model, custom model (`cm_…`, `ft:…`) or "
                       "endpoint (`ep_…`).")
    test_file: str = Field(min_length=1, max_length=100, description="A `fine-tune` JSONL file (training formats).")
    metrics: list[str] = Field(list(DEFAULT_METRICS), min_length=1, max_length=len(METRICS),
                               description=f"Among {', '.join(METRICS)}.")
    labels: list[str] | None = Field(None, min_length=2, max_length=200,
                                     description="The label set of classification answers; default: inferred from "
                                     "the references when they are few and short.")
    max_tokens: int = Field(64, ge=1, le=4096, description="Longest generated answer.")
    k_shot: KShot | None = Field(None, description="A k-shot baseline of the base model in the same report.")
    text_template: str | None = Field(None, min_length=1, max_length=2000,
                                      description="As in training_config: lines of other fields as prompt/completion.")
    compartment: str | None = Field(None, min_length=1, max_length=1000, description="Compartment id or path.")


class EvaluationService:
    """Evaluations of every tenancy, each method scoped to the caller's.

    Args:
        files: The tenancy-scoped file store.
        catalog: The base models.
        tokenizer: ``tokenizer(model name)`` → the base model's tokenizer.
        queue: The job queue.
        models: Resolves ``model`` for the caller.
    """

    def __init__(self, files: FileStore, catalog: Catalog, tokenizer: Callable[[str], Any], queue: JobQueue,
                 models: ServedModels):
        self._files, self._catalog, self._tokenizer = files, catalog, tokenizer
        self.queue, self._models = queue, models

    def create(self, guard: Authorizer, body: EvaluationRequest, *, compartment_id: str | None = None) -> Job:
        """Check the request and its files, then queue the evaluation.

        Raises:
            InvalidInput: An unknown metric, a file that is not the caller's or not valid (every
                problem by line), a bad text template. ``param`` names the field.
            NotFound, Forbidden: A model the caller may not invoke (as for chat).
        """
        principal = guard.principal
        check_metrics(body.metrics, "metrics")
        spec, custom = self._models.identify(guard, body.model)
        tokenizer = self._tokenizer(spec.name)
        for param, file_id, least in (("test_file", body.test_file, 1),
                                      ("k_shot.file", body.k_shot.file if body.k_shot else None, 1)):
            if file_id is not None:
                self._check_file(principal, param, file_id, tokenizer, spec, body.text_template, least)
        payload = {
            "model": body.model, "base_model": spec.name, "test_file": body.test_file, "metrics": body.metrics,
            "labels": body.labels, "max_tokens": body.max_tokens, "text_template": body.text_template,
            "custom_model_id": custom.id if custom else None,
            "adapter_object_id": custom.adapter_object_id if custom else None,
            "k_shot": body.k_shot.model_dump() if body.k_shot else None,
        }  # fmt: skip
        return self.queue.submit(principal, KIND, payload, compartment_id=compartment_id)

    def _check_file(self, principal: Principal, param: str, file_id: str, tokenizer, spec, template, least) -> None:
        try:
            row = self._files.get_file(principal, file_id)
        except NotFound:
            raise InvalidInput(f"file {file_id!r} not found or not authorized", param=param) from None
        if row.purpose != "fine-tune":
            raise InvalidInput(f"file {file_id!r} was uploaded for {row.purpose!r}, not 'fine-tune'", param=param)
        report = validate(self._files.file_content(principal, file_id), tokenizer, context_length=spec.context_length,
                          chat_format=spec.chat_format, text_template=template, min_examples=least)
        report.raise_for_problems(param)

    def get(self, principal: Principal, evaluation_id: str) -> Job:
        """The caller's evaluation. Raises NotFound (another tenancy's, or another kind of job, too)."""
        job = self.queue.get(principal, evaluation_id)
        if job.kind != KIND:
            raise NotFound(f"no evaluation {evaluation_id!r}", param="evaluation_id")
        return job

    def list(self, principal: Principal, *, after: str | None = None, limit: int = 20) -> list[Job]:
        """The caller's evaluations, newest first."""
        return self.queue.list(principal, kind=KIND, after=after, limit=limit)

    def cancel(self, principal: Principal, evaluation_id: str) -> Job:
        """Ask the evaluation to stop (it ends ``cancelled``); an ended one is returned as it is."""
        self.get(principal, evaluation_id)
        return self.queue.request_cancel(principal, evaluation_id)

    def events(self, principal: Principal, evaluation_id: str, *, after: int | None = None,
               limit: int = 20) -> list[JobEvent]:
        """The evaluation's progress events, oldest first."""
        self.get(principal, evaluation_id)
        return self.queue.events(principal, evaluation_id, after=after, limit=limit)


__all__ = ["DEFAULT_METRICS", "GENERATION_METRICS", "KIND", "LIKELIHOOD_METRICS", "EvaluationRequest",
           "EvaluationService", "JobEvaluation", "KShot", "check_metrics"]
