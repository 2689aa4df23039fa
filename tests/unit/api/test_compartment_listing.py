"""Listings follow exactly the rule GET applies, for every resource type governed by compartments.

A user whose only policy grants one verb on one resource type in compartment ``eng`` must
list exactly the objects of that type in ``eng`` and its child ``eng:ml`` (the ones GET does
not answer 404 for), and none at the tenancy root or in the sibling ``ops``; with ``read`` or
more, GET answers 200 for each of them and 404 for the others; with ``inspect`` alone, GET
answers 403 for any id (no verb to read anything anywhere). Table-driven over every resource
type and verb.
"""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from atelier.store.tables import CustomModel, Job

PLACES = ("root", "eng", "eng:ml", "ops")
VISIBLE = {"eng", "eng:ml"}
VERBS = ("inspect", "read", "use", "manage")
PATHS = {
    "clusters": "/v1/clusters",
    "endpoints": "/v1/endpoints",
    "custom-models": "/v1/custom-models",
    "fine-tuning-jobs": "/v1/fine_tuning/jobs",
    "knowledge-bases": "/v1/knowledge-bases",
    "files": "/v1/files",
}


class World:
    """A tenancy with compartments ``eng``, ``eng:ml`` and ``ops``, one object of each type in each
    place and the root, and a user ``ada`` of group ``g`` whose one policy the test rewrites."""

    def __init__(self, client: TestClient):
        created = client.post("/v1/tenancies", json={"name": "listing"})
        assert created.status_code == 201, created.text
        tenancy = created.json()
        self.app = client.app
        self.tenancy_id = tenancy["id"]
        self.admin = TestClient(client.app, headers={"Authorization": f"Bearer {tenancy['admin_key']}"})
        raised = client.put(f"/v1/tenancies/{self.tenancy_id}/limits", json={"units": {"small": 100}})
        assert raised.status_code == 200, raised.text
        eng = self.post("/v1/compartments", {"name": "eng"})["id"]
        self.post("/v1/compartments", {"name": "ml", "parent": eng})
        self.post("/v1/compartments", {"name": "ops"})
        self.objects: dict[str, dict[str, str]] = {kind: {} for kind in PATHS}
        hosting = self.post("/v1/clusters", {"name": "host", "type": "hosting", "unit_type": "small",
                                             "unit_count": 1, "base_model": "tiny"})["id"]
        self.post("/v1/clusters", {"name": "train", "type": "fine-tuning", "unit_type": "small", "unit_count": 2,
                                   "base_model": "tiny"})
        for place in PLACES:
            where = {} if place == "root" else {"compartment": place}
            suffix = place.replace(":", "-")
            self.objects["clusters"][place] = self.post("/v1/clusters", {
                "name": f"c-{suffix}", "type": "hosting", "unit_type": "small", "unit_count": 1, "base_model": "tiny",
                **where})["id"]  # fmt: skip
            self.objects["endpoints"][place] = self.post("/v1/endpoints", {
                "name": f"e-{suffix}", "cluster_id": hosting, "model": "tiny", **where})["id"]  # fmt: skip
            self.objects["knowledge-bases"][place] = self.post("/v1/knowledge-bases", {"name": f"k-{suffix}",
                                                                                      **where})["id"]
            uploaded = self.admin.post("/v1/files", files={"file": (f"f-{suffix}.jsonl", b'{"prompt":"a"}\n')},
                                       data={"purpose": "fine-tune", **where})
            assert uploaded.status_code == 200, uploaded.text
            self.objects["files"][place] = uploaded.json()["id"]
            job = self.post("/v1/fine_tuning/jobs", {"model": "tiny", "training_file": uploaded.json()["id"],
                                                     **where}, status=200)  # fails validation: a job all the same
            self.objects["fine-tuning-jobs"][place] = job["id"]
            self.objects["custom-models"][place] = self._custom_model(job["id"])
        self.user = self.post("/v1/users", {"name": "ada"})["id"]
        group = self.post("/v1/groups", {"name": "g"})["id"]
        self.post(f"/v1/groups/{group}/members", {"user_id": self.user}, status=200)
        self.policy = self.post("/v1/policies", {"name": "p", "statements": "allow group g to inspect files in "
                                                                            "compartment ops"})["id"]
        key = self.post("/v1/api-keys", {"name": "ada-key", "user_id": self.user})
        self.ada = TestClient(client.app, headers={"Authorization": f"Bearer {key['key']}"})

    def _custom_model(self, job_id: str) -> str:
        """What a finished job of that compartment leaves (no worker runs here)."""
        services = self.app.state.services
        with services.db.session() as session:
            compartment_id = session.get(Job, job_id).compartment_id
            ref = services.objects.put(self.tenancy_id, "adapter", b"adapter bytes")
            row = CustomModel(tenancy_id=self.tenancy_id, compartment_id=compartment_id, name=f"ft:tiny:{job_id}",
                              base_model="tiny", method="lora", job_id=job_id, adapter_object_id=ref.id,
                              trainable_params=1, total_params=10, metrics={}, curve=[])
            session.add(row)
            session.flush()
            return row.id

    def post(self, path: str, body: dict, status: int = 201) -> dict:
        response = self.admin.post(path, json=body)
        assert response.status_code == status, response.text
        return response.json()

    def grant(self, statement: str) -> None:
        response = self.admin.put(f"/v1/policies/{self.policy}", json={"name": "p", "statements": statement})
        assert response.status_code == 200, response.text


@pytest.fixture(scope="module")
def world(client) -> World:
    return World(client)


@pytest.mark.parametrize("verb", VERBS)
@pytest.mark.parametrize("kind", sorted(PATHS))
def test_a_user_lists_exactly_what_it_may_get(world, kind, verb):
    world.grant(f"allow group g to {verb} {kind} in compartment eng")
    ours = world.objects[kind]
    listed = world.ada.get(PATHS[kind], params={"limit": 100} if kind != "files" else None)
    assert listed.status_code == 200, listed.text
    shown = {item["id"] for item in listed.json()["data"]} & set(ours.values())
    assert shown == {ours[place] for place in VISIBLE}
    for place, object_id in ours.items():
        status = world.ada.get(f"{PATHS[kind]}/{object_id}").status_code
        if verb == "inspect":  # may read none anywhere: refused by type before any object is looked at
            assert status == 403, (place, status)
        else:
            assert status == (200 if place in VISIBLE else 404), (place, status)
