"""``/v1/clusters``, unit limits on ``/v1/tenancies/{id}/limits``, job admission and ``/v1/cost-estimate``.

A fresh tenancy may hold 0 units until the operator raises its limit; creating or growing
past it answers 409 ``limit_exceeded`` with what it needs, uses and may use. A fine-tuning
job runs only on an active fine-tuning cluster of its model with free units.
"""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

FT = {"type": "fine-tuning", "unit_type": "small", "unit_count": 2, "base_model": "tiny"}
HOST = {"type": "hosting", "unit_type": "small", "unit_count": 1, "base_model": "tiny"}
EXAMPLES = "".join(json.dumps({"prompt": f"Say {w}", "completion": w}) + "\n" for w in "abcdefghijkl").encode()


class Tenant:
    def __init__(self, operator: TestClient, name: str):
        created = operator.post("/v1/tenancies", json={"name": name})
        assert created.status_code == 201, created.text
        self.id = created.json()["id"]
        self.http = TestClient(operator.app, headers={"Authorization": f"Bearer {created.json()['admin_key']}"})

    def upload(self) -> str:
        response = self.http.post("/v1/files", files={"file": ("t.jsonl", EXAMPLES)}, data={"purpose": "fine-tune"})
        assert response.status_code == 200, response.text
        return response.json()["id"]


@pytest.fixture(scope="module")
def gamma(client):
    return Tenant(client, "gamma")


def limits(client, tenancy_id, **units):
    if units:
        response = client.put(f"/v1/tenancies/{tenancy_id}/limits", json={"units": units})
    else:
        response = client.get(f"/v1/tenancies/{tenancy_id}/limits")
    assert response.status_code == 200, response.text
    return response.json()


def test_units_are_zero_until_the_operator_raises_them(client, gamma, check_error):
    shown = limits(client, gamma.id)
    assert shown["units"] == {"small": 0, "large": 0, "embed": 0} and shown["units_used"] == {}
    refused = check_error(gamma.http.post("/v1/clusters", json={**FT, "name": "ft"}), 409, param="unit_count")
    assert refused["code"] == "limit_exceeded"
    assert "needs 2 small units; your tenancy uses 0 of its limit of 0" in refused["message"]
    assert "Ask the operator" in refused["message"]
    check_error(gamma.http.put(f"/v1/tenancies/{gamma.id}/limits", json={"units": {"small": 4}}), 403)
    raised = limits(client, gamma.id, small=4)
    assert raised["units"] == {"small": 4, "large": 0, "embed": 0} and raised["requests_per_minute"] is None
    check_error(client.put(f"/v1/tenancies/{gamma.id}/limits", json={"units": {"gpu": 1}}), 400, param="units.gpu")
    check_error(client.put(f"/v1/tenancies/{gamma.id}/limits", json={"units": {"small": -1}}), 400,
                param="units.small")
    # a PUT without units keeps them
    client.put(f"/v1/tenancies/{gamma.id}/limits", json={"requests_per_minute": 1000})
    assert limits(client, gamma.id)["units"]["small"] == 4


def test_cluster_lifecycle_through_the_api(client, gamma, check_error):
    limits(client, gamma.id, small=4)
    ft = gamma.http.post("/v1/clusters", json={**FT, "name": "ft", "description": "weekly"})
    assert ft.status_code == 201, ft.text
    ft = ft.json()
    assert ft["state"] == "active" and ft["object"] == "cluster" and ft["units_held_by_jobs"] == 0
    assert ft["total_endpoint_capacity"] is None
    host = gamma.http.post("/v1/clusters", json={**HOST, "name": "host"}).json()
    assert (host["total_endpoint_capacity"], host["used_endpoint_capacity"]) == (50, 0)
    assert limits(client, gamma.id)["units_used"] == {"small": 3}
    over = check_error(gamma.http.post("/v1/clusters", json={**FT, "name": "ft2"}), 409)
    assert "uses 3 of its limit of 4" in over["message"]
    check_error(gamma.http.patch(f"/v1/clusters/{ft['id']}", json={"unit_count": 4}), 409)  # 3 + 2 > 4
    check_error(gamma.http.post("/v1/clusters", json={**FT, "name": "ft"}), 409, param="name")
    check_error(gamma.http.post("/v1/clusters", json={**FT, "name": "x", "unit_type": "embed"}), 400, param="unit_type")
    check_error(gamma.http.post("/v1/clusters", json={**FT, "name": "x", "unit_count": 1}), 400, param="unit_count")
    check_error(gamma.http.post("/v1/clusters", json={**FT, "name": "x", "base_model": "nope"}), 400,
                param="base_model")
    check_error(gamma.http.post("/v1/clusters", json={**FT, "name": "x", "type": "serving"}), 400, param="type")
    renamed = gamma.http.patch(f"/v1/clusters/{ft['id']}", json={"name": "ft-weekly", "unit_count": 3}).json()
    assert (renamed["name"], renamed["unit_count"], renamed["state"]) == ("ft-weekly", 3, "active")
    assert [c["name"] for c in gamma.http.get("/v1/clusters").json()["data"]] == ["ft-weekly", "host"]
    assert gamma.http.get(f"/v1/clusters/{host['id']}").json()["base_model"] == "tiny"

    endpoint = gamma.http.post("/v1/endpoints", json={"name": "base", "cluster_id": host["id"], "model": "tiny"})
    assert endpoint.status_code == 201, endpoint.text
    assert gamma.http.get(f"/v1/clusters/{host['id']}").json()["used_endpoint_capacity"] == 1
    assert "1 endpoint(s)" in check_error(gamma.http.delete(f"/v1/clusters/{host['id']}"), 409)["message"]
    assert gamma.http.delete(f"/v1/endpoints/{endpoint.json()['id']}").status_code == 200
    gone = gamma.http.delete(f"/v1/clusters/{host['id']}")
    assert gone.json() == {"id": host["id"], "object": "cluster", "deleted": True}
    assert gamma.http.get(f"/v1/clusters/{host['id']}").json()["state"] == "deleted"
    assert host["id"] not in gamma.http.get("/v1/clusters").text
    assert host["id"] in gamma.http.get("/v1/clusters", params={"include_deleted": True}).text
    check_error(gamma.http.patch(f"/v1/clusters/{host['id']}", json={"name": "back"}), 409)
    check_error(gamma.http.delete(f"/v1/clusters/{host['id']}"), 409)
    assert limits(client, gamma.id)["units_used"] == {"small": 3}
    assert gamma.http.delete(f"/v1/clusters/{ft['id']}").status_code == 200


def test_jobs_run_only_on_a_fine_tuning_cluster_with_free_units(client, check_error):
    delta = Tenant(client, "delta")
    file_id = delta.upload()
    body = {"model": "tiny", "training_file": file_id, "training_config": {"total_training_epochs": 1}}
    none = check_error(delta.http.post("/v1/fine_tuning/jobs", json=body), 409, param="cluster_id")
    assert none["code"] == "no_cluster" and "create one first" in none["message"]
    limits(client, delta.id, small=5)
    ft = delta.http.post("/v1/clusters", json={**FT, "name": "ft"}).json()
    host = delta.http.post("/v1/clusters", json={**HOST, "name": "host"}).json()
    first = delta.http.post("/v1/fine_tuning/jobs", json=body)
    assert first.status_code == 200 and first.json()["status"] == "queued", first.text
    assert first.json()["cluster_id"] == ft["id"]
    assert delta.http.get(f"/v1/clusters/{ft['id']}").json()["units_held_by_jobs"] == 2
    busy = check_error(delta.http.post("/v1/fine_tuning/jobs", json=body), 409)
    assert busy["code"] == "no_free_units"
    check_error(delta.http.post("/v1/fine_tuning/jobs", json={**body, "cluster_id": ft["id"]}), 409, param="cluster_id")
    check_error(delta.http.post("/v1/fine_tuning/jobs", json={**body, "cluster_id": host["id"]}), 400,
                param="cluster_id")
    # an identical retry with the same key answers the same job, even though the cluster is full
    keyed = {"Idempotency-Key": "only-once"}
    delta.http.post(f"/v1/fine_tuning/jobs/{first.json()['id']}/cancel")
    once = delta.http.post("/v1/fine_tuning/jobs", json=body, headers=keyed).json()
    assert delta.http.post("/v1/fine_tuning/jobs", json=body, headers=keyed).json()["id"] == once["id"]
    assert "under way" in check_error(delta.http.delete(f"/v1/clusters/{ft['id']}"), 409)["message"]
    delta.http.post(f"/v1/fine_tuning/jobs/{once['id']}/cancel")
    assert delta.http.delete(f"/v1/clusters/{ft['id']}").status_code == 200
    gone = check_error(delta.http.post("/v1/fine_tuning/jobs", json={**body, "cluster_id": ft["id"]}), 409)
    assert "deleted" in gone["message"]


def test_policies_decide_on_clusters(client, check_error):
    eps = Tenant(client, "epsilon")
    limits(client, eps.id, small=2)
    user = eps.http.post("/v1/users", json={"name": "ops"}).json()["id"]
    group = eps.http.post("/v1/groups", json={"name": "ops"}).json()["id"]
    eps.http.post(f"/v1/groups/{group}/members", json={"user_id": user})
    key = eps.http.post("/v1/api-keys", json={"name": "ops", "user_id": user}).json()["key"]
    ops = TestClient(client.app, headers={"Authorization": f"Bearer {key}"})
    check_error(ops.post("/v1/clusters", json={**HOST, "name": "h"}), 403)
    eps.http.post("/v1/policies", json={"name": "ops", "statements": "allow group ops to read clusters in tenancy"})
    check_error(ops.post("/v1/clusters", json={**HOST, "name": "h"}), 403)
    mine = eps.http.post("/v1/clusters", json={**HOST, "name": "h"}).json()
    assert ops.get(f"/v1/clusters/{mine['id']}").status_code == 200
    check_error(ops.patch(f"/v1/clusters/{mine['id']}", json={"name": "x"}), 403)
    check_error(ops.delete(f"/v1/clusters/{mine['id']}"), 403)


def test_cost_estimate_reproduces_the_worked_example(client, anon, check_error):
    body = {"fine_tuning": [{"unit_type": "small", "units": 8, "hours_per_job": 5, "jobs_per_month": 4}],
            "hosting": [{"unit_type": "small", "units": 1}]}
    cost = client.post("/v1/cost-estimate", json=body).json()
    assert cost["total_cost"] == "5876.00" and cost["total_unit_hours"] == 904 and cost["currency"] == "USD"
    assert [(line["kind"], line["unit_hours"], line["cost"]) for line in cost["lines"]] == [
        ("fine-tuning", 160, "1040.00"), ("hosting", 744, "4836.00")]
    check_error(anon.post("/v1/cost-estimate", json=body), 401)
    check_error(client.post("/v1/cost-estimate", json={"hosting": [{"unit_type": "gpu", "units": 1}]}), 400,
                param="hosting[0].unit_type")
    check_error(client.post("/v1/cost-estimate", json={}), 400, param="fine_tuning")


def test_metered_costs_cover_the_tenancys_hosting_clusters(client):
    zeta = Tenant(client, "zeta")
    assert zeta.http.get("/v1/costs").json()["total_cost"] == "0.00"
    limits(client, zeta.id, small=2)
    host = zeta.http.post("/v1/clusters", json={**HOST, "name": "h", "unit_count": 2}).json()
    metered = zeta.http.get("/v1/costs").json()
    assert [(line["resource_id"], line["unit_hours"]) for line in metered["lines"]] == [(host["id"], 1488)]
    assert metered["total_cost"] == "9672.00"  # 2 units × 744 h × $6.50: a month once begun is due
