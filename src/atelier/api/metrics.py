"""Prometheus metrics: requests, latency, tokens, engine queues; ``GET /metrics`` for the operator.

Each app has its own ``CollectorRegistry`` (``Services.metrics``), so several apps in one
process (tests) never share counters. :class:`MetricsMiddleware` counts every HTTP request
by method, route template (from the route table of ``api.access``) and status and observes
its duration (a stream's until its last byte); requests matching no route are labelled
``unmatched`` so that probing random paths cannot grow the label set. The generation routes
count tokens by model. Engine gauges are read from ``engine.stats()`` at scrape time.
Holds no model math.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from atelier.api.asgi import HttpMiddleware
from atelier.api.health import workers_health
from atelier.api.route_table import rule_for
from atelier.api.services import ServicesDep

router = APIRouter(tags=["service"])

UNMATCHED = "unmatched"
"""The route label of requests that match no route."""
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
"""Seconds; generations take seconds to minutes on a CPU."""


class Metrics:
    """The metrics of one app, in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "atelier_http_requests", "HTTP requests by method, route template and status.",
            ["method", "route", "status"], registry=r,
        )  # fmt: skip
        self.latency = Histogram(
            "atelier_http_request_duration_seconds", "Time from a request's arrival to its response's last byte.",
            ["method", "route"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.prompt_tokens = Counter(
            "atelier_prompt_tokens", "Prompt tokens processed, by model (generations and embeddings).",
            ["model"], registry=r,
        )  # fmt: skip
        self.completion_tokens = Counter(
            "atelier_completion_tokens", "Completion tokens generated, by model.", ["model"], registry=r
        )
        self.queue_depth = Gauge(
            "atelier_engine_queue_depth", "Generation requests waiting for a batch slot, by model.", ["model"],
            registry=r,
        )  # fmt: skip
        self.running = Gauge(
            "atelier_engine_running_requests", "Generation requests in the running batch, by model.", ["model"],
            registry=r,
        )  # fmt: skip
        self.adapters = Gauge("atelier_engine_active_adapters", "Adapters loaded in the engine's slots.", registry=r)
        self.workers = Gauge("atelier_job_workers", "Job workers: alive (seen in the last 20 s), expected and "
                             "running (those `serve` keeps up).", ["state"], registry=r)
        self.queued_jobs = Gauge("atelier_jobs_queued", "Jobs waiting in the queue.", registry=r)
        self.oldest_queued = Gauge("atelier_job_oldest_queued_seconds", "Age of the oldest waiting job (0: none).",
                                   registry=r)
        self.unserved = Gauge("atelier_jobs_unserved_kinds", "Kinds of waiting jobs that no live worker runs.",
                              registry=r)

    def count_tokens(self, model: str, prompt: int, completion: int = 0) -> None:
        """Add one request's token counts."""
        if prompt > 0:
            self.prompt_tokens.labels(model=model).inc(prompt)
        if completion > 0:
            self.completion_tokens.labels(model=model).inc(completion)

    def read_engine(self, engine: Any) -> None:
        """Set the engine gauges from ``engine.stats()`` (models that left are dropped)."""
        stats = engine.stats() if callable(getattr(engine, "stats", None)) else {}
        models = stats.get("chat_models", {})
        for gauge, key in ((self.queue_depth, "waiting"), (self.running, "running")):
            gauge.clear()
            for name, values in models.items():
                gauge.labels(model=name).set(values.get(key, 0))
        self.adapters.set(stats.get("adapters", 0))

    def read_workers(self, workers: Any) -> None:
        """Set the worker and queue gauges from ``/health``'s ``WorkersHealth``."""
        self.workers.labels(state="alive").set(workers.alive)
        for state in ("expected", "running"):
            value = getattr(workers, state)
            self.workers.labels(state=state).set(value if value is not None else 0)
        self.queued_jobs.set(workers.queued_jobs)
        self.oldest_queued.set(workers.oldest_queued_seconds or 0.0)
        self.unserved.set(len(workers.unserved_kinds))

    def render(self) -> bytes:
        """Every metric in the Prometheus text format."""
        return generate_latest(self.registry)


def _route_of(scope: Scope) -> str:
    """The route template of a request (from the route table), its documentation path, or ``unmatched``."""
    template = (scope.get("state") or {}).get("route_template")  # set by the authorize gate
    if template is not None:
        return template
    method, path = scope.get("method", ""), scope.get("path", "")
    try:
        return rule_for(method, path)[0]
    except LookupError:
        pass
    app = scope.get("app")
    docs = {getattr(app, name, None) for name in ("openapi_url", "docs_url", "redoc_url")}
    return path if path in docs - {None} else UNMATCHED


class MetricsMiddleware(HttpMiddleware):
    """Pure ASGI middleware: count each HTTP request by route and status, and time it.

    Add it after the error handlers so that it sees final statuses. Bodies pass through
    untouched (streams are not buffered).
    """

    def __init__(self, app: ASGIApp, metrics: Metrics):
        super().__init__(app)
        self.metrics = metrics

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            method, route = scope.get("method", ""), _route_of(scope)
            self.metrics.requests.labels(method=method, route=route, status=str(status)).inc()
            self.metrics.latency.labels(method=method, route=route).observe(time.perf_counter() - started)


@router.get(
    "/metrics",
    include_in_schema=False,
    response_class=Response,
    summary="Prometheus metrics (operator)",
)
async def metrics(services: ServicesDep) -> Response:
    """Requests by route and status, latency, tokens by model, engine queues and adapters."""
    await run_in_threadpool(services.metrics.read_engine, services.engine)
    services.metrics.read_workers(await run_in_threadpool(workers_health, services))
    return Response(services.metrics.render(), media_type=CONTENT_TYPE_LATEST)
