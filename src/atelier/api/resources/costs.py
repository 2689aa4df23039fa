"""``POST /v1/cost-estimate`` and ``GET /v1/costs``: what dedicated capacity costs, in unit-hours and money.

The estimate prices planned fine-tuning (by the hour, one-hour minimum per job) and hosting
(by the 744-hour month, no partial month) with the unit table's prices; any authenticated
caller may ask. ``/v1/costs`` meters the tenancy's hosting clusters and fine-tuning jobs
so far under the same rules, over the clusters the caller may inspect. The arithmetic is
``atelier.cloud.costs``'s (``Decimal``; amounts are JSON strings such as ``"5876.00"``).
"""

from __future__ import annotations

from fastapi import APIRouter

from atelier.api.deps import GuardDep, ServicesDep
from atelier.cloud.costs import Cost, EstimateRequest, estimate, metered

router = APIRouter(tags=["costs"])


@router.post("/cost-estimate", response_model=Cost, summary="Estimate a month of dedicated capacity")
def cost_estimate(body: EstimateRequest, services: ServicesDep) -> Cost:
    """Unit-hours and cost per line and in total (fine-tuning: hourly, 1 h minimum per job; hosting: 744-h months)."""
    return estimate(body, services.units)


@router.get("/costs", response_model=Cost, summary="Metered cost so far")
def costs_so_far(services: ServicesDep, guard: GuardDep) -> Cost:
    """The cost so far of your hosting clusters and fine-tuning jobs (the clusters you may inspect)."""
    visible = [row.id for row in guard.visible(services.clusters.list(guard.principal, include_deleted=True))]
    return metered(guard.principal, services.db, services.catalog, services.units, clusters=visible)
