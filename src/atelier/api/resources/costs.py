"""``POST /v1/cost-estimate`` and ``GET /v1/costs``: what dedicated capacity costs, in unit-hours and money.

The estimate prices planned fine-tuning (by the hour, one-hour minimum per job) and hosting
(by the 744-hour month, no partial month) with the unit table's prices; any authenticated
caller may ask. ``/v1/costs`` meters the tenancy's hosting clusters and fine-tuning jobs
so far under the same rules, over the clusters the caller may inspect. The arithmetic is
``atelier.cloud.costs``'s (``Decimal``; amounts are JSON strings such as ``"5876.00"``).
"""

from __future__ import annotations

from fastapi import APIRouter, Request

from atelier.api.deps import AccessDep
from atelier.api.resources.clusters import TYPE as CLUSTERS, cluster_service, compartment_path
from atelier.cloud.costs import Cost, EstimateRequest, estimate, metered

router = APIRouter(tags=["costs"])


@router.post("/cost-estimate", response_model=Cost, summary="Estimate a month of dedicated capacity")
def cost_estimate(body: EstimateRequest, request: Request) -> Cost:
    """Unit-hours and cost per line and in total (fine-tuning: hourly, 1 h minimum per job; hosting: 744-h months)."""
    return estimate(body, request.app.state.units)


@router.get("/costs", response_model=Cost, summary="Metered cost so far")
def costs_so_far(request: Request, access: AccessDep) -> Cost:
    """The cost so far of your hosting clusters and fine-tuning jobs (the clusters you may inspect)."""
    state = request.app.state
    visible = [
        row.id for row in cluster_service(request).list(access.principal, include_deleted=True)
        if access.visible(CLUSTERS, target_id=row.id, target_name=row.name,
                          compartment_path=compartment_path(request, access, row.compartment_id))
    ]  # fmt: skip
    return metered(access.principal, state.db, state.catalog, state.units, clusters=visible)
