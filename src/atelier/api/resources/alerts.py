"""``GET /v1/alerts``: anomaly alerts (bursts of 401s, enumeration, new addresses, usage spikes).

Administrators read their own tenancy's alerts; the operator reads every alert, those that
belong to no tenancy (a burst of 401s from an address) included, or one tenancy's
(``tenancy_id``). Another tenancy's id from an administrator answers 404, like a missing
one. Alerts are raised by ``atelier.security.alerts``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from atelier.api.deps import AccessDep, ServicesDep
from atelier.api.envelopes import ObjectList
from atelier.errors import InvalidInput, NotFound
from atelier.security.alerts import KINDS, Kind, list_alerts

router = APIRouter(tags=["audit"])

MAX_LIMIT = 1000


class AlertOut(BaseModel):
    """An anomaly the service noticed."""

    object: str = Field("alert", description="Always `alert`.")
    id: str = Field(description="The alert's id (`alr_…`).")
    kind: Kind = Field(description=f"What was noticed: one of {', '.join(KINDS)}.")
    tenancy_id: str | None = Field(description="The tenancy concerned; null for a burst of 401s (no tenancy known).")
    key_id: str | None = Field(description="The API key concerned, if any.")
    source: str | None = Field(description="The client address concerned, if any.")
    detail: str = Field(description="What happened, in words.")
    created_at: datetime = Field(description="When it was raised (UTC).")


class AlertQuery(BaseModel):
    """Filters of ``GET /v1/alerts`` (query parameters)."""

    kind: Kind | None = Field(None, description="Only alerts of this kind.")
    since: datetime | None = Field(None, description="Raised at or after this time (ISO 8601; UTC if no zone).")
    limit: int = Field(100, ge=1, le=MAX_LIMIT, description="Most alerts to return (the newest ones).")
    tenancy_id: str | None = Field(None, max_length=200, description="Operator only: one tenancy's alerts.")


@router.get("/alerts", response_model=ObjectList[AlertOut], summary="List anomaly alerts")
async def list_anomaly_alerts(
    services: ServicesDep, access: AccessDep, query: Annotated[AlertQuery, Query()]
) -> ObjectList[AlertOut]:
    """The caller's tenancy's alerts (every alert for the operator), oldest first.

    Raises:
        NotFound: ``tenancy_id`` of another tenancy from someone other than the operator.
        InvalidInput: ``since`` out of range once moved to UTC.
    """
    principal = access.principal
    if principal.is_operator:
        every = query.tenancy_id is None
        scope = query.tenancy_id
    elif query.tenancy_id is not None and query.tenancy_id != principal.tenancy_id:
        raise NotFound(f"tenancy {query.tenancy_id!r} not found", param="tenancy_id")
    else:
        every, scope = False, principal.tenancy_id
    since = query.since
    if since is not None:
        try:
            since = since.replace(tzinfo=UTC) if since.tzinfo is None else since.astimezone(UTC)
        except OverflowError:
            raise InvalidInput("the time is out of range", param="since") from None
    alerts = await run_in_threadpool(
        list_alerts, services.db, scope, every_tenancy=every, kind=query.kind, since=since, limit=query.limit
    )
    return ObjectList[AlertOut](data=[AlertOut(**alert.to_dict()) for alert in alerts])
