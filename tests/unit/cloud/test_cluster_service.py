"""Clusters as a service: unit limits (0 by default), sizing, lifecycle, and where a fine-tuning job may run."""

from __future__ import annotations

import pytest

from atelier.catalog import BUILTIN, Catalog, ModelSource, ModelSpec
from atelier.cloud.clusters import ClusterRequest, ClusterService, ClusterUpdate
from atelier.cloud.unit_limits import set_unit_limits, unit_limits, units_in_use
from atelier.cloud.units import UnitTable
from atelier.errors import Conflict, InvalidInput, NotFound
from atelier.principal import Principal
from atelier.store import repos
from atelier.store.tables import Endpoint, Job, utcnow

TINY = ModelSpec(name="tiny", kind="chat", source=ModelSource(path="/nonexistent"))
OTHER = ModelSpec(name="other", kind="chat", source=ModelSource(path="/nonexistent"))
UNITS = UnitTable.load()


@pytest.fixture
def setup(db):
    with db.session() as s:
        a = Principal(repos.create_tenancy(s, "a").id, "key_a", "admin")
        b = Principal(repos.create_tenancy(s, "b").id, "key_b", "admin")
    return db, ClusterService(db, Catalog(list(BUILTIN) + [TINY, OTHER]), UNITS), a, b


def grant(db, principal, **units):
    with db.session() as s:
        return set_unit_limits(s, principal.tenancy_id, units, UNITS)


def request(name="c", type="fine-tuning", units=2, model="tiny", unit_type="small"):
    return ClusterRequest(name=name, type=type, unit_type=unit_type, unit_count=units, base_model=model)


def add_job(db, principal, cluster_id, state="queued"):
    with db.session() as s:
        job = Job(tenancy_id=principal.tenancy_id, kind="fine-tune", state=state, payload={"model": "tiny"},
                  cancel_requested=False, attempts=0, created_at=utcnow(), cluster_id=cluster_id)
        s.add(job)
        s.flush()
        return job.id


def test_limits_are_zero_until_the_operator_raises_them(setup):
    db, clusters, a, _ = setup
    with db.session() as s:
        assert unit_limits(s, a.tenancy_id, UNITS) == {"small": 0, "large": 0, "embed": 0}
    with pytest.raises(Conflict) as caught:
        clusters.create(a, request())
    error = caught.value
    assert error.code == "limit_exceeded" and error.param == "unit_count"
    assert "needs 2 small units; your tenancy uses 0 of its limit of 0 small units" in error.message
    assert "Ask the operator" in error.message and "--units small=2" in error.message
    assert grant(db, a, small=4) == {"small": 4, "large": 0, "embed": 0}
    first = clusters.create(a, request("ft"))
    assert first.state == "active" and first.active_at is not None and first.id.startswith("dac_")
    clusters.create(a, request("host", type="hosting", units=1))
    with pytest.raises(Conflict) as caught:
        clusters.create(a, request("ft2"))
    assert "uses 3 of its limit of 4" in caught.value.message
    with db.session() as s:
        assert units_in_use(s, a.tenancy_id) == {"small": 3}


def test_sizing_decides_what_a_cluster_may_be(setup):
    db, clusters, a, _ = setup
    grant(db, a, small=10, large=10, embed=10)
    cases = [
        (request(unit_type="embed"), "unit_type", "cannot do fine-tuning"),
        (request(unit_type="large"), "unit_type", "sized in small units"),
        (request(units=1), "unit_count", "at least 2"),
        (request(model="nope"), "base_model", "does not exist"),
        (request(model="all-minilm-l6-v2", unit_type="embed"), "unit_type", "cannot do fine-tuning"),
        (request(type="hosting", model="all-minilm-l6-v2", unit_type="small", units=1), "unit_type", "cannot do embedding"),
    ]  # fmt: skip
    for body, param, text in cases:
        with pytest.raises(InvalidInput) as caught:
            clusters.create(a, body)
        assert caught.value.param == param and text in caught.value.message, (body, caught.value.message)
    embedding = clusters.create(a, request("emb", type="hosting", model="all-minilm-l6-v2", unit_type="embed", units=1))
    assert embedding.unit_type == "embed"


def test_update_and_delete_follow_the_lifecycle(setup):
    db, clusters, a, b = setup
    grant(db, a, small=6)
    row = clusters.create(a, request("ft", units=2))
    clusters.create(a, request("other-name", units=2))
    with pytest.raises(Conflict):
        clusters.create(a, request("ft", units=2))  # name taken
    with pytest.raises(Conflict) as caught:
        clusters.update(a, row.id, ClusterUpdate(unit_count=5))  # 2 + 2 + 3 more > 6
    assert caught.value.code == "limit_exceeded" and "growing cluster 'ft' from 2 to 5" in caught.value.message
    assert clusters.get(a, row.id).state == "active"  # a refused update changes nothing
    grown = clusters.update(a, row.id, ClusterUpdate(unit_count=4, name="ft-big"))
    assert (grown.unit_count, grown.name, grown.state) == (4, "ft-big", "active")
    with pytest.raises(InvalidInput):
        clusters.update(a, row.id, ClusterUpdate(unit_count=1))  # below the model's sizing
    with pytest.raises(NotFound):
        clusters.get(b, row.id)
    with pytest.raises(NotFound):
        clusters.delete(b, row.id)
    job = add_job(db, a, row.id, "running")
    add_job(db, a, row.id, "queued")
    with pytest.raises(Conflict) as caught:
        clusters.update(a, row.id, ClusterUpdate(unit_count=2))  # two jobs hold 4 units
    assert "hold 4 units" in caught.value.message
    with pytest.raises(Conflict) as caught:
        clusters.delete(a, row.id)
    assert "2 fine-tuning job(s) under way" in caught.value.message
    with db.session() as s:
        for j in s.query(Job).filter(Job.cluster_id == row.id):
            j.state = "succeeded" if j.id == job else "cancelled"
    deleted = clusters.delete(a, row.id)
    assert deleted.state == "deleted" and deleted.deleted_at is not None
    assert [c.name for c in clusters.list(a)] == ["other-name"]
    assert [c.name for c in clusters.list(a, include_deleted=True)] == ["ft-big", "other-name"]
    with pytest.raises(Conflict):
        clusters.update(a, row.id, ClusterUpdate(name="again"))
    with pytest.raises(Conflict):
        clusters.delete(a, row.id)
    clusters.create(a, request("ft-big", units=4))  # the name and the units are free again


def test_a_hosting_cluster_with_endpoints_cannot_be_deleted(setup):
    db, clusters, a, _ = setup
    grant(db, a, small=1)
    row = clusters.create(a, request("host", type="hosting", units=1))
    with db.session() as s:
        s.add(Endpoint(tenancy_id=a.tenancy_id, cluster_id=row.id, name="ep", base_model="tiny", state="active",
                       created_at=utcnow(), updated_at=utcnow()))
    with db.session() as s:
        assert clusters.capacity(s, clusters.get(a, row.id)) == (50, 1)
    with pytest.raises(Conflict) as caught:
        clusters.delete(a, row.id)
    assert "1 endpoint(s)" in caught.value.message


def test_a_job_runs_on_an_active_fine_tuning_cluster_with_free_units(setup):
    db, clusters, a, b = setup
    with db.session() as s, pytest.raises(Conflict) as caught:
        clusters.admit_job(s, a, TINY, None)
    assert caught.value.code == "no_cluster" and "create one first" in caught.value.message
    grant(db, a, small=9)
    grant(db, b, small=2)
    small = clusters.create(a, request("small", units=2))
    host = clusters.create(a, request("host", type="hosting", units=1))
    other = clusters.create(a, request("other", model="other", units=2))
    theirs = clusters.create(b, request("theirs", units=2))
    with db.session() as s:
        assert clusters.admit_job(s, a, TINY, None).id == small.id
        for bad, param in ((theirs.id, "cluster_id"), ("dac_" + "0" * 24, "cluster_id"), (host.id, "cluster_id"),
                           (other.id, "cluster_id")):
            with pytest.raises(InvalidInput) as caught:
                clusters.admit_job(s, a, TINY, bad)
            assert caught.value.param == param
        with pytest.raises(InvalidInput) as caught:
            clusters.admit_job(s, a, TINY, small.id, may_use=lambda row: False)  # policies: like a missing one
        assert "not found or not authorized" in caught.value.message
    add_job(db, a, small.id)  # holds its 2 units
    with db.session() as s:
        with pytest.raises(Conflict) as caught:
            clusters.admit_job(s, a, TINY, small.id)
        assert caught.value.code == "no_free_units" and "0 free units" in caught.value.message
        with pytest.raises(Conflict) as caught:
            clusters.admit_job(s, a, TINY, None)
        assert caught.value.code == "no_free_units" and "busy" in caught.value.message
    big = clusters.create(a, request("big", units=2))
    with db.session() as s:
        assert clusters.admit_job(s, a, TINY, None).id == big.id  # the first with free units
    clusters.update(a, small.id, ClusterUpdate(unit_count=4))
    with db.session() as s:
        assert clusters.admit_job(s, a, TINY, None).id == small.id
        assert clusters.held_units(s, clusters.get(a, small.id)) == 2
