"""``/v1/tenancies/{tenancy_id}/limits``: the operator reads and sets a tenancy's request limits.

A stored limit overrides the service default (settings ``rate_*``); null restores the
default. A change applies to the next request (the limiter's cache of that tenancy is
dropped). The limits themselves are enforced by ``atelier.security.limits``; only the
operator key reaches these routes (``ROUTES``).
"""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from atelier.api.deps import SessionDep
from atelier.security.limits import Limits, Overrides, store_limits, stored_limits
from atelier.store import repos

router = APIRouter(tags=["tenancies"])


class TenancyLimitsIn(BaseModel):
    """A tenancy's limits; null (or absent) means the service default."""

    requests_per_minute: int | None = Field(
        None, ge=1, le=10_000_000, description="Requests in any 60 s window (429 above)."
    )
    concurrent_generations: int | None = Field(
        None, ge=1, le=100_000, description="Chat and text completions running at once (429 above)."
    )
    tokens_per_minute: int | None = Field(
        None, ge=1, le=10**12, description="Prompt + completion (and embedded) tokens in any 60 s window (429 above)."
    )


class EffectiveLimits(BaseModel):
    """The limits in force: each override, else the service default."""

    requests_per_minute: int = Field(description="Requests in any 60 s window.")
    concurrent_generations: int = Field(description="Generations running at once.")
    tokens_per_minute: int = Field(description="Tokens in any 60 s window.")


class TenancyLimitsOut(TenancyLimitsIn):
    """A tenancy's stored limits (null = default) and the limits in force."""

    object: str = Field("tenancy.limits", description="Always `tenancy.limits`.")
    tenancy_id: str = Field(description="The tenancy.")
    effective: EffectiveLimits = Field(description="The limits in force.")
    updated_at: datetime | None = Field(description="When the operator last set them; null if never.")


def _out(request: Request, tenancy_id: str, overrides: Overrides | None) -> TenancyLimitsOut:
    limiter = getattr(request.app.state, "limits", None)
    defaults = limiter.defaults if limiter is not None else Limits.from_settings(request.app.state.settings)
    stored = overrides or Overrides()
    effective = stored.over(defaults)
    return TenancyLimitsOut(
        tenancy_id=tenancy_id,
        requests_per_minute=stored.requests_per_minute,
        concurrent_generations=stored.concurrent_generations,
        tokens_per_minute=stored.tokens_per_minute,
        effective=EffectiveLimits(**vars(effective)),
        updated_at=stored.updated_at,
    )


@router.get("/tenancies/{tenancy_id}/limits", response_model=TenancyLimitsOut, summary="Retrieve a tenancy's limits")
def get_limits(tenancy_id: str, request: Request, session: SessionDep) -> TenancyLimitsOut:
    """The tenancy's stored limits and those in force (operator). 404 for an unknown tenancy."""
    repos.get_tenancy(session, tenancy_id)
    return _out(request, tenancy_id, stored_limits(session, tenancy_id))


@router.put("/tenancies/{tenancy_id}/limits", response_model=TenancyLimitsOut, summary="Set a tenancy's limits")
def set_limits(tenancy_id: str, body: TenancyLimitsIn, request: Request, session: SessionDep) -> TenancyLimitsOut:
    """Replace the tenancy's limits (operator); a null field restores the service default.
    404 for an unknown tenancy."""
    repos.get_tenancy(session, tenancy_id)
    stored = store_limits(session, tenancy_id, Overrides(**body.model_dump()))
    session.commit()
    limiter = getattr(request.app.state, "limits", None)
    if limiter is not None:
        limiter.invalidate(tenancy_id)
    return _out(request, tenancy_id, stored)
