"""``atelier finetune``, ``atelier jobs …`` and ``atelier models export`` against the real app.

The CLI's requests reach a ``TestClient`` through ``httpx.MockTransport``; a ``Worker`` in a
thread runs the real ``fine-tune`` handler on a tiny random model meanwhile, so ``--wait``
follows a real job to its end.
"""

from __future__ import annotations

import json
import os
import re
import threading

import httpx
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from atelier.api.app import create_app
from atelier.catalog import BUILTIN, Catalog, ModelSource, ModelSpec
from atelier.cli import State, app
from atelier.cli.finetune import OPTION_NAMES, training_config
from atelier.cli.jobs import progress_line
from atelier.cli.model_options import option_names
from atelier.engine.client import LocalEngine
from atelier.engine.loading import tiny_loaded
from atelier.jobs.fine_tune import KIND, FineTuneHandler
from atelier.jobs.worker import Worker
from atelier.settings import Settings
from atelier.tuning.config import TuneConfig

ADMIN_KEY = "cli-finetune-admin-key-0123456789"
HOP_HEADERS = ("host", "content-length", "transfer-encoding", "content-encoding")
TINY = ModelSpec(name="tiny", kind="chat", source=ModelSource(path="/nonexistent"), context_length=256,
                 max_output_tokens=32)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data = tmp_path_factory.mktemp("cli-finetune")
    settings = Settings(data_dir=data, cache_dir=data / "cache", admin_key=ADMIN_KEY, threads=1)
    catalog = Catalog(list(BUILTIN) + [TINY])
    engine = LocalEngine(catalog, settings, preloaded={"tiny": tiny_loaded("tiny")})
    with TestClient(create_app(settings, engine=engine, catalog=catalog)) as http:
        cluster = {"name": "ft-tiny", "type": "fine-tuning", "unit_type": "small", "unit_count": 2, "base_model": "tiny"}
        created = http.post("/v1/clusters", json=cluster, headers={"Authorization": f"Bearer {ADMIN_KEY}"})
        assert created.status_code == 201, created.text  # jobs run on a fine-tuning cluster of their model
        yield http
    engine.close()


@pytest.fixture(scope="module")
def worker(server):
    state = server.app.state.services
    handler = FineTuneHandler(state.db, state.objects, state.catalog, lambda spec: tiny_loaded("tiny"),
                              lambda spec: tiny_loaded("tiny").tokenizer)
    running = Worker(state.db, {KIND: handler}, data_dir=state.settings.data_path, poll_seconds=0.1)
    thread = threading.Thread(target=running.run, daemon=True)
    thread.start()
    yield running
    running.stop()
    thread.join(timeout=30)


@pytest.fixture(autouse=True)
def _env(monkeypatch, tmp_path):
    for name in list(os.environ):
        if name.startswith("ATELIER_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("ATELIER_DATA_DIR", str(tmp_path / "client-data"))
    monkeypatch.setenv("ATELIER_API_KEY", ADMIN_KEY)
    monkeypatch.chdir(tmp_path)


def run(server: TestClient, *args: str):
    def forward(request: httpx.Request) -> httpx.Response:
        answer = server.request(
            request.method, request.url.path, params=str(request.url.params), content=request.read(),
            headers={k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS},
        )  # fmt: skip
        headers = [(k, v) for k, v in answer.headers.items() if k.lower() not in HOP_HEADERS]
        return httpx.Response(answer.status_code, headers=headers, content=answer.content)

    return CliRunner().invoke(app, list(args), obj=State(transport=httpx.MockTransport(forward)))


def test_finetune_wait_jobs_and_export(server, worker, tmp_path):
    rows = [{"question": f"Say {w}", "answer": w} for w in "red blue green gold pink gray teal navy lime plum".split()]
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    done = run(server, "finetune", "--model", "tiny", "--data", str(data), "--method", "tfew",
               "--text-template", "<prompt>{question}</prompt>{answer}", "--epochs", "1", "--batch-size", "2",
               "--log-interval", "1", "--suffix", "qa", "--wait", "--json")
    assert done.exit_code == 0, done.output
    job = json.loads(done.stdout[done.stdout.index("{"):])
    assert job["status"] == "succeeded" and job["training_config"]["type"] == "tfew"
    assert job["training_config"]["text_template"] == "<prompt>{question}</prompt>{answer}"
    assert "step 4/4" in done.stderr and "loss" in done.stderr

    listed = run(server, "jobs", "list")
    assert listed.exit_code == 0 and job["id"] in listed.output and "succeeded" in listed.output
    events = run(server, "jobs", "events", job["id"])
    assert events.exit_code == 0 and "step 1/4" in events.output and "metrics" in events.output
    shown = run(server, "jobs", "show", job["id"], "--json")
    assert json.loads(shown.output)["fine_tuned_model"] == job["fine_tuned_model"]
    refused = run(server, "jobs", "cancel", job["id"])
    assert refused.exit_code == 1 and "already succeeded" in refused.output

    target = tmp_path / "adapter"
    exported = run(server, "models", "export", job["fine_tuned_model"], str(target))
    assert exported.exit_code == 0, exported.output
    assert json.loads((target / "adapter_config.json").read_text())["peft_type"] == "IA3"
    assert (target / "adapter_model.safetensors").stat().st_size > 0
    assert run(server, "models", "export", job["fine_tuned_model"], str(target)).exit_code == 1  # no overwrite
    assert job["fine_tuned_model"] not in run(server, "models").output  # served once an endpoint hosts it
    hosting = run(server, "cluster", "create", "host-tiny", "--type", "hosting", "--units", "1", "--model", "tiny")
    assert hosting.exit_code == 0 and "active" in hosting.output, hosting.output
    endpoint = run(server, "endpoint", "create", "qa", "--cluster", "host-tiny", "--model", job["fine_tuned_model"],
                   "--json")
    assert endpoint.exit_code == 0, endpoint.output
    endpoint_id = json.loads(endpoint.output)["id"]
    models = run(server, "models").output
    assert job["fine_tuned_model"] in models and endpoint_id in models


def test_finetune_reports_a_bad_file(server, tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_text('{"prompt": "a", "completion": "b"}\n' * 3)
    done = run(server, "finetune", "--model", "tiny", "--data", str(data))
    assert done.exit_code == 1 and "at least 10" in done.output


def test_helpers():
    assert training_config("lora", lora_r=4, epochs=None) == {"type": "lora", "lora_r": 4}
    line = progress_line({"step": 5, "total_steps": 10, "train_loss": 1.5, "valid_loss": None})
    assert line.startswith("[" + "#" * 15 + "." * 15 + "] step 5/10") and "loss 1.5000" in line
    assert "valid" not in line


# --- options generated from TuneConfig ----------------------------------------------------------

OPTIONS_BEFORE = [
    "--model", "-m", "--data", "-d", "--method", "--text-template", "--validation-data", "--epochs", "--batch-size",
    "--learning-rate", "--lora-r", "--lora-alpha", "--lora-dropout", "--validation-split", "--early-stopping-patience",
    "--log-interval", "--max-steps", "--seed", "--suffix", "--cluster", "--wait", "--json",
]  # fmt: skip


def test_every_tune_config_field_is_an_option_and_the_old_names_still_work():
    text = CliRunner().invoke(app, ["finetune", "--help"], env={"COLUMNS": "250"}).output
    shown = set(re.findall(r"(?<![\w-])(--?[a-z][a-z-]*)", text))
    assert set(OPTIONS_BEFORE) <= shown
    assert {option_names(field, OPTION_NAMES)[0] for field in TuneConfig.model_fields} <= shown
    assert "Passes over the training examples. [default: 3]" in text


def test_options_become_the_training_config_and_bounds_are_checked_before_any_request(tmp_path):
    sent: list[httpx.Request] = []

    def respond(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        if request.url.path == "/v1/files":
            return httpx.Response(200, json={"id": "file_1", "object": "file"})
        body = json.loads(request.content)
        return httpx.Response(200, json={"id": "job_1", "status": "queued", "model": body["model"],
                                         "training_config": body["training_config"]})

    data = tmp_path / "train.jsonl"
    data.write_text('{"prompt": "a", "completion": "b"}\n')
    state = State(transport=httpx.MockTransport(respond))
    args = ["finetune", "-m", "tiny", "-d", str(data), "--epochs", "2", "--lora-r", "4", "--lr-scheduler", "cosine",
            "--target-modules", "q_proj", "--target-modules", "v_proj", "--no-save-best-adapter"]  # fmt: skip
    result = CliRunner().invoke(app, args, obj=state)
    assert result.exit_code == 0, result.output
    assert json.loads(sent[-1].content)["training_config"] == {
        "type": "lora", "total_training_epochs": 2, "lora_r": 4, "lr_scheduler": "cosine",
        "target_modules": ["q_proj", "v_proj"], "save_best_adapter": False,
    }  # fmt: skip
    sent.clear()
    for bad in (["--lora-r", "65"], ["--learning-rate", "0"], ["--method", "prefix"], ["--warmup-ratio", "0.9"]):
        refused = CliRunner().invoke(app, ["finetune", "-m", "tiny", "-d", str(data), *bad], obj=state)
        assert refused.exit_code == 2, (bad, refused.output)
    assert sent == []
