"""The FastAPI application: ``create_app`` wires settings, store, keys, catalog and engine.

The lifespan prepares the data directory (0700), migrates the database, makes sure an
operator key exists (printing a newly generated one once), loads the root key (key
manager, sealed object store, audit log, anomaly monitor, rate limiter), loads the catalog and starts the engine; on shutdown it closes what it opened. Routes live one module per resource;
errors become HTTP in ``api/errors.py`` only; every ``/v1`` route requires a bearer key.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from atelier import __version__
from atelier.api import health, metrics
from atelier.api.resources import alerts, api_keys, audit, identity, key_ring, limits, policies, tenancies
from atelier.api.resources import clusters, costs, custom_models, endpoints
from atelier.api.resources import kb_documents, knowledge_bases
from atelier.api.audit_trail import AuditMiddleware, AuditTrail
from atelier.api.body_limit import BodySizeLimit
from atelier.api.access import require_access
from atelier.api.errors import install_error_handlers
from atelier.api.openai import chat, completions, embeddings, files, fine_tuning, models, tokenize
from atelier.catalog import Catalog
from atelier.cloud.custom_models import CustomModelService
from atelier.cloud.endpoints import AdapterHost
from atelier.cloud.units import UnitTable
from atelier.engine.client import EngineClient, LocalEngine
from atelier.security.alerts import Monitor
from atelier.security.audit import AuditLog
from atelier.security.limits import Limits, RateLimiter, database_lookup
from atelier.security.bootstrap import ADMIN_KEY_FILE, ensure_operator
from atelier.security.crypto import KeyManager, RootKey
from atelier.settings import Settings, get_settings
from atelier.store.db import Database
from atelier.store.knowledge_bases import repair as repair_knowledge_bases
from atelier.store.objects import LocalObjectStore
from atelier.store.vectors import open_vector_store

log = logging.getLogger(__name__)

V1_ROUTERS = (
    chat.router, completions.router, embeddings.router, models.router, tokenize.router, audit.router, key_ring.router,
    tenancies.router, identity.router, api_keys.router, policies.router,
    alerts.router, limits.router, files.router, fine_tuning.router, custom_models.router,
    clusters.router, endpoints.router, costs.router,
    knowledge_bases.router, kb_documents.router,
)

DESCRIPTION = (
    "Self-hosted generative AI: OpenAI-compatible chat, completions and embeddings on local models. "
    "Every `/v1` route requires `Authorization: Bearer <API key>`."
)


def _prepare_store(settings: Settings, catalog: Catalog) -> tuple[Database, str | None]:
    """Create the data dir, migrate the database, ensure the operator key (blocking)."""
    settings.data_path.mkdir(mode=0o700, parents=True, exist_ok=True)
    db = Database(settings.db_url)
    try:
        db.migrate()
        new_key = ensure_operator(db, settings, catalog)
    except BaseException:
        db.dispose()
        raise
    return db, new_key


def create_app(
    settings: Settings | None = None,
    engine: EngineClient | None = None,
    catalog: Catalog | None = None,
) -> FastAPI:
    """Build the HTTP application.

    Args:
        settings: Service settings; default: from the environment.
        engine: The inference engine; default: a ``LocalEngine`` over the catalog, created
            at startup and closed at shutdown. A given engine belongs to the caller, who
            closes it.
        catalog: The model catalog; default: ``Catalog.load(settings.catalog_file)``.

    Returns:
        The FastAPI app; its lifespan (run by uvicorn, or ``with TestClient(app)``) opens
        the store and the engine.
    """
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        models = catalog or Catalog.load(settings.catalog_file)
        db, new_key = await run_in_threadpool(_prepare_store, settings, models)
        if new_key is not None:
            print(f"Administrator API key (saved to {settings.data_path / ADMIN_KEY_FILE}): {new_key}", flush=True)
        own_engine = None
        try:
            app.state.db = db
            app.state.root_key = await run_in_threadpool(RootKey.from_settings, settings)
            app.state.keys = KeyManager(db, app.state.root_key)
            app.state.objects = LocalObjectStore(settings.data_path / "objects", app.state.keys, db)
            app.state.vectors = await run_in_threadpool(open_vector_store, settings, db)
            repaired = await run_in_threadpool(repair_knowledge_bases, db, app.state.vectors, app.state.objects)
            if any(vars(repaired).values()):  # what a crash left: chunks of unfinished documents, deletions
                log.info("knowledge bases repaired at startup: %s", repaired)
            app.state.audit = AuditTrail(AuditLog.for_service(db, app.state.root_key, settings.data_path))
            app.state.monitor = await run_in_threadpool(Monitor.for_service, db, app.state.audit.log, settings)
            app.state.limits = RateLimiter(
                Limits.from_settings(settings), database_lookup(db), on_tokens=app.state.monitor.observe_tokens
            )
            app.state.catalog = models
            app.state.units = UnitTable.load(settings.units_file)
            if engine is None:
                own_engine = LocalEngine(app.state.catalog, settings)
            app.state.engine = engine or own_engine
            app.state.adapters = AdapterHost(  # custom models' adapters loaded in the engine, for endpoints
                app.state.engine, CustomModelService(db, app.state.objects), settings.data_path / "tmp"
            )
            log.info("Atelier %s ready (data dir %s)", __version__, settings.data_path)
            yield
        finally:
            if own_engine is not None:
                await run_in_threadpool(own_engine.close)
            close_vectors = getattr(getattr(app.state, "vectors", None), "close", None)
            if close_vectors is not None:
                close_vectors()
            monitor = getattr(app.state, "monitor", None)
            if monitor is not None:  # let alert webhooks under way finish
                await run_in_threadpool(monitor.wait_for_webhooks)
            db.dispose()

    app = FastAPI(title="Atelier", version=__version__, description=DESCRIPTION, lifespan=lifespan)
    app.state.settings = settings
    app.add_middleware(
        BodySizeLimit, max_bytes=settings.max_body_bytes,
        routes={("POST", "/v1/files"): files.upload_limit(settings),
                ("POST", "/v1/knowledge-bases/{knowledge_base_id}/documents"): files.upload_limit(settings)},
    )
    install_error_handlers(app)  # its catch-all middleware wraps the body limit too
    app.add_middleware(AuditMiddleware)  # sees the final status of every response
    app.state.metrics = metrics.Metrics()  # per app: tests build many apps in one process
    app.add_middleware(metrics.MetricsMiddleware, metrics=app.state.metrics)  # outermost: times everything
    app.include_router(health.router)
    app.include_router(metrics.router, dependencies=[require_access])  # outside /v1, for Prometheus
    for router in V1_ROUTERS:
        app.include_router(router, prefix="/v1", dependencies=[require_access])
    return app
