"""The service's parts, built once: one typed container that routes receive as ``ServicesDep``.

:meth:`Services.open` (called by the app's lifespan) prepares the data directory, migrates
the database, loads the root key and builds every part in dependency order: stores (sealed
objects, vectors, files), security (key manager, audit trail, monitor, rate limiter), the
engine, and the domain services above them (custom models, adapters, clusters, endpoints,
knowledge bases, fine-tuning, the generation pipeline and grounded answering). :meth:`close`
undoes it. Nothing else reads ``app.state``: routes declare ``ServicesDep``, and the
gate and middlewares call :func:`services_of`. Knows no route.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request

from atelier.api.audit_trail import AuditTrail
from atelier.catalog import Catalog
from atelier.cloud.adapter_host import AdapterHost
from atelier.cloud.clusters import ClusterService
from atelier.cloud.custom_models import CustomModelService
from atelier.cloud.endpoints import EndpointService
from atelier.cloud.evaluations import EvaluationService
from atelier.cloud.fine_tuning import FineTuningService
from atelier.cloud.generation import GenerationService
from atelier.cloud.grounding import Grounding
from atelier.cloud.knowledge_bases import KnowledgeBaseService
from atelier.cloud.served_models import ServedModels
from atelier.cloud.units import UnitTable
from atelier.engine.client import EngineClient
from atelier.engine.factory import open_engine
from atelier.engine.types import Usage
from atelier.store.jobs import JobQueue
from atelier.principal import Principal
from atelier.rag.indexing import VectorStore
from atelier.security.alerts import Monitor
from atelier.security.audit import AuditLog
from atelier.cloud.bootstrap import ensure_operator
from atelier.security.crypto import KeyManager, RootKey
from atelier.security.limits import Limits, RateLimiter, database_lookup
from atelier.settings import Settings
from atelier.store.db import Database
from atelier.store.files import FileStore
from atelier.store.knowledge_bases import repair as repair_knowledge_bases
from atelier.store.object_stores import open_object_store
from atelier.store.objects import ObjectStore
from atelier.store.vectors import open_vector_store

if TYPE_CHECKING:
    from atelier.api.metrics import Metrics
    from atelier.jobs.supervisor import WorkerSupervisor

log = logging.getLogger(__name__)


class UsageMeter:
    """The admission of generations: the tenancy's limits, then its token charge and the metrics.

    Implements ``cloud.generation.Admission``; embeddings are charged through :meth:`embedded`.
    """

    def __init__(self, limits: RateLimiter | None, metrics: Metrics | None):
        self._limits = limits
        self._metrics = metrics

    def admit(self, principal: Principal, model: str, prompt_tokens: int) -> Callable[[Usage | None], None]:
        """Take a generation slot (429 when none is free or the token budget is spent)."""
        slot = self._limits.generation(principal, prompt_tokens) if self._limits is not None else None

        def end(usage: Usage | None) -> None:
            try:
                if usage is not None:
                    self.charge(principal, model, usage.prompt_tokens, usage.completion_tokens)
            except Exception:  # noqa: BLE001 - accounting never turns a finished answer into an error
                log.exception("usage of a generation on %s could not be recorded", model)
            finally:
                if slot is not None:
                    slot.release()

        return end

    def check(self, principal: Principal) -> None:
        """Refuse work when the tenancy's token budget is spent (429)."""
        if self._limits is not None:
            self._limits.check_tokens(principal)

    def charge(self, principal: Principal, model: str, prompt_tokens: int, completion_tokens: int = 0) -> None:
        """Charge tokens used to the tenancy and count them by model."""
        if self._limits is not None:
            self._limits.charge_tokens(principal, prompt_tokens + completion_tokens)
        if self._metrics is not None:
            self._metrics.count_tokens(model, prompt_tokens, completion_tokens)


@dataclass
class Services:
    """Every part of the running service (see the module docstring)."""

    settings: Settings
    db: Database
    catalog: Catalog
    units: UnitTable
    metrics: Metrics
    root_key: RootKey
    keys: KeyManager
    objects: ObjectStore
    vectors: VectorStore
    audit: AuditTrail
    monitor: Monitor
    limits: RateLimiter
    meter: UsageMeter
    engine: EngineClient
    files: FileStore
    jobs: JobQueue
    adapters: AdapterHost
    custom_models: CustomModelService
    clusters: ClusterService
    endpoints: EndpointService
    knowledge_bases: KnowledgeBaseService
    fine_tuning: FineTuningService
    evaluations: EvaluationService
    models: ServedModels
    generation: GenerationService
    grounding: Grounding
    workers: WorkerSupervisor | None = None
    """The job workers ``atelier serve`` keeps running (None: none started with this process)."""
    owns_engine: bool = False

    @classmethod
    def open(cls, settings: Settings, catalog: Catalog, metrics: Metrics, engine: EngineClient | None = None,
             workers: WorkerSupervisor | None = None) -> tuple[Services, str | None]:
        """Prepare the data directory and database and build every part (blocking).

        Args:
            settings: Service settings.
            catalog: The model catalog.
            metrics: The app's metrics (its middleware exists before the lifespan runs).
            engine: The inference engine; default the one the ``engine`` setting names (``open_engine``), owned
                (and closed) by the returned services.
            workers: The job workers started beside the service, if any (for ``/health``).

        Returns:
            The services, and the operator key if this start generated one (else None).
        """
        settings.data_path.mkdir(mode=0o700, parents=True, exist_ok=True)
        db = Database(settings.db_url)
        built: list = []
        try:
            db.migrate()
            new_key = ensure_operator(db, settings, catalog)
            root_key = RootKey.from_settings(settings)
            keys = KeyManager(db, root_key)
            objects = open_object_store(settings, keys, db)
            vectors = open_vector_store(settings, db)
            built.append(vectors)
            repaired = repair_knowledge_bases(db, vectors, objects)
            if any(vars(repaired).values()):  # what a crash left: chunks of unfinished documents, deletions
                log.info("knowledge bases repaired at startup: %s", repaired)
            audit = AuditTrail(AuditLog.for_service(db, root_key, settings.data_path))
            monitor = Monitor.for_service(db, audit.log, settings)
            limits = RateLimiter(Limits.from_settings(settings), database_lookup(db), on_tokens=monitor.observe_tokens)
            units = UnitTable.load(settings.units_file)
            owns_engine = engine is None
            engine = engine or open_engine(catalog, settings)
            files = FileStore(db, objects)
            jobs = JobQueue(db)
            adapters = AdapterHost(engine, objects, settings.data_path / "tmp")
            custom_models = CustomModelService(db, objects, adapters)
            clusters = ClusterService(db, catalog, units)
            endpoints = EndpointService(db, catalog, custom_models, adapters)
            models = ServedModels(catalog, custom_models, endpoints, clusters, adapters)
            meter = UsageMeter(limits, metrics)
            generation = GenerationService(engine, models, meter)
            knowledge_bases = KnowledgeBaseService(db, objects, vectors, catalog)
            services = cls(
                settings=settings, db=db, catalog=catalog, units=units, metrics=metrics, root_key=root_key,
                keys=keys, objects=objects, vectors=vectors, audit=audit, monitor=monitor, limits=limits,
                meter=meter, engine=engine, files=files, jobs=jobs, adapters=adapters, custom_models=custom_models,
                clusters=clusters, endpoints=endpoints, knowledge_bases=knowledge_bases,
                fine_tuning=FineTuningService(db, files, catalog, lambda name: engine.tokenizer(name), jobs, clusters),
                evaluations=EvaluationService(files, catalog, lambda name: engine.tokenizer(name), jobs, models),
                models=models, generation=generation,
                grounding=Grounding(knowledge_bases, engine, catalog, generation, settings.default_chat_model),
                workers=workers, owns_engine=owns_engine,
            )  # fmt: skip
        except BaseException:
            for part in built:
                part.close()
            db.dispose()
            raise
        return services, new_key

    def close(self) -> None:
        """Close what :meth:`open` opened: the owned engine, the vector store, webhooks under way, the database."""
        try:
            if self.owns_engine:
                self.engine.close()
            close_vectors = getattr(self.vectors, "close", None)
            if close_vectors is not None:
                close_vectors()
            self.monitor.wait_for_webhooks()
        finally:
            self.db.dispose()


def services_of(request: Request) -> Services:
    """The app's services (for the gate and middlewares; routes declare ``ServicesDep``)."""
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(services_of)]
