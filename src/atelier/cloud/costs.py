"""Cost in unit-hours, with OCI's commitments, priced by the unit table (``Decimal`` money).

Two billing rules, for estimates and metering alike:

- **fine-tuning** is billed by the hour, with a one-hour minimum per job, each job's hours
  rounded up: ``units × max(1, ceil(hours)) × jobs``;
- **hosting** is billed by the month of 744 hours, with no partial month: a month once
  begun is due in full: ``units × 744 × months``.

The worked example: a weekly 5-hour fine-tuning on 8 small units (8 × 5 × 4 = 160 unit-hours)
plus hosting on 1 small unit around the clock (744) is 904 unit-hours × $6.50 = $5,876.00.

Metering applies the same rules to what a tenancy has: each hosting cluster from when it
became active until it was deleted (or now), each fine-tuning job from when it started
until it ended (or now), at the units it held. Fine-tuning clusters themselves are billed
through their jobs. Knows nothing about HTTP.
"""

from __future__ import annotations

import math
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from atelier.catalog import Catalog
from atelier.cloud.units import MAX_UNITS, UnitTable
from atelier.errors import InvalidInput, NotFound
from atelier.principal import Principal
from atelier.store import clusters as repo
from atelier.store.db import Database
from atelier.store.tables import utcnow

HOURS_PER_MONTH = 744
"""A billing month: 31 days × 24 hours."""
CENT = Decimal("0.01")


class FineTuningLine(BaseModel):
    """Fine-tuning in an estimate: jobs of ``hours_per_job`` on ``units`` units, per month."""

    model_config = ConfigDict(extra="forbid")

    unit_type: str = Field(min_length=1, max_length=32, description="A unit type, e.g. `small`.")
    units: int = Field(ge=1, le=MAX_UNITS, description="Units one job holds.")
    hours_per_job: Decimal = Field(
        gt=0, le=HOURS_PER_MONTH, description="Hours one job runs (billed rounded up, 1 at least)."
    )
    jobs_per_month: int = Field(1, ge=1, le=10_000, description="Jobs a month.")


class HostingLine(BaseModel):
    """Hosting in an estimate: a cluster of ``units`` units kept for ``months`` months."""

    model_config = ConfigDict(extra="forbid")

    unit_type: str = Field(min_length=1, max_length=32, description="A unit type, e.g. `small`.")
    units: int = Field(ge=1, le=MAX_UNITS, description="Units of the hosting cluster.")
    months: int = Field(1, ge=1, le=120, description="Whole months of 744 hours.")


class EstimateRequest(BaseModel):
    """The body of ``POST /v1/cost-estimate``."""

    model_config = ConfigDict(extra="forbid")

    fine_tuning: list[FineTuningLine] = Field(default_factory=list, max_length=100, description="Fine-tuning lines.")
    hosting: list[HostingLine] = Field(default_factory=list, max_length=100, description="Hosting lines.")


class CostLine(BaseModel):
    """One priced line."""

    kind: Literal["fine-tuning", "hosting"]
    unit_type: str
    units: int
    billed_hours: int = Field(description="Hours billed per unit (after the commitment's rounding).")
    unit_hours: int = Field(description="units × billed hours.")
    price_per_unit_hour: Decimal
    cost: Decimal
    detail: str = Field(description="How the hours were counted.")
    resource_id: str | None = Field(None, description="The cluster or job metered (metering only).")


class Cost(BaseModel):
    """Priced lines and their total."""

    object: str = "cost"
    currency: str
    lines: list[CostLine]
    total_unit_hours: int
    total_cost: Decimal


def fine_tuning_hours(hours_per_job: Decimal | float, jobs: int = 1) -> int:
    """Billed hours per unit of ``jobs`` jobs of ``hours_per_job``: each rounded up, one at least."""
    return max(1, math.ceil(Decimal(str(hours_per_job)))) * jobs


def hosting_hours(months: int) -> int:
    """Billed hours per unit of ``months`` whole months."""
    return HOURS_PER_MONTH * months


def months_begun(hours: Decimal | float) -> int:
    """Months of 744 hours begun in ``hours`` (one at least: no partial month)."""
    return max(1, math.ceil(Decimal(str(hours)) / HOURS_PER_MONTH))


def _line(table: UnitTable, kind: str, unit_type: str, units: int, hours: int, detail: str,
          param: str, resource_id: str | None = None) -> CostLine:
    price = table.get(unit_type, param=param).price_per_unit_hour
    unit_hours = units * hours
    return CostLine(kind=kind, unit_type=unit_type, units=units, billed_hours=hours, unit_hours=unit_hours,
                    price_per_unit_hour=price, cost=(price * unit_hours).quantize(CENT, ROUND_HALF_UP),
                    detail=detail, resource_id=resource_id)


def _total(table: UnitTable, lines: list[CostLine]) -> Cost:
    total = sum((line.cost for line in lines), Decimal(0)).quantize(CENT, ROUND_HALF_UP)
    return Cost(currency=table.currency, lines=lines, total_unit_hours=sum(line.unit_hours for line in lines),
                total_cost=total)


def estimate(body: EstimateRequest, table: UnitTable) -> Cost:
    """Price a month of the given fine-tuning and hosting.

    Raises:
        InvalidInput: No line at all, or an unknown unit type (``param`` names the line, e.g.
            ``hosting[0].unit_type``).
    """
    if not body.fine_tuning and not body.hosting:
        raise InvalidInput("give at least one fine_tuning or hosting line", param="fine_tuning")
    lines = []
    for i, ft in enumerate(body.fine_tuning):
        hours = fine_tuning_hours(ft.hours_per_job, ft.jobs_per_month)
        detail = f"{ft.jobs_per_month} job(s) × {max(1, math.ceil(ft.hours_per_job))} h (1 h minimum per job)"
        lines.append(_line(table, "fine-tuning", ft.unit_type, ft.units, hours, detail,
                           f"fine_tuning[{i}].unit_type"))
    for i, host in enumerate(body.hosting):
        detail = f"{host.months} month(s) × {HOURS_PER_MONTH} h (no partial month)"
        lines.append(_line(table, "hosting", host.unit_type, host.units, hosting_hours(host.months), detail,
                           f"hosting[{i}].unit_type"))
    return _total(table, lines)


def _hours(start: datetime, end: datetime) -> Decimal:
    return Decimal(str(max(0.0, (end - start).total_seconds()))) / 3600


def metered(principal: Principal, db: Database, catalog: Catalog, table: UnitTable, *,
            now: datetime | None = None, clusters: list[str] | None = None) -> Cost:
    """The cost so far of the tenancy's hosting clusters and fine-tuning jobs.

    Args:
        principal: The caller; only its tenancy is metered.
        db: The metadata database.
        catalog: The base models (a job holds its model's fine-tuning units).
        table: The unit table (prices).
        now: The end of running periods; default the current time.
        clusters: Only these clusters and their jobs (the ones the caller may see); None: all.
    """
    now = now or utcnow()
    with db.session() as session:
        rows = repo.list_clusters(session, principal, include_deleted=True)
        by_id = {row.id: row for row in rows if clusters is None or row.id in clusters}
        jobs = repo.started_jobs_on(session, principal, list(by_id))
    lines = []
    for row in by_id.values():
        if row.type != "hosting" or row.active_at is None or row.unit_type not in table.unit_types:
            continue
        months = months_begun(_hours(row.active_at, row.deleted_at or now))
        detail = f"{months} month(s) begun since {row.active_at:%Y-%m-%d %H:%M} UTC"
        lines.append(_line(table, "hosting", row.unit_type, row.unit_count, hosting_hours(months), detail,
                           "unit_type", row.id))
    for job in jobs:
        cluster = by_id[job.cluster_id]
        try:
            units = catalog.get(job.payload.get("model", cluster.base_model)).sizing.fine_tuning_units
        except NotFound:
            units = cluster.unit_count
        if cluster.unit_type not in table.unit_types or units == 0:
            continue
        hours = fine_tuning_hours(_hours(job.started_at, job.finished_at or now))
        detail = f"job on {cluster.id}: {hours} h (rounded up, 1 h minimum)"
        lines.append(_line(table, "fine-tuning", cluster.unit_type, units, hours, detail, "unit_type", job.id))
    return _total(table, lines)
