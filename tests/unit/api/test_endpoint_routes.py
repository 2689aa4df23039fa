"""``/v1/endpoints`` and chat through them: capacity, states, adapters loaded once and freed, policies.

Custom models here are rows with a real (random) LoRA adapter of the tiny model, stored
sealed like a finished job leaves them, so an endpoint of one really loads it into the engine.
"""

from __future__ import annotations

import copy

import pytest
import torch
from fastapi.testclient import TestClient

from atelier.engine.loading import tiny_loaded
from atelier.store.tables import CustomModel
from atelier.tuning.export import pack_adapter

CHAT = {"messages": [{"role": "user", "content": "Say red"}], "max_tokens": 6, "temperature": 0}


@pytest.fixture(scope="module")
def packed(tmp_path_factory) -> bytes:
    """A LoRA adapter of the tiny model whose delta is large enough to change greedy outputs."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(3)
    model = get_peft_model(copy.deepcopy(tiny_loaded("tiny").model), LoraConfig(
        r=4, lora_alpha=64, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False))
    directory = tmp_path_factory.mktemp("adapter")
    model.save_pretrained(str(directory))
    return pack_adapter(directory)


def add_custom_model(app, tenancy_id: str, packed: bytes, name: str, base: str = "tiny") -> str:
    """A custom model row and its sealed adapter, as a finished fine-tuning job leaves them."""
    ref = app.state.services.objects.put(tenancy_id, "adapter", packed)
    row = CustomModel(tenancy_id=tenancy_id, name=name, base_model=base, method="lora", adapter_object_id=ref.id,
                      trainable_params=1, total_params=10, metrics={}, curve=[])
    with app.state.services.db.session() as session:
        session.add(row)
        session.flush()
        return row.id


@pytest.fixture(scope="module")
def tenancy_id(client) -> str:
    """The administrator key's tenancy (``default``)."""
    return next(t["id"] for t in client.get("/v1/tenancies").json()["data"] if t["name"] == "default")


@pytest.fixture(scope="module")
def clusters(client, provision) -> dict[str, str]:
    return provision(client, fine_tuning=2, hosting=1)


def endpoint(http, cluster_id: str, model: str, name: str, status: int = 201) -> dict:
    response = http.post("/v1/endpoints", json={"name": name, "cluster_id": cluster_id, "model": model})
    assert response.status_code == status, response.text
    return response.json()


def chat(http, model: str) -> str:
    response = http.post("/v1/chat/completions", json={**CHAT, "model": model})
    assert response.status_code == 200, response.text
    assert response.json()["model"] == model
    return response.json()["choices"][0]["message"]["content"]


@pytest.fixture
def adapter_loads(engine, monkeypatch) -> list[str]:
    """The keys the engine was asked to load, in order."""
    loads: list[str] = []
    add = engine.add_adapter

    def counting(model, key, directory):
        loads.append(key)
        return add(model, key, directory)

    monkeypatch.setattr(engine, "add_adapter", counting)
    return loads


def test_a_base_model_endpoint_answers_like_the_base(client, clusters):
    base = endpoint(client, clusters["hosting"], "tiny", "tiny-base")
    assert (base["state"], base["model"], base["custom_model_id"], base["object"]) == ("active", "tiny", None,
                                                                                       "endpoint")
    assert base["id"].startswith("ep_")
    assert chat(client, base["id"]) == chat(client, "tiny")
    assert base["id"] in [m["id"] for m in client.get("/v1/models").json()["data"]]


def test_an_adapter_is_loaded_once_shared_and_freed_with_the_last_endpoint(client, app, engine, clusters, packed,
                                                                          tenancy_id, adapter_loads, check_error):
    model_id = add_custom_model(app, tenancy_id, packed, "shared")
    first = endpoint(client, clusters["hosting"], model_id, "shared-1")
    assert first["state"] == "active" and first["model"] == model_id and adapter_loads == [model_id]
    second = endpoint(client, clusters["hosting"], model_id, "shared-2")
    assert adapter_loads == [model_id]  # the second endpoint shares the loaded adapter
    answer = chat(client, first["id"])
    assert chat(client, second["id"]) == answer == chat(client, model_id)
    assert answer != chat(client, "tiny"), "the adapter changes the greedy output"
    listed = [m["id"] for m in client.get("/v1/models").json()["data"]]
    assert {first["id"], second["id"], model_id} <= set(listed)

    assert client.delete(f"/v1/endpoints/{first['id']}").status_code == 200
    assert engine.adapter_slot(model_id) is not None  # still hosted by the second
    assert chat(client, second["id"]) == answer
    check_error(client.post("/v1/chat/completions", json={**CHAT, "model": first["id"]}), 409)
    assert client.delete(f"/v1/endpoints/{second['id']}").status_code == 200
    assert engine.adapter_slot(model_id) is None  # the last endpoint freed it
    assert chat(client, model_id) == answer  # still callable: on demand, on the tenancy's hosting capacity
    assert adapter_loads == [model_id, model_id] and engine.adapter_slot(model_id) is not None
    assert model_id in client.get("/v1/models").text

    third = endpoint(client, clusters["hosting"], model_id, "shared-3")
    engine.remove_adapter(engine.adapter_slot(model_id))  # as the engine evicts one under its memory budget
    assert chat(client, third["id"]) == answer  # loaded again on demand
    assert adapter_loads == [model_id, model_id, model_id]
    client.delete(f"/v1/endpoints/{third['id']}")


def test_a_hosting_cluster_refuses_the_51st_model(client, app, provision, packed, tenancy_id, check_error):
    cluster_id = provision(client, fine_tuning=0, hosting=1)["hosting"]
    models = [add_custom_model(app, tenancy_id, packed, f"many-{i}") for i in range(51)]
    made = [endpoint(client, cluster_id, model_id, f"many-{i}")["id"] for i, model_id in enumerate(models[:50])]
    shown = client.get(f"/v1/clusters/{cluster_id}").json()
    assert (shown["used_endpoint_capacity"], shown["total_endpoint_capacity"]) == (50, 50)
    full = check_error(client.post("/v1/endpoints", json={"name": "many-50", "cluster_id": cluster_id,
                                                          "model": models[50]}), 409, param="cluster_id")
    assert full["code"] == "capacity_exceeded" and "50 of its 50" in full["message"]
    assert client.delete(f"/v1/endpoints/{made[0]}").status_code == 200
    endpoint(client, cluster_id, models[50], "many-50")
    for endpoint_id in made[1:]:
        client.delete(f"/v1/endpoints/{endpoint_id}")


def test_bad_endpoints_name_the_parameter(client, app, clusters, packed, tenancy_id, check_error):
    post = lambda body: client.post("/v1/endpoints", json={"name": "bad", "cluster_id": clusters["hosting"], **body})
    check_error(post({"model": "smollm2-135m-instruct"}), 400, param="model")
    check_error(post({"model": "cm_" + "0" * 24}), 400, param="model")
    other_base = add_custom_model(app, tenancy_id, packed, "other-base", base="smollm2-135m-instruct")
    assert "tuned from" in check_error(post({"model": other_base}), 400, param="model")["message"]
    check_error(post({"model": "tiny", "cluster_id": clusters["fine-tuning"]}), 400, param="cluster_id")
    check_error(post({"model": "tiny", "cluster_id": "dac_" + "0" * 24}), 400, param="cluster_id")
    check_error(post({"model": "tiny", "name": "no spaces"}), 400, param="name")

    made = endpoint(client, clusters["hosting"], "tiny", "named")
    check_error(post({"model": "tiny", "name": "named"}), 409, param="name")
    updated = client.patch(f"/v1/endpoints/{made['id']}", json={"name": "renamed", "description": "d"}).json()
    assert (updated["name"], updated["description"], updated["state"]) == ("renamed", "d", "active")
    assert client.delete(f"/v1/endpoints/{made['id']}").json() == {"id": made["id"], "object": "endpoint",
                                                                    "deleted": True}
    gone = client.get(f"/v1/endpoints/{made['id']}").json()
    assert gone["state"] == "deleted" and gone["deleted_at"] is not None
    assert made["id"] not in client.get("/v1/endpoints").text
    assert made["id"] in client.get("/v1/endpoints", params={"include_deleted": True}).text
    check_error(client.delete(f"/v1/endpoints/{made['id']}"), 409)
    check_error(client.patch(f"/v1/endpoints/{made['id']}", json={"name": "again"}), 409)
    assert "deleted" in check_error(client.post("/v1/chat/completions", json={**CHAT, "model": made["id"]}),
                                    409)["message"]
    listed = client.get("/v1/endpoints", params={"cluster_id": clusters["hosting"]}).json()["data"]
    assert all(e["cluster_id"] == clusters["hosting"] for e in listed)


def test_chat_through_an_endpoint_needs_invoke_and_hides_foreign_ones(client, clusters, check_error):
    base = endpoint(client, clusters["hosting"], "tiny", "policy-probe")
    unknown = "ep_" + "0" * 24
    created = client.post("/v1/tenancies", json={"name": "ep-other"}).json()
    other = TestClient(client.app, headers={"Authorization": f"Bearer {created['admin_key']}"})
    body = {**CHAT, "model": base["id"]}
    foreign, missing = other.post("/v1/chat/completions", json=body), other.post(
        "/v1/chat/completions", json={**body, "model": unknown})
    check_error(foreign, 404)
    assert foreign.json()["error"]["message"].replace(base["id"], "<id>") == \
        missing.json()["error"]["message"].replace(unknown, "<id>")
    assert foreign.json()["error"]["code"] == "model_not_found"
    assert base["id"] not in other.get("/v1/models").text

    user = client.post("/v1/users", json={"name": "caller"}).json()["id"]
    group = client.post("/v1/groups", json={"name": "callers"}).json()["id"]
    client.post(f"/v1/groups/{group}/members", json={"user_id": user})
    key = client.post("/v1/api-keys", json={"name": "caller", "user_id": user}).json()["key"]
    caller = TestClient(client.app, headers={"Authorization": f"Bearer {key}"})
    check_error(caller.post("/v1/chat/completions", json=body), 404)  # no policy: as if it did not exist
    policy = client.post("/v1/policies", json={"name": "callers", "statements":
                                                "allow group callers to inspect endpoints in tenancy"}).json()
    check_error(caller.post("/v1/chat/completions", json=body), 403)
    client.put(f"/v1/policies/{policy['id']}", json={"name": "callers", "statements":
                                                      "allow group callers to use endpoints in tenancy"})
    assert chat(caller, base["id"]) == chat(client, "tiny")
    check_error(caller.delete(f"/v1/endpoints/{base['id']}"), 403)
