"""The FastAPI application: ``create_app`` wires the routers, middlewares and the lifespan.

The lifespan builds the service's parts once (``api.services.Services.open``: data
directory 0700, migrations, operator key printed once if new, root key, stores, security,
engine, domain services) and closes them on shutdown. Routes live one module per resource
and receive the parts as ``ServicesDep``; errors become HTTP in ``api/errors.py`` only;
every ``/v1`` route requires a bearer key (``api/access.py``).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from atelier import __version__
from atelier.api import health, metrics
from atelier.api.access import require_access
from atelier.api.audit_trail import AuditMiddleware
from atelier.api.body_limit import BodySizeLimit
from atelier.api.errors import install_error_handlers
from atelier.api.openai import chat, completions, embeddings, files, fine_tuning, models, tokenize
from atelier.api.resources import alerts, api_keys, audit, identity, key_ring, limits, policies, tenancies
from atelier.api.resources import clusters, costs, custom_models, endpoints, evaluations
from atelier.api.resources import kb_documents, knowledge_bases
from atelier.api.services import Services
from atelier.api.uploads import upload_limit
from atelier.catalog import Catalog
from atelier.engine.client import EngineClient
from atelier.jobs.supervisor import WorkerSupervisor
from atelier.cloud.bootstrap import ADMIN_KEY_FILE
from atelier.settings import Settings, get_settings

log = logging.getLogger(__name__)

V1_ROUTERS = (
    chat.router, completions.router, embeddings.router, models.router, tokenize.router, audit.router, key_ring.router,
    tenancies.router, identity.router, api_keys.router, policies.router,
    alerts.router, limits.router, files.router, fine_tuning.router, evaluations.router, custom_models.router,
    clusters.router, endpoints.router, costs.router,
    knowledge_bases.router, kb_documents.router,
)

DESCRIPTION = (
    "Self-hosted generative AI: OpenAI-compatible chat, completions and embeddings on local models. "
    "Every `/v1` route requires `Authorization: Bearer <API key>`."
)


def create_app(
    settings: Settings | None = None,
    engine: EngineClient | None = None,
    catalog: Catalog | None = None,
    workers: WorkerSupervisor | None = None,
) -> FastAPI:
    """Build the HTTP application.

    Args:
        settings: Service settings; default: from the environment.
        engine: The inference engine; default: the one the ``engine`` setting names (``open_engine``), created
            at startup and closed at shutdown. A given engine belongs to the caller, who
            closes it.
        catalog: The model catalog; default: ``Catalog.load(settings.catalog_file)``.
        workers: The job workers ``atelier serve`` runs beside the app (``/health`` reports them).

    Returns:
        The FastAPI app; its lifespan (run by uvicorn, or ``with TestClient(app)``) builds
        ``app.state.services``.
    """
    settings = settings or get_settings()
    app_metrics = metrics.Metrics()  # per app: tests build many apps in one process

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        models_catalog = catalog or Catalog.load(settings.catalog_file)
        services, new_key = await run_in_threadpool(Services.open, settings, models_catalog, app_metrics, engine,
                                                     workers)
        if new_key is not None:
            print(f"Administrator API key (saved to {settings.data_path / ADMIN_KEY_FILE}): {new_key}", flush=True)
        app.state.services = services
        try:
            log.info("Atelier %s ready (data dir %s)", __version__, settings.data_path)
            yield
        finally:
            await run_in_threadpool(services.close)

    app = FastAPI(title="Atelier", version=__version__, description=DESCRIPTION, lifespan=lifespan)
    limit = upload_limit(settings)
    app.add_middleware(
        BodySizeLimit, max_bytes=settings.max_body_bytes,
        routes={("POST", "/v1/files"): limit, ("POST", "/v1/knowledge-bases/{knowledge_base_id}/documents"): limit,
                ("POST", "/v1/knowledge-bases/{knowledge_base_id}/documents/batch"):
                    upload_limit(settings, files=kb_documents.BATCH_BODY_FILES)},
    )  # fmt: skip
    install_error_handlers(app)  # its catch-all middleware wraps the body limit too
    app.add_middleware(AuditMiddleware)  # sees the final status of every response
    app.add_middleware(metrics.MetricsMiddleware, metrics=app_metrics)  # outermost: times everything
    app.include_router(health.router)
    app.include_router(metrics.router, dependencies=[require_access])  # outside /v1, for Prometheus
    for router in V1_ROUTERS:
        app.include_router(router, prefix="/v1", dependencies=[require_access])
    return app
