"""``GET /health``: liveness, the engine's state and the job workers', without authentication.

The service is ``degraded`` (still 200: it answers) when jobs wait and no live worker runs
their kind, or when a worker ``atelier serve`` keeps running is down: new fine-tuning or
ingestion jobs would wait until one is back; and when the engine reports problems (a vLLM
server that does not answer). Counts only, no tenant data.
"""

from __future__ import annotations

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from atelier import __version__
from atelier.api.openai.protocol import Health, WorkersHealth
from atelier.api.services import Services, ServicesDep

router = APIRouter(tags=["service"])


def workers_health(services: Services) -> WorkersHealth:
    """The job workers and the queue (blocking: reads the database)."""
    waiting = services.jobs.waiting()
    supervisor = services.workers
    return WorkersHealth(
        alive=len(services.jobs.live_workers()), expected=supervisor.expected if supervisor else None,
        running=supervisor.running if supervisor else None, restarts=supervisor.restarts if supervisor else 0,
        queued_jobs=waiting.queued, oldest_queued_seconds=waiting.oldest_seconds,
        unserved_kinds=list(waiting.unserved_kinds),
    )  # fmt: skip


def problems_of(workers: WorkersHealth) -> list[str]:
    """Why the service is degraded (empty: it is not)."""
    found = [f"{workers.queued_jobs} job(s) wait and no live worker runs kind {kind!r}"
             for kind in workers.unserved_kinds]
    if workers.expected and (workers.running or 0) < workers.expected:
        found.append(f"{workers.running} of {workers.expected} job workers are running (restarting)")
    return found


@router.get("/health", response_model=Health, summary="Service health")
async def health(services: ServicesDep) -> Health:
    """``ok`` while the service answers and its jobs can run; ``degraded`` when jobs would wait (see the module)."""
    workers = await run_in_threadpool(workers_health, services)
    engine = await run_in_threadpool(services.engine.health)  # a vLLM-backed engine asks its servers
    problems = problems_of(workers) + list(engine.get("problems", []))
    return Health(status="degraded" if problems else "ok", problems=problems, version=__version__,
                  engine=engine, workers=workers)
