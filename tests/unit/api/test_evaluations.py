"""``/v1/evaluations`` on the tiny model: checks on creation, the job run by a worker, the report's numbers."""

from __future__ import annotations

import json
import math

import pytest
import torch
from fastapi.testclient import TestClient

from atelier.cloud.evaluations import KIND
from atelier.engine.loading import tiny_loaded
from atelier.jobs.evaluate import EvaluateHandler
from atelier.jobs.worker import Worker
from atelier.tuning.data import tokenize_example
from atelier.tuning.metrics import token_stats

TEST = [{"prompt": f"Is {n} even?", "completion": "yes" if n % 2 == 0 else "no"} for n in range(6)]
SHOTS = [{"prompt": f"Is {n} even?", "completion": "yes" if n % 2 == 0 else "no"} for n in range(10, 16)]


def upload(http: TestClient, rows: list[dict] | bytes, purpose: str = "fine-tune") -> str:
    data = rows if isinstance(rows, bytes) else "".join(json.dumps(r) + "\n" for r in rows).encode()
    response = http.post("/v1/files", files={"file": ("data.jsonl", data)}, data={"purpose": purpose})
    assert response.status_code in (200, 201), response.text
    return response.json()["id"]


class Shared:
    """The app's engine handed to the handler, which closes what it is given."""

    def __init__(self, engine):
        self._engine = engine

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def close(self) -> None:
        pass


@pytest.fixture
def drain(app, engine, catalog, tmp_path):
    services = app.state.services
    handler = EvaluateHandler(services.objects, services.files, catalog, lambda: Shared(engine), tmp_path / "scratch")
    worker = Worker(services.db, {KIND: handler}, data_dir=services.settings.data_path, poll_seconds=0.05)

    def run() -> None:
        while worker.run_once():
            pass

    return run


def test_an_evaluation_reports_the_models_metrics_and_a_k_shot_baseline(client, drain):
    test_file, shots = upload(client, TEST), upload(client, SHOTS)
    created = client.post("/v1/evaluations", json={
        "model": "tiny", "test_file": test_file, "max_tokens": 3, "k_shot": {"k": 2, "file": shots, "seed": 1},
        "metrics": ["loss", "perplexity", "token_accuracy", "exact_match", "accuracy", "macro_f1", "rouge_l",
                    "bleu", "chrf"]})  # fmt: skip
    assert created.status_code == 201, created.text
    assert created.json()["status"] == "queued" and created.json()["report"] is None
    drain()
    done = client.get(f"/v1/evaluations/{created.json()['id']}").json()
    assert done["status"] == "succeeded", done
    report = done["report"]
    assert report["n_examples"] == len(TEST) and report["baseline"]["k"] == 2
    for metrics in (report["metrics"], report["baseline"]["metrics"]):
        assert set(metrics) == {"loss", "perplexity", "token_accuracy", "exact_match", "accuracy", "macro_f1",
                                "rouge_l", "bleu", "chrf", "samples"}
        assert 0 <= metrics["accuracy"] <= 1 and metrics["perplexity"] == pytest.approx(math.exp(metrics["loss"]))
    # the loss is the model's own: the same completion tokens scored by a plain forward pass
    loaded = tiny_loaded("tiny")  # the weights the app's engine serves (seed 0)
    stats = None
    for row in TEST:
        messages = [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["completion"]}]
        example = tokenize_example(loaded.tokenizer, messages, [1])
        with torch.no_grad():
            logits = loaded.model(input_ids=torch.tensor([example.input_ids])).logits
        part = token_stats(logits, torch.tensor([example.labels]))
        stats = part if stats is None else stats + part
    assert report["metrics"]["loss"] == pytest.approx(stats.loss, rel=1e-4)
    assert report["metrics"]["token_accuracy"] == pytest.approx(stats.accuracy)
    # the k-shot prompts are longer: the same answers in another context score differently
    assert report["baseline"]["metrics"]["loss"] != pytest.approx(report["metrics"]["loss"], rel=1e-6)
    events = client.get(f"/v1/evaluations/{done['id']}/events", params={"limit": 1000}).json()["data"]
    assert any(e["data"] and e["data"].get("stage") == "baseline" for e in events)
    assert client.get(f"/v1/fine_tuning/jobs/{done['id']}").status_code == 404  # another kind of job
    assert done["id"] in [e["id"] for e in client.get("/v1/evaluations", params={"limit": 100}).json()["data"]]


@pytest.mark.parametrize(("body", "param"), [
    ({"metrics": ["loss", "bleurt"]}, "metrics"),
    ({"metrics": ["loss", "loss"]}, "metrics"),
    ({"test_file": "file-nope"}, "test_file"),
    ({"k_shot": {"k": 2, "file": "file-nope"}}, "k_shot.file"),
    ({"max_tokens": 0}, "max_tokens"),
])  # fmt: skip
def test_bad_requests_name_the_parameter(client, check_error, body, param):
    test_file = upload(client, TEST)
    check_error(client.post("/v1/evaluations", json={"model": "tiny", "test_file": test_file, **body}), 400,
                param=param)


def test_a_bad_test_file_is_refused_by_line_and_an_unknown_model_is_404(client, check_error):
    bad = upload(client, b'{"prompt": "a", "completion": "b"}\nnot json\n')
    error = check_error(client.post("/v1/evaluations", json={"model": "tiny", "test_file": bad}), 400,
                        param="test_file")
    assert "line 2" in error["message"]
    good = upload(client, TEST)
    check_error(client.post("/v1/evaluations", json={"model": "cm_nope", "test_file": good}), 404, param="model")


def test_another_tenancy_sees_nothing_and_a_queued_evaluation_cancels(client, app):
    created = client.post("/v1/evaluations", json={"model": "tiny", "test_file": upload(client, TEST)}).json()
    other = client.post("/v1/tenancies", json={"name": "eval-other"}).json()
    stranger = TestClient(app, headers={"Authorization": f"Bearer {other['admin_key']}"})
    assert stranger.get(f"/v1/evaluations/{created['id']}").status_code == 404
    assert stranger.post("/v1/evaluations", json={"model": "tiny", "test_file": created["test_file"]}).status_code == 400
    assert client.post(f"/v1/evaluations/{created['id']}/cancel").json()["status"] == "cancelled"
