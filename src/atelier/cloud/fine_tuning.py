"""Fine-tuning jobs: create (validated, idempotent), list, get, cancel, events, checkpoints.

A job is a row of the job queue of kind ``fine-tune`` (``atelier.jobs``); a worker runs
it (``atelier.jobs.fine_tune``). Creating one:

1. resolves the hyperparameters (``TuneConfig.from_request``: OpenAI's ``hyperparameters``
   and Atelier's ``training_config``, 400 naming the parameter out of range);
2. checks that the base model is a chat model of the catalog and that the files are the
   caller's (the route turns a foreign id into a 400 "not found or not authorized");
3. submits the job in ``validating_files`` (an ``Idempotency-Key`` gives one job for any
   number of identical submissions), validates the files here, in the calling process,
   with the base model's tokenizer and chat format (every problem by line number), and
   moves the job to ``queued`` or fails it with the list of problems: nothing trains on a
   bad file. Validation tokenizes the whole file once (seconds per megabyte); a job whose
   creating process died while validating is validated again by an identical retry with
   the same ``Idempotency-Key``.

A job runs only on an **active fine-tuning cluster** of its tenancy, of its base model, with
enough free units (the units of the model's sizing; the cluster's jobs in
``validating_files``, ``queued`` or ``running`` hold theirs): the one named by ``cluster_id``
(another tenancy's, or one the caller's policies do not let it use, is a 400 "not found or
not authorized"), else the oldest eligible one; none is a 409 saying what to create. The
cluster is recorded in ``jobs.cluster_id``; the service's workers run the job (local
capacity). A process-wide lock makes choosing the cluster and submitting the job one step,
so two requests cannot take the same free units (one API process admits jobs).

Every method takes the caller's ``Principal`` first; another tenancy's job is ``NotFound``,
exactly like a missing one. Knows nothing about HTTP or policies (the routes check those).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, WithJsonSchema

from atelier.catalog import Catalog, ModelSpec
from atelier.cloud.clusters import ADMISSION, ClusterService
from atelier.cloud.custom_models import custom_model_name
from atelier.errors import Conflict, InvalidInput, NotFound
from atelier.principal import Principal
from atelier.store.db import Database
from atelier.store.files import FileStore
from atelier.store.jobs import JobQueue
from atelier.store.tables import NAME_LENGTH, Cluster, Job, JobEvent
from atelier.tuning.config import TuneConfig
from atelier.tuning.data import validate

KIND = "fine-tune"
"""The job kind of a fine-tuning job (the worker's handler is registered under it)."""
SUFFIX = re.compile(r"^[A-Za-z0-9_-]{1,40}$")
FILE_FIELDS = (("training_file", 10), ("validation_file", 1))
"""The request's file fields, with the fewest examples each must hold."""


def _training_config_schema() -> dict[str, Any]:
    """``TuneConfig``'s JSON schema with every field optional: what ``training_config`` accepts."""
    schema = TuneConfig.model_json_schema()
    schema.pop("required", None)
    schema["description"] = ("Atelier's training settings, OCI's names (every field optional; defaults as shown, "
                             "some depending on `type`).")
    return schema


TrainingConfigIn = Annotated[dict[str, Any] | None, WithJsonSchema(_training_config_schema())]
"""``training_config`` in a request: validated by ``TuneConfig.from_request`` (which also maps OpenAI's
names and names the offending field), documented in the OpenAPI schema as ``TuneConfig``."""


class JobRequest(BaseModel):
    """The body of ``POST /v1/fine_tuning/jobs``: OpenAI's fields plus Atelier's ``training_config``."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=100, description="The base chat model to fine-tune.")
    training_file: str = Field(min_length=1, max_length=100, description="Id of an uploaded `fine-tune` JSONL file.")
    validation_file: str | None = Field(
        None, min_length=1, max_length=100,
        description="Id of a JSONL file held out for validation; default: `validation_split` of the training file.",
    )  # fmt: skip
    hyperparameters: dict[str, Any] | None = Field(
        None, description="OpenAI's `n_epochs`, `batch_size`, `learning_rate_multiplier` (numbers or `auto`)."
    )
    method: dict[str, Any] | None = Field(
        None, description="OpenAI's method; only `{\"type\": \"supervised\"}` (with optional `supervised.hyperparameters`)."
    )
    suffix: str | None = Field(
        None, max_length=40, description="Up to 40 of `A-Z a-z 0-9 _ -`, added to the custom model's name."
    )
    seed: int | None = Field(None, ge=0, le=2**31 - 1, description="Seed of initialisation, data order and dropout.")
    training_config: TrainingConfigIn = Field(
        None, description="Atelier's settings, OCI's names: `type` lora|tfew, `total_training_epochs`, `lora_r`..."
    )
    cluster_id: str | None = Field(
        None, max_length=100,
        description="The fine-tuning cluster to run on; default: any active one of the model with free units.",
    )
    evaluation: dict[str, Any] | None = Field(
        None, description="Score the custom model on the `validation_file` at the end (`metrics`, `labels`, "
        "`max_tokens`, `k_shot` examples of the training file as a baseline, `seed`); the report is attached to "
        "the custom model (`metrics.evaluation`).",
    )
    search: dict[str, Any] | None = Field(
        None, description="A hyperparameter search instead of one training: `max_trials`, `timeout_seconds`, and "
        "what to draw (`learning_rate` [low, high], `lora_r`, `training_batch_size`, `type` lists, "
        "`total_training_epochs` [low, high]); the best trial's adapter becomes the custom model.",
    )
    compartment: str | None = Field(
        None, min_length=1, max_length=1000, description="Compartment id or path (`eng:ml`); default the root."
    )
    metadata: dict[str, str] | None = Field(None, description="Accepted for OpenAI's clients; stored with the job.")
    integrations: list[Any] | None = Field(None, description="Accepted for OpenAI's clients; must be empty or null.")


def _validated(model: type[BaseModel], data: Any, prefix: str) -> Any:
    """``model`` validated from a request's ``prefix`` object (a 400 naming ``prefix.<field>`` otherwise)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        param = ".".join([prefix, *(str(p) for p in err["loc"][:1])])
        raise InvalidInput(f"{param}: {err['msg'].removeprefix('Value error, ')}", param=param) from None


def _evaluation(body: JobRequest) -> dict[str, Any] | None:
    """The request's end-of-job evaluation, checked, as the job stores it."""
    if body.evaluation is None:
        return None
    from atelier.cloud.evaluations import JobEvaluation

    if body.validation_file is None:
        raise InvalidInput("evaluation scores the custom model on the validation_file: give one",
                           param="evaluation")
    return _validated(JobEvaluation, body.evaluation, "evaluation").options()


def _search(body: JobRequest, config: TuneConfig) -> dict[str, Any] | None:
    """The request's search, checked, as the job stores it."""
    if body.search is None:
        return None
    from atelier.tuning.search_space import SearchSpec

    spec = _validated(SearchSpec, body.search, "search")
    spec.check()
    if body.validation_file is None and config.validation_split == 0:
        raise InvalidInput("a search compares trials by validation loss: give a validation_file or a "
                           "training_config.validation_split above 0", param="search")
    return spec.model_dump(mode="json")


@dataclass(frozen=True)
class Checkpoint:
    """A complete checkpoint the job wrote, with the metrics of its step."""

    job_id: str
    step: int
    created_at: Any
    metrics: dict[str, Any]
    event_id: int


def _hyperparameters(body: JobRequest) -> dict[str, Any] | None:
    """OpenAI's hyperparameters, from the top level or from ``method.supervised``."""
    method = body.method or {}
    if method:
        if method.get("type") != "supervised":
            raise InvalidInput("only method.type 'supervised' is supported", param="method.type")
        unknown = set(method) - {"type", "supervised"}
        if unknown:
            raise InvalidInput(f"unknown field method.{sorted(unknown)[0]}", param=f"method.{sorted(unknown)[0]}")
    nested = (method.get("supervised") or {}).get("hyperparameters")
    if nested is not None and body.hyperparameters is not None and nested != body.hyperparameters:
        raise InvalidInput("give hyperparameters or method.supervised.hyperparameters, not both",
                           param="method.supervised.hyperparameters")
    return nested if nested is not None else body.hyperparameters


def openai_hyperparameters(config: TuneConfig) -> dict[str, Any]:
    """The resolved settings under OpenAI's names (what ``FineTuningJob.hyperparameters`` shows)."""
    return {
        "n_epochs": config.total_training_epochs,
        "batch_size": config.training_batch_size,
        "learning_rate_multiplier": config.learning_rate / config.default_learning_rate,
    }


class FineTuningService:
    """Fine-tuning jobs of every tenancy, each method scoped to the caller's.

    Args:
        db: The metadata database.
        files: The tenancy-scoped file store (training data).
        catalog: The base models.
        tokenizer: ``tokenizer(model name)`` → the base model's tokenizer (the engine's).
        queue: The job queue.
        clusters: The cluster service (where a job may run).
    """

    def __init__(self, db: Database, files: FileStore, catalog: Catalog, tokenizer: Callable[[str], Any],
                 queue: JobQueue, clusters: ClusterService):
        self._db = db
        self._files = files
        self._catalog = catalog
        self._tokenizer = tokenizer
        self.queue = queue
        self.clusters = clusters

    def create(self, principal: Principal, body: JobRequest, *, idempotency_key: str | None = None,
               may_use: Callable[[Cluster], bool] = lambda cluster: True, compartment_id: str | None = None) -> Job:
        """Validate the request and its files, admit it on a cluster, then queue the job (or fail it
        with the file's problems).

        Args:
            principal: The caller; the job belongs to its tenancy.
            body: The request.
            idempotency_key: The ``Idempotency-Key`` header, if any.
            may_use: ``may_use(cluster)`` → whether the caller's policies let it use that cluster.
            compartment_id: The compartment the job (and its custom model) goes into; None: the root.

        Returns:
            The job: ``queued``, or ``failed`` with every problem of the files by line.

        Raises:
            InvalidInput: A hyperparameter out of range (``param`` names it), an unknown base
                model (``model``), a bad suffix, or a file id that is not the caller's
                (``training_file``/``validation_file``, "not found or not authorized"), or a
                ``cluster_id`` that is not a fine-tuning cluster of the model the caller may use.
            Conflict: The idempotency key was used for another request; no active fine-tuning
                cluster of the model with enough free units (the message says what to create).
        """
        config = TuneConfig.from_request(body.training_config, _hyperparameters(body), seed=body.seed)
        try:
            spec = self._catalog.get(body.model, kind="chat")
        except NotFound:
            raise InvalidInput(f"the base model {body.model!r} does not exist or is not a chat model",
                               param="model", code="model_not_found") from None
        if body.suffix is not None and not SUFFIX.match(body.suffix):
            raise InvalidInput("suffix must be 1 to 40 of A-Z a-z 0-9 _ -", param="suffix")
        if len(custom_model_name(spec.name, body.suffix, "job_" + "0" * 24)) > NAME_LENGTH:
            raise InvalidInput("the model name and suffix are too long for a custom model name", param="suffix")
        if body.integrations:
            raise InvalidInput("integrations are not supported", param="integrations")
        for param, _ in FILE_FIELDS:
            file_id = getattr(body, param)
            if file_id is not None:
                try:
                    row = self._files.get_file(principal, file_id)
                except NotFound:
                    raise InvalidInput(f"file {file_id!r} not found or not authorized", param=param) from None
                if row.purpose != "fine-tune":
                    raise InvalidInput(f"file {file_id!r} was uploaded for {row.purpose!r}, not 'fine-tune'",
                                       param=param)
        search = _search(body, config)
        hyper = _hyperparameters(body) or {}
        auto = "total_training_epochs" not in (body.training_config or {}) and hyper.get("n_epochs") in (None, "auto")
        shown = {**openai_hyperparameters(config), **({"n_epochs": "auto"} if auto else {})}
        payload = {
            "search": search,
            "evaluation": _evaluation(body),
            "model": spec.name,
            "training_file": body.training_file,
            "validation_file": body.validation_file,
            "training_config": config.applicable_dump(),
            "hyperparameters": shown,
            "epochs": "auto" if auto else None,  # resolved by the worker from the training examples (auto_epochs)
            "method": "supervised",
            "suffix": body.suffix,
            "seed": config.seed,
            "cluster_id": body.cluster_id,
            "metadata": body.metadata,
        }
        job = self._admit(principal, spec, payload, idempotency_key, may_use, compartment_id)
        if job.state != "validating_files":
            return job
        problems = self.check_files(principal, payload, config)
        try:
            if problems:
                return self.queue.reject(principal, job.id, problems)
            return self.queue.enqueue(principal, job.id)
        except Conflict:  # an identical request (same key) settled it meanwhile, or it was cancelled
            return self.queue.get(principal, job.id)

    def _admit(self, principal: Principal, spec: ModelSpec, payload: dict[str, Any], idempotency_key: str | None,
               may_use: Callable[[Cluster], bool], compartment_id: str | None) -> Job:
        """Submit the job on the cluster it runs on (or return the one submitted with this key)."""
        submit = dict(idempotency_key=idempotency_key, state="validating_files", compartment_id=compartment_id)
        if idempotency_key is not None and self.queue.by_key(principal, idempotency_key) is not None:
            return self.queue.submit(principal, KIND, payload, **submit)  # the same job, or Conflict for another
        with ADMISSION:
            with self._db.session() as session:
                cluster = self.clusters.admit_job(session, principal, spec, payload["cluster_id"], may_use)
            return self.queue.submit(principal, KIND, payload, cluster_id=cluster.id, **submit)

    def check_files(self, principal: Principal, payload: dict[str, Any], config: TuneConfig) -> str | None:
        """Every problem of the job's files by line (None when they can be trained on).

        Raises:
            NotFound: A file was deleted meanwhile.
        """
        spec = self._catalog.get(payload["model"], kind="chat")
        tokenizer = self._tokenizer(spec.name)
        messages = []
        for param, least in FILE_FIELDS:
            if payload.get(param) is None:
                continue
            data = self._files.file_content(principal, payload[param])
            report = validate(data, tokenizer, context_length=spec.context_length, chat_format=spec.chat_format,
                              text_template=config.text_template, min_examples=least)
            if not report.ok:
                messages.append(f"{param} {payload[param]}: {report.message()}")
        return "\n".join(messages) or None

    def get(self, principal: Principal, job_id: str) -> Job:
        """The caller's fine-tuning job.

        Raises:
            NotFound: No such fine-tuning job in the caller's tenancy.
        """
        job = self.queue.get(principal, job_id)
        if job.kind != KIND:
            raise NotFound(f"fine-tuning job {job_id!r} not found")
        return job

    def list(self, principal: Principal, *, after: str | None = None, limit: int = 20,
             keep: Callable[[list[Job]], list[Job]] = lambda jobs: jobs) -> tuple[list[Job], bool]:
        """A page of the caller's fine-tuning jobs, newest first, and whether more follow.

        Args:
            principal: The caller.
            after: The previous page's last id; None for the first page.
            limit: Most jobs, 1 to 100.
            keep: Which jobs the caller may see (its policies); pages are filled with those only.

        Raises:
            InvalidInput: Bad limit, or ``after`` not a job of the caller (``param="after"``).
        """
        found: list[Job] = []
        cursor = after
        while len(found) <= limit:
            try:
                page = self.queue.list(principal, kind=KIND, after=cursor, limit=100)
            except NotFound:
                raise InvalidInput(f"job {cursor!r} is not in this listing", param="after") from None
            found += keep(page)
            if len(page) < 100:
                break
            cursor = page[-1].id
        return found[:limit], len(found) > limit

    def cancel(self, principal: Principal, job_id: str) -> Job:
        """Cancel the caller's job (at once when waiting, within seconds when running).

        Raises:
            NotFound: No such fine-tuning job in the caller's tenancy.
            Conflict: The job already succeeded or failed.
        """
        self.get(principal, job_id)
        return self.queue.request_cancel(principal, job_id)

    def events(self, principal: Principal, job_id: str, *, after: int | None = None, limit: int = 20) -> list[JobEvent]:
        """The job's events, newest first (``after``: the previous page's last event id).

        Raises:
            NotFound: No such fine-tuning job in the caller's tenancy.
            InvalidInput: Bad limit.
        """
        self.get(principal, job_id)
        return self.queue.events(principal, job_id, after=after, limit=limit, newest_first=True)

    def checkpoints(self, principal: Principal, job_id: str, *, after: int | None = None,
                    limit: int = 10) -> list[Checkpoint]:
        """The checkpoints the job completed, newest step first, each with its step's metrics.

        A step checkpointed twice (a resumed run writes its last step again) is listed once.

        Args:
            principal: The caller.
            job_id: The job.
            after: The step of the previous page's last checkpoint; None for the first page.
            limit: Most checkpoints, 1 to 100.

        Raises:
            NotFound: No such fine-tuning job in the caller's tenancy.
            InvalidInput: Bad limit.
        """
        if isinstance(limit, bool) or not 1 <= limit <= 100:
            raise InvalidInput("limit must be an integer from 1 to 100", param="limit")
        self.get(principal, job_id)
        rows = self.queue.history(principal, job_id)
        metrics: dict[int, dict[str, Any]] = {}
        saved: dict[int, JobEvent] = {}
        for row in rows:
            data = row.data or {}
            kind, step = data.get("type"), data.get("step")
            if not isinstance(step, int):
                continue
            if kind == "metrics":
                metrics.setdefault(step, data)
            elif kind == "checkpoint":
                saved.setdefault(step, row)
        found = [
            Checkpoint(job_id, step, row.created_at, metrics.get(step, {}), row.id)
            for step, row in sorted(saved.items(), reverse=True)
            if after is None or step < after
        ]
        return found[:limit]

