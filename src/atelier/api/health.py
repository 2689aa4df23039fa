"""``GET /health``: liveness and the engine's state, without authentication."""

from __future__ import annotations

from fastapi import APIRouter

from atelier import __version__
from atelier.api.deps import EngineDep
from atelier.api.openai.protocol import Health

router = APIRouter(tags=["service"])


@router.get("/health", response_model=Health, summary="Service health")
async def health(engine: EngineDep) -> Health:
    """``ok`` while the service answers, with the engine's loaded models and queues."""
    return Health(version=__version__, engine=engine.health())
