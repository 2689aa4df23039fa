"""Unit-hours with OCI's commitments, priced in Decimal: the worked example to the cent, and metering."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from pydantic import ValidationError

from atelier.catalog import Catalog, ModelSource, ModelSpec
from atelier.cloud.costs import EstimateRequest, estimate, fine_tuning_hours, hosting_hours, metered, months_begun
from atelier.cloud.units import UnitTable
from atelier.errors import InvalidInput
from atelier.principal import Principal
from atelier.store import repos
from atelier.store.tables import Cluster, Job, utcnow

TINY = ModelSpec(name="tiny", kind="chat", source=ModelSource(path="/nonexistent"))


def test_the_worked_example_costs_exactly_5876():
    body = EstimateRequest.model_validate({
        "fine_tuning": [{"unit_type": "small", "units": 8, "hours_per_job": 5, "jobs_per_month": 4}],
        "hosting": [{"unit_type": "small", "units": 1}],
    })  # fmt: skip
    cost = estimate(body, UnitTable.load())
    assert [line.unit_hours for line in cost.lines] == [160, 744]
    assert [line.cost for line in cost.lines] == [Decimal("1040.00"), Decimal("4836.00")]
    assert cost.total_unit_hours == 904
    assert cost.total_cost == Decimal("5876.00") and str(cost.total_cost) == "5876.00"
    assert cost.model_dump(mode="json")["total_cost"] == "5876.00"  # money is a string in JSON, never a float


@pytest.mark.parametrize(("hours", "jobs", "billed"), [
    (5, 4, 20), (Decimal("0.2"), 1, 1), (Decimal("0.2"), 3, 3), (Decimal("1.01"), 1, 2), (1, 1, 1), (0, 1, 1),
])  # fmt: skip
def test_fine_tuning_is_hourly_with_a_one_hour_minimum_per_job(hours, jobs, billed):
    assert fine_tuning_hours(hours, jobs) == billed


@pytest.mark.parametrize(("hours", "months"), [(0, 1), (1, 1), (744, 1), (744.5, 2), (2000, 3)])
def test_hosting_has_no_partial_month(hours, months):
    assert months_begun(hours) == months
    assert hosting_hours(months) == 744 * months


def test_lines_name_their_bad_unit_type():
    body = EstimateRequest.model_validate({"hosting": [{"unit_type": "small", "units": 1},
                                                       {"unit_type": "gpu", "units": 1}]})
    with pytest.raises(InvalidInput) as caught:
        estimate(body, UnitTable.load())
    assert caught.value.param == "hosting[1].unit_type"
    with pytest.raises(InvalidInput) as caught:
        estimate(EstimateRequest.model_validate({}), UnitTable.load())
    assert caught.value.param == "fine_tuning"
    with pytest.raises(ValidationError):
        EstimateRequest.model_validate({"hosting": [{"unit_type": "small", "units": 0}]})


def test_metered_cost_of_clusters_and_jobs(db):
    now = utcnow()
    with db.session() as s:
        tenancy = repos.create_tenancy(s, "metered").id
        other = repos.create_tenancy(s, "other").id
    principal = Principal(tenancy, "key_1", "admin")

    def cluster(tenancy_id, kind, units, active_hours_ago, deleted_hours_ago=None):
        row = Cluster(tenancy_id=tenancy_id, name=f"c{units}{kind}", type=kind, unit_type="small", unit_count=units,
                      base_model="tiny", state="deleted" if deleted_hours_ago is not None else "active",
                      created_at=now - timedelta(hours=active_hours_ago),
                      updated_at=now, active_at=now - timedelta(hours=active_hours_ago),
                      deleted_at=None if deleted_hours_ago is None else now - timedelta(hours=deleted_hours_ago))
        s.add(row)
        s.flush()
        return row.id

    def job(cluster_id, ran_hours, finished=True, started=True):
        row = Job(tenancy_id=tenancy, kind="fine-tune", state="succeeded" if finished else "running",
                  payload={"model": "tiny"}, cancel_requested=False, attempts=1, created_at=now - timedelta(hours=10),
                  started_at=now - timedelta(hours=9) if started else None,
                  finished_at=now - timedelta(hours=9) + timedelta(hours=ran_hours) if finished else None,
                  cluster_id=cluster_id)
        s.add(row)
        s.flush()
        return row.id

    with db.session() as s:
        hosting = cluster(tenancy, "hosting", 2, active_hours_ago=800)  # 2 months begun
        gone = cluster(tenancy, "hosting", 1, active_hours_ago=100, deleted_hours_ago=99)  # 1 h: a whole month
        ft = cluster(tenancy, "fine-tuning", 4, active_hours_ago=20)
        short, long_ = job(ft, 0.25), job(ft, 2.5)
        running = job(ft, 0, finished=False)  # started 9 h ago, still running: 9 h so far
        job(ft, 0, finished=False, started=False)  # queued: nothing yet
        cluster(other, "hosting", 5, active_hours_ago=10)
    cost = metered(principal, db, Catalog([TINY]), UnitTable.load(), now=now)
    by_id = {line.resource_id: line for line in cost.lines}
    assert set(by_id) == {hosting, gone, short, long_, running}
    assert by_id[hosting].unit_hours == 2 * 744 * 2 and by_id[gone].unit_hours == 744
    assert (by_id[short].unit_hours, by_id[long_].unit_hours, by_id[running].unit_hours) == (2, 6, 18)  # 2 units/job
    assert cost.total_unit_hours == 2976 + 744 + 2 + 6 + 18
    assert cost.total_cost == Decimal(cost.total_unit_hours) * Decimal("6.50")
    only = metered(principal, db, Catalog([TINY]), UnitTable.load(), now=now, clusters=[gone])
    assert [line.resource_id for line in only.lines] == [gone]
