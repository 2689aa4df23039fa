"""``GET /health``: liveness and the engine's state, without authentication."""

from __future__ import annotations

from fastapi import APIRouter

from atelier import __version__
from atelier.api.services import ServicesDep
from atelier.api.openai.protocol import Health

router = APIRouter(tags=["service"])


@router.get("/health", response_model=Health, summary="Service health")
async def health(services: ServicesDep) -> Health:
    """``ok`` while the service answers, with the engine's loaded models and queues."""
    return Health(version=__version__, engine=services.engine.health())
