"""``/v1/tenancies/{tenancy_id}/limits``: the operator reads and sets a tenancy's request and unit limits.

Unit limits (``units``: how many units of each type the tenancy's dedicated clusters may
hold, 0 by default as in OCI) are set only for the unit types a PUT names; the others keep
theirs. The response shows every unit type's limit and the units in use.

A stored limit overrides the service default (settings ``rate_*``); null restores the
default. A change applies to the next request (the limiter's cache of that tenancy is
dropped). The limits themselves are enforced by ``atelier.security.limits``; only the
operator key reaches these routes (``ROUTES``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from atelier.api.deps import ServicesDep, SessionDep
from atelier.api.services import Services
from atelier.cloud.unit_limits import set_unit_limits, unit_limits
from atelier.security.limits import Overrides, store_limits, stored_limits
from atelier.store.clusters import units_in_use
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
    units: dict[str, Annotated[int, Field(ge=0, le=1000)]] | None = Field(
        None, description="Unit type → units the tenancy's clusters may hold (only the types named change)."
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
    units_used: dict[str, int] = Field(description="Unit type → units the tenancy's clusters hold now.")
    updated_at: datetime | None = Field(description="When the operator last set them; null if never.")


def _out(services: Services, session: Session, tenancy_id: str, overrides: Overrides | None) -> TenancyLimitsOut:
    stored = overrides or Overrides()
    effective = stored.over(services.limits.defaults)
    return TenancyLimitsOut(
        tenancy_id=tenancy_id,
        requests_per_minute=stored.requests_per_minute,
        concurrent_generations=stored.concurrent_generations,
        tokens_per_minute=stored.tokens_per_minute,
        effective=EffectiveLimits(**vars(effective)),
        updated_at=stored.updated_at,
        units=unit_limits(session, tenancy_id, services.units),
        units_used=units_in_use(session, tenancy_id),
    )


@router.get("/tenancies/{tenancy_id}/limits", response_model=TenancyLimitsOut, summary="Retrieve a tenancy's limits")
def get_limits(tenancy_id: str, services: ServicesDep, session: SessionDep) -> TenancyLimitsOut:
    """The tenancy's stored limits and those in force (operator). 404 for an unknown tenancy."""
    repos.get_tenancy(session, tenancy_id)
    return _out(services, session, tenancy_id, stored_limits(session, tenancy_id))


@router.put("/tenancies/{tenancy_id}/limits", response_model=TenancyLimitsOut, summary="Set a tenancy's limits")
def set_limits(tenancy_id: str, body: TenancyLimitsIn, services: ServicesDep, session: SessionDep) -> TenancyLimitsOut:
    """Replace the tenancy's request limits (operator); a null field restores the service default.
    Sets the unit limits of the unit types named in `units`. 404 for an unknown tenancy."""
    repos.get_tenancy(session, tenancy_id)
    if body.units:
        set_unit_limits(session, tenancy_id, body.units, services.units)
    stored = store_limits(session, tenancy_id, Overrides(**body.model_dump(exclude={"units"})))
    session.commit()
    services.limits.invalidate(tenancy_id)
    return _out(services, session, tenancy_id, stored)
