"""``/v1/fine_tuning/jobs`` and ``/v1/custom-models`` on the real app, a tiny model and an in-process worker.

The worker runs the real ``fine-tune`` handler against the tiny random Llama (a fresh copy
per job, as a worker process loads one), so a whole job (validation, LoRA training,
sealing, custom model, chat with it) takes a few seconds. Jobs run on a fine-tuning cluster
of the tiny model and custom models are served by endpoints on a hosting cluster, both
created through the API like a user would.
"""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from atelier.engine.client import LocalEngine
from atelier.engine.loading import tiny_loaded
from atelier.errors import InvalidInput
from atelier.jobs.fine_tune import KIND, FineTuneHandler
from atelier.store.jobs import JobQueue
from atelier.store.tables import CustomModel
from atelier.jobs.context import JobContext, JobStopped
from atelier.jobs.worker import Worker
from tests.unit.api.tensorboard_files import scalars
from atelier.principal import Principal
from atelier.tuning.config import TuneConfig
from atelier.store.tables import StoredObject
from atelier.tuning.export import read_adapter

SMALL = {
    "type": "lora", "total_training_epochs": 2, "training_batch_size": 4, "lora_r": 4, "learning_rate": 0.01,
    "log_model_metrics_interval_in_steps": 1, "checkpoint_interval_in_steps": 2,
}  # fmt: skip
WORDS = ["red", "blue", "green", "gold", "pink", "gray", "teal", "navy", "lime", "plum", "rose", "sand"]


def jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def examples(n: int = 12) -> bytes:
    return jsonl([{"prompt": f"Say {w}", "completion": w} for w in (WORDS * 3)[:n]])


def upload(http: TestClient, data: bytes, purpose: str = "fine-tune") -> str:
    response = http.post("/v1/files", files={"file": ("train.jsonl", data)}, data={"purpose": purpose})
    assert response.status_code == 200, response.text
    return response.json()["id"]


def create(http: TestClient, file_id: str, **extra) -> dict:
    body = {"model": "tiny", "training_file": file_id, "training_config": SMALL, **extra}
    response = http.post("/v1/fine_tuning/jobs", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def tok(spec):
    return tiny_loaded("tiny").tokenizer


def run_worker(app) -> bool:
    services = app.state.services

    def engine():  # what serves the tiny model, for a job's evaluation
        return LocalEngine(services.catalog, services.settings, preloaded={"tiny": tiny_loaded("tiny")})

    handler = FineTuneHandler(services.db, services.objects, services.catalog, lambda spec: tiny_loaded("tiny"), tok,
                              engine_factory=engine)
    worker = Worker(app.state.services.db, {KIND: handler}, data_dir=app.state.services.settings.data_path, poll_seconds=0.1)
    return worker.run_once()


@pytest.fixture(scope="module", autouse=True)
def clusters(client, provision):
    """A fine-tuning cluster of the tiny model with room for four jobs, and a hosting cluster."""
    return provision(client, fine_tuning=8, hosting=1)


def host(http: TestClient, cluster_id: str, model: str, name: str) -> dict:
    response = http.post("/v1/endpoints", json={"name": name, "cluster_id": cluster_id, "model": model})
    assert response.status_code == 201, response.text
    return response.json()


@pytest.fixture(scope="module")
def tenancy_b(client):
    created = client.post("/v1/tenancies", json={"name": "ft-beta"})
    assert created.status_code == 201, created.text
    return TestClient(client.app, headers={"Authorization": f"Bearer {created.json()['admin_key']}"})


@pytest.fixture(scope="module")
def finished(client, app):
    """One job run to the end: (job as created, job as finished)."""
    job = create(client, upload(client, examples()), suffix="colors")
    assert run_worker(app)
    return job, client.get(f"/v1/fine_tuning/jobs/{job['id']}").json()


def test_a_job_runs_to_a_custom_model(finished, client, app):
    created, job = finished
    assert created["status"] == "queued" and created["object"] == "fine_tuning.job"
    assert created["hyperparameters"] == {"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 10.0}
    assert created["training_config"]["lora_r"] == 4 and created["seed"] == 42
    assert job["status"] == "succeeded", job
    model_id = job["fine_tuned_model"]
    assert model_id.startswith("cm_") and job["trained_tokens"] > 0 and job["finished_at"] >= job["created_at"]
    model = client.get(f"/v1/custom-models/{model_id}").json()
    assert model["name"] == f"ft:tiny:colors:{job['id']}"
    assert model["base_model"] == "tiny" and model["method"] == "lora"
    assert 0 < model["trainable_fraction"] < 1 and model["trainable_params"] > 0
    assert [p["step"] for p in model["curve"]] == list(range(1, len(model["curve"]) + 1))
    assert model["metrics"]["valid_loss"] is not None
    with app.state.services.db.session() as session:
        obj = session.get(StoredObject, f"adp_{job['id'].removeprefix('job_')}")
        assert obj.kind == "adapter" and obj.tenancy_id == job["organization_id"]
    files = read_adapter(client.get(f"/v1/custom-models/{model_id}/adapter").content)
    assert json.loads(files["adapter_config.json"])["peft_type"] == "LORA"
    assert created["cluster_id"] == job["cluster_id"] and job["cluster_id"].startswith("dac_")


def test_events_are_openai_shaped_and_once_per_step(finished, client):
    _, job = finished
    events = client.get(f"/v1/fine_tuning/jobs/{job['id']}/events", params={"limit": 1000}).json()
    assert events["object"] == "list" and not events["has_more"]
    metrics = [e for e in events["data"] if e["type"] == "metrics"]
    steps = [e["data"]["step"] for e in metrics]
    assert sorted(steps) == list(range(1, max(steps) + 1)), "one metrics event per step"
    assert all(e["object"] == "fine_tuning.job.event" and e["id"].startswith("ftevent-") for e in events["data"])
    assert events["data"][0]["created_at"] >= events["data"][-1]["created_at"]  # newest first
    page = client.get(f"/v1/fine_tuning/jobs/{job['id']}/events", params={"limit": 2}).json()
    rest = client.get(f"/v1/fine_tuning/jobs/{job['id']}/events",
                      params={"limit": 1000, "after": page["data"][-1]["id"]}).json()
    assert [e["id"] for e in page["data"] + rest["data"]] == [e["id"] for e in events["data"]]


def test_checkpoints_list_the_saved_steps(finished, client):
    _, job = finished
    found = client.get(f"/v1/fine_tuning/jobs/{job['id']}/checkpoints").json()
    steps = [c["step_number"] for c in found["data"]]
    assert steps and steps == sorted(steps, reverse=True) and all(s % 2 == 0 for s in steps)
    first = found["data"][0]
    assert first["object"] == "fine_tuning.job.checkpoint" and first["fine_tuning_job_id"] == job["id"]
    assert first["metrics"]["step"] == first["step_number"] and first["metrics"]["train_loss"] is not None


def test_the_jobs_metrics_download_as_tensorboard_event_files(finished, client, tenancy_b):
    _, job = finished
    response = client.get(f"/v1/fine_tuning/jobs/{job['id']}/tensorboard")
    assert response.status_code == 200 and response.headers["content-type"] == "application/gzip"
    found = scalars(response.content)
    metrics = [e["data"] for e in client.get(f"/v1/fine_tuning/jobs/{job['id']}/events",
                                             params={"limit": 1000}).json()["data"] if e["type"] == "metrics"]
    assert sorted(found["train/loss"]) == sorted((m["step"], pytest.approx(m["train_loss"])) for m in metrics)
    assert "valid/loss" in found and "valid/token_accuracy" in found
    assert tenancy_b.get(f"/v1/fine_tuning/jobs/{job['id']}/tensorboard").status_code == 404


def test_a_search_job_keeps_the_best_trial_as_the_custom_model(client, app):
    search = {"max_trials": 3, "learning_rate": [1e-3, 1e-1], "lora_r": [2, 4], "seed": 3}
    job = create(client, upload(client, examples(16)), search=search)
    assert job["search"]["max_trials"] == 3
    assert run_worker(app)
    done = client.get(f"/v1/fine_tuning/jobs/{job['id']}").json()
    assert done["status"] == "succeeded", done
    trials = done["search"]["trials"]
    finished = [t for t in trials if t["state"] == "complete"]
    assert len(trials) == 3 and finished
    best = min(finished, key=lambda t: t["valid_loss"])
    assert done["search"]["best_trial"] == best["trial"]
    custom = client.get(f"/v1/custom-models/{done['fine_tuned_model']}").json()
    assert custom["metrics"]["valid_loss"] == pytest.approx(best["valid_loss"])
    events = client.get(f"/v1/fine_tuning/jobs/{job['id']}/events", params={"limit": 1000}).json()["data"]
    assert {e["data"]["trial"] for e in events if e["data"] and "trial" in e["data"]} == {t["trial"] for t in trials}


def test_a_qlora_job_trains_over_an_int8_base(client, app):
    job = create(client, upload(client, examples()), training_config={**SMALL, "quantize_base": "int8"})
    assert job["training_config"]["quantize_base"] == "int8"
    assert run_worker(app)
    done = client.get(f"/v1/fine_tuning/jobs/{job['id']}").json()
    assert done["status"] == "succeeded", done
    events = client.get(f"/v1/fine_tuning/jobs/{job['id']}/events", params={"limit": 1000}).json()["data"]
    assert any("base quantized to int8" in e["message"] for e in events)


def test_a_job_evaluates_its_custom_model_on_the_validation_file(client, app, check_error):
    train, val = upload(client, examples(12)), upload(client, examples(4))
    evaluation = {"metrics": ["loss", "token_accuracy", "exact_match"], "max_tokens": 3, "k_shot": 2}
    job = create(client, train, validation_file=val, evaluation=evaluation)
    assert run_worker(app)
    done = client.get(f"/v1/fine_tuning/jobs/{job['id']}").json()
    assert done["status"] == "succeeded", done
    report = client.get(f"/v1/custom-models/{done['fine_tuned_model']}").json()["metrics"]["evaluation"]
    assert report["test_file"] == val and report["n_examples"] == 4 and report["baseline"]["k"] == 2
    assert set(report["metrics"]) == {"loss", "token_accuracy", "exact_match", "samples"}
    # the same loss as training's own validation, through the serving engine (float tiny model here)
    custom = client.get(f"/v1/custom-models/{done['fine_tuned_model']}").json()["metrics"]
    assert report["metrics"]["loss"] == pytest.approx(custom["valid_loss"], rel=1e-3)
    check_error(client.post("/v1/fine_tuning/jobs", json={"model": "tiny", "training_file": train,
                                                          "training_config": SMALL, "evaluation": {}}), 400,
                param="evaluation")  # no validation file to evaluate on
    check_error(client.post("/v1/fine_tuning/jobs", json={"model": "tiny", "training_file": train, "validation_file": val,
                                                          "training_config": SMALL,
                                                          "evaluation": {"metrics": ["nope"]}}), 400,
                param="evaluation.metrics")


@pytest.mark.parametrize(("search", "param"), [
    ({"max_trials": 0}, "search.max_trials"),
    ({"learning_rate": [0.1, 0.01]}, "search.learning_rate"),
    ({"lora_r": [1000]}, "search.lora_r"),
    ({"nope": 1}, "search.nope"),
])  # fmt: skip
def test_a_bad_search_names_the_field(client, check_error, search, param):
    body = {"model": "tiny", "training_file": upload(client, examples()), "training_config": SMALL, "search": search}
    check_error(client.post("/v1/fine_tuning/jobs", json=body), 400, param=param)


def test_chat_with_the_custom_model(finished, client, clusters, tenancy_b, check_error):
    model_id = finished[1]["fine_tuned_model"]
    body = {"model": model_id, "messages": [{"role": "user", "content": "Say red"}], "max_tokens": 4,
            "temperature": 0}
    on_demand = client.post("/v1/chat/completions", json=body)  # callable at once, on the shared hosting capacity
    assert on_demand.status_code == 200, on_demand.text
    assert model_id in [m["id"] for m in client.get("/v1/models").json()["data"]]
    endpoint = host(client, clusters["hosting"], model_id, "colors")
    listed = [m["id"] for m in client.get("/v1/models").json()["data"]]
    assert model_id in listed and endpoint["id"] in listed
    answer = client.post("/v1/chat/completions", json=body)
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"] == on_demand.json()["choices"]  # the same adapter, dedicated or on demand
    assert answer.json()["model"] == model_id and answer.json()["usage"]["completion_tokens"] >= 1
    again = client.post("/v1/chat/completions", json=body).json()  # the loaded adapter is reused
    assert again["choices"][0]["message"]["content"] == answer.json()["choices"][0]["message"]["content"]
    text = client.post("/v1/completions", json={"model": model_id, "prompt": "Say", "max_tokens": 2})
    assert text.status_code == 200, text.text
    by_endpoint = client.post("/v1/chat/completions", json={**body, "model": endpoint["id"]}).json()
    assert by_endpoint["model"] == endpoint["id"]
    assert by_endpoint["choices"][0]["message"]["content"] == again["choices"][0]["message"]["content"]
    foreign = tenancy_b.post("/v1/chat/completions", json=body)
    unknown = tenancy_b.post("/v1/chat/completions", json={**body, "model": "cm_" + "0" * 24})
    check_error(foreign, 404)
    assert foreign.json()["error"]["message"].replace(model_id, "<id>") == \
        unknown.json()["error"]["message"].replace("cm_" + "0" * 24, "<id>")
    assert model_id not in tenancy_b.get("/v1/models").text
    assert tenancy_b.get(f"/v1/custom-models/{model_id}").status_code == 404


def test_a_custom_model_without_hosting_capacity_is_not_hosted(app, client, tenancy_b, check_error):
    tenancy_id = next(t["id"] for t in client.get("/v1/tenancies").json()["data"] if t["name"] == "ft-beta")
    services = app.state.services
    ref = services.objects.put(tenancy_id, "adapter", b"unused")  # what a finished job leaves; beta has no cluster
    with services.db.session() as s:
        row = CustomModel(tenancy_id=tenancy_id, name="ft:tiny:beta", base_model="tiny", method="lora",
                          adapter_object_id=ref.id, trainable_params=1, total_params=10, metrics={}, curve=[])
        s.add(row)
        s.flush()
        model_id = row.id
    body = {"model": model_id, "messages": [{"role": "user", "content": "Say red"}], "max_tokens": 4}
    unhosted = check_error(tenancy_b.post("/v1/chat/completions", json=body), 400, param="model")
    assert unhosted["code"] == "model_not_hosted" and "no active hosting cluster of tiny" in unhosted["message"]
    assert model_id not in [m["id"] for m in tenancy_b.get("/v1/models").json()["data"]]


def test_the_name_the_service_shows_resolves_wherever_a_model_is_accepted(finished, client, clusters, tenancy_b):
    job = finished[1]
    model_id = job["fine_tuned_model"]
    name = client.get(f"/v1/custom-models/{model_id}").json()["name"]
    assert name.startswith("ft:tiny:") and name.endswith(job["id"])
    shown = [e["message"] for e in client.get(f"/v1/fine_tuning/jobs/{job['id']}/events?limit=100").json()["data"]]
    assert any(name in message for message in shown)  # the event that names it
    assert client.get(f"/v1/custom-models/{name}").json()["id"] == model_id
    assert client.get(f"/v1/custom-models/{name}/adapter").content == \
        client.get(f"/v1/custom-models/{model_id}/adapter").content  # what `atelier models export` downloads
    endpoint = client.post("/v1/endpoints", json={"name": "by-name", "cluster_id": clusters["hosting"], "model": name})
    assert endpoint.status_code == 201, endpoint.text
    body = {"messages": [{"role": "user", "content": "Say red"}], "max_tokens": 4, "temperature": 0}
    by_name = client.post("/v1/chat/completions", json={**body, "model": name})
    by_id = client.post("/v1/chat/completions", json={**body, "model": model_id})
    assert by_name.status_code == 200, by_name.text
    assert by_name.json()["choices"] == by_id.json()["choices"] and by_name.json()["model"] == name
    assert client.post("/v1/completions", json={"model": name, "prompt": "Say", "max_tokens": 2}).status_code == 200
    assert tenancy_b.post("/v1/chat/completions", json={**body, "model": name}).status_code == 404
    assert client.delete(f"/v1/endpoints/{endpoint.json()['id']}").status_code == 200


def test_bad_file_fails_fast_with_every_problem_by_line(client, check_error):
    rows = examples(12).decode().splitlines()
    rows[2] = "{not json"
    rows[6] = json.dumps({"prompt": "", "completion": "x"})
    job = create(client, upload(client, ("\n".join(rows) + "\n").encode()))
    assert job["status"] == "failed"
    error = job["error"]
    assert error["param"] == "training_file" and error["code"] == "invalid_training_file"
    assert "line 3:" in error["message"] and "line 7:" in error["message"]
    few = create(client, upload(client, examples(3)))
    assert few["status"] == "failed" and "at least 10" in few["error"]["message"]


def test_bad_requests_name_the_parameter(client, tenancy_b, check_error):
    file_id = upload(client, examples())
    post = lambda body: client.post("/v1/fine_tuning/jobs", json={"model": "tiny", "training_file": file_id, **body})
    check_error(post({"training_config": {"lora_r": 65}}), 400, param="training_config.lora_r")
    check_error(post({"hyperparameters": {"n_epochs": 0}}), 400, param="hyperparameters.n_epochs")
    check_error(post({"training_config": {"type": "tfew", "lora_r": 4}}), 400, param="training_config.lora_r")
    check_error(post({"model": "nope"}), 400, param="model")
    check_error(post({"suffix": "bad suffix!"}), 400, param="suffix")
    check_error(post({"method": {"type": "dpo"}}), 400, param="method.type")
    theirs = tenancy_b.post("/v1/fine_tuning/jobs", json={"model": "tiny", "training_file": file_id})
    assert "not found or not authorized" in check_error(theirs, 400, param="training_file")["message"]
    kb = upload(client, b"some text", purpose="knowledge-base")
    check_error(post({"training_file": kb}), 400, param="training_file")


def test_a_job_shows_only_the_settings_its_method_uses(client):
    file_id = upload(client, examples())
    tfew = create(client, file_id, training_config={"type": "tfew", "total_training_epochs": 1})
    assert "feedforward_modules" in tfew["training_config"]
    assert not {"lora_r", "lora_alpha", "lora_dropout"} & set(tfew["training_config"])
    lora = create(client, file_id, training_config={"type": "lora", "total_training_epochs": 1})
    assert {"lora_r", "lora_alpha", "lora_dropout"} <= set(lora["training_config"])
    assert "feedforward_modules" not in lora["training_config"]
    for job in (tfew, lora):  # the module's other tests run the oldest queued job
        assert client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel").status_code == 200


def test_idempotency_key_gives_one_job(client, check_error):
    file_id = upload(client, examples())
    body = {"model": "tiny", "training_file": file_id, "training_config": SMALL}
    headers = {"Idempotency-Key": "ft-once"}
    first = client.post("/v1/fine_tuning/jobs", json=body, headers=headers).json()
    second = client.post("/v1/fine_tuning/jobs", json=body, headers=headers).json()
    assert first["id"] == second["id"]
    check_error(client.post("/v1/fine_tuning/jobs", json={**body, "suffix": "x"}, headers=headers), 409)
    cancelled = client.post(f"/v1/fine_tuning/jobs/{first['id']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"


def test_list_jobs_and_isolation(finished, client, tenancy_b, check_error):
    _, job = finished
    listed = client.get("/v1/fine_tuning/jobs", params={"limit": 100}).json()
    assert job["id"] in [j["id"] for j in listed["data"]]
    page = client.get("/v1/fine_tuning/jobs", params={"limit": 1}).json()
    assert page["has_more"] and len(page["data"]) == 1
    assert job["id"] not in tenancy_b.get("/v1/fine_tuning/jobs").text
    for path in ("", "/events", "/checkpoints"):
        check_error(tenancy_b.get(f"/v1/fine_tuning/jobs/{job['id']}{path}"), 404)
    check_error(tenancy_b.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel"), 404)
    check_error(client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel"), 409)


def test_delete_custom_model(client, app, clusters, check_error):
    job = create(client, upload(client, examples()), training_config={**SMALL, "total_training_epochs": 1})
    assert run_worker(app)
    model_id = client.get(f"/v1/fine_tuning/jobs/{job['id']}").json()["fine_tuned_model"]
    check_error(client.delete(f"/v1/custom-models/cm_{'0' * 24}"), 404)
    endpoint = host(client, clusters["hosting"], model_id, "to-delete")
    assert app.state.services.engine.adapter_slot(model_id) is not None  # loaded once, when the endpoint was created
    assert "delete them first" in check_error(client.delete(f"/v1/custom-models/{model_id}"), 409)["message"]
    assert client.delete(f"/v1/endpoints/{endpoint['id']}").status_code == 200
    assert app.state.services.engine.adapter_slot(model_id) is None  # the last endpoint freed the adapter
    assert client.delete(f"/v1/custom-models/{model_id}").json() == {
        "id": model_id, "object": "custom_model", "deleted": True}
    check_error(client.get(f"/v1/custom-models/{model_id}"), 404)
    assert model_id not in client.get("/v1/models").text


# --- the handler itself, as a worker runs it -------------------------------------------


def claimed(app, job_id: str) -> JobContext:
    queue = JobQueue(app.state.services.db)
    job = queue.claim("test-worker", [KIND], 60)
    assert job is not None and job.id == job_id
    workdir = app.state.services.settings.data_path / "jobs" / job.id
    workdir.mkdir(parents=True, exist_ok=True)
    return JobContext(job, workdir, queue)


def test_resumed_job_records_each_step_once_and_stores_once(client, app):
    job = create(client, upload(client, examples()), training_config={**SMALL, "checkpoint_interval_in_steps": 1})
    loads = []
    handler = FineTuneHandler(app.state.services.db, app.state.services.objects, app.state.services.catalog,
                              lambda spec: loads.append(spec.name) or tiny_loaded("tiny"), tok)
    ctx = claimed(app, job["id"])
    emit = ctx.emit

    def stop_at_step_3(message, data=None, **kw):
        emit(message, data, **kw)
        if data and data.get("type") == "metrics" and data["step"] == 3:
            ctx.request_stop("shutdown")

    ctx.emit = stop_at_step_3
    with pytest.raises(JobStopped):
        handler(ctx)
    assert oct(ctx.workdir.stat().st_mode & 0o777) == "0o700"
    JobQueue(app.state.services.db).release(job["id"], "test-worker")
    result = handler(claimed(app, job["id"]))
    assert result["fine_tuned_model"].startswith("cm_") and len(loads) == 2
    events = client.get(f"/v1/fine_tuning/jobs/{job['id']}/events", params={"limit": 1000}).json()["data"]
    steps = [e["data"]["step"] for e in events if e["type"] == "metrics"]
    assert sorted(steps) == list(range(1, max(steps) + 1)) and max(steps) > 3
    again = handler(claimed_again(app, job["id"]))  # a worker lost after storing: no duplicate
    assert again["fine_tuned_model"] == result["fine_tuned_model"] and len(loads) == 2


def claimed_again(app, job_id: str) -> JobContext:
    JobQueue(app.state.services.db).release(job_id, "test-worker")
    return claimed(app, job_id)


def test_handler_fails_fast_on_a_bad_file_without_loading_the_model(client, app):
    rows = examples(12).decode().splitlines()
    rows[4] = json.dumps({"messages": [{"role": "assistant", "content": "hi"}]})
    file_id = upload(client, ("\n".join(rows) + "\n").encode())
    queue = JobQueue(app.state.services.db)
    principal = Principal(client.get("/v1/fine_tuning/jobs").json()["data"][0]["organization_id"], "k", "admin")
    payload = {"model": "tiny", "training_file": file_id, "training_config": TuneConfig().model_dump(mode="json")}
    job = queue.submit(principal, KIND, payload)
    loads = []
    handler = FineTuneHandler(app.state.services.db, app.state.services.objects, app.state.services.catalog,
                              lambda spec: loads.append(1) or tiny_loaded("tiny"), tok)
    with pytest.raises(InvalidInput) as caught:
        handler(claimed(app, job.id))
    assert "line 5:" in caught.value.message and not loads


def test_epochs_left_to_auto_follow_the_number_of_training_examples(client, app):
    from atelier.tuning.config import auto_epochs

    unset = {k: v for k, v in SMALL.items() if k != "total_training_epochs"}
    job = create(client, upload(client, examples()), training_config=unset, hyperparameters={"n_epochs": "auto"})
    assert job["hyperparameters"]["n_epochs"] == "auto"
    assert run_worker(app)
    done = client.get(f"/v1/fine_tuning/jobs/{job['id']}").json()
    events = client.get(f"/v1/fine_tuning/jobs/{job['id']}/events", params={"limit": 100}).json()["data"]
    [trained] = [e["data"] for e in events if (e.get("data") or {}).get("train_examples")]
    [auto] = [e for e in events if e["message"].startswith("n_epochs auto")]
    epochs = auto_epochs(trained["train_examples"])
    assert trained["train_examples"] == 10 and epochs == 10 and auto["data"]["n_epochs"] == epochs
    row = client.get(f"/v1/custom-models/{done['fine_tuned_model']}").json()
    assert row["curve"][-1]["total_steps"] == epochs * 3  # 10 examples in batches of 4: 3 steps an epoch
    given = create(client, upload(client, examples()), training_config=unset, hyperparameters={"n_epochs": 2})
    assert given["hyperparameters"]["n_epochs"] == 2


@pytest.mark.parametrize(("n", "epochs"), [(1, 25), (10, 10), (16, 6), (33, 3), (34, 3), (8_333, 3), (10_000, 2)])
def test_auto_epochs_is_openais_rule(n, epochs):
    from atelier.tuning.config import auto_epochs

    assert auto_epochs(n) == epochs
