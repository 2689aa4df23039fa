"""A whole fine-tuning job on a real server with a worker, driven by the official ``openai`` client.

The base model is a tiny random Llama written to a directory with ``save_pretrained`` and
registered through ``ATELIER_CATALOG_FILE``; the server runs one worker process
(``--workers 1``); a fine-tuning and a hosting cluster of it are created through the API (the
default tenancy has units to spare). The client uploads the data, creates the job with Atelier's
``training_config`` in ``extra_body``, polls it to ``succeeded``, lists its events and
checkpoints, hosts the resulting custom model on an endpoint and chats with it; the CLI exports the adapter as a
PEFT directory that ``peft.PeftModel.from_pretrained`` loads, as a merged model with the same logits, and as an
ONNX model that ONNX Runtime GenAI runs to the same greedy tokens.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import httpx
import openai
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODEL = "tiny-ft"
WORDS = ["red", "blue", "green", "gold", "pink", "gray", "teal", "navy", "lime", "plum", "rose", "sand"]
TRAINING_CONFIG = {
    "type": "lora", "total_training_epochs": 2, "training_batch_size": 4, "lora_r": 4, "learning_rate": 0.01,
    "log_model_metrics_interval_in_steps": 1, "checkpoint_interval_in_steps": 2,
}  # fmt: skip


@pytest.fixture
def server(tmp_path, make_server):
    """A server whose catalog has the tiny model, with one worker process."""
    from atelier.engine.loading import tiny_model, tiny_tokenizer

    directory = tmp_path / "tiny-model"
    tokenizer = tiny_tokenizer()
    tiny_model(vocab_size=len(tokenizer)).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    catalog = tmp_path / "catalog.json"
    entry = {"name": MODEL, "kind": "chat", "source": {"path": str(directory)}, "context_length": 256,
             "max_output_tokens": 32}
    catalog.write_text(json.dumps([entry]))
    return make_server({"ATELIER_CATALOG_FILE": str(catalog)}, extra_args=["--workers", "1"])


def test_a_whole_job_with_the_openai_client(server, tmp_path):
    client = server.client()
    key = server.env["ATELIER_ADMIN_KEY"]
    admin = httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=120.0)
    cluster = {"unit_type": "small", "base_model": MODEL}
    ft = admin.post("/v1/clusters", json={**cluster, "name": "ft", "type": "fine-tuning", "unit_count": 2})
    hosting = admin.post("/v1/clusters", json={**cluster, "name": "host", "type": "hosting", "unit_count": 1})
    assert ft.status_code == hosting.status_code == 201, (ft.text, hosting.text)
    data = "".join(json.dumps({"prompt": f"Say {w}", "completion": w}) + "\n" for w in WORDS)
    path = tmp_path / "train.jsonl"
    path.write_text(data)
    with path.open("rb") as handle:
        uploaded = client.files.create(file=handle, purpose="fine-tune")

    job = client.fine_tuning.jobs.create(
        model=MODEL, training_file=uploaded.id, suffix="colors", seed=7,
        extra_body={"training_config": TRAINING_CONFIG}, extra_headers={"Idempotency-Key": "ft-it-1"},
    )  # fmt: skip
    assert job.status == "queued" and job.model == MODEL and job.seed == 7
    again = client.fine_tuning.jobs.create(
        model=MODEL, training_file=uploaded.id, suffix="colors", seed=7,
        extra_body={"training_config": TRAINING_CONFIG}, extra_headers={"Idempotency-Key": "ft-it-1"},
    )  # fmt: skip
    assert again.id == job.id

    deadline = time.monotonic() + 300
    while (job := client.fine_tuning.jobs.retrieve(job.id)).status not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, f"job still {job.status}:\n{server.stderr()}"
        time.sleep(1.0)
    assert job.status == "succeeded", (job.error, server.stderr())
    assert job.fine_tuned_model and job.fine_tuned_model.startswith("cm_") and job.trained_tokens > 0
    assert job.id in [j.id for j in client.fine_tuning.jobs.list(limit=10)]

    events = list(client.fine_tuning.jobs.list_events(job.id, limit=1000))
    metrics = [e for e in events if e.type == "metrics"]
    steps = sorted(e.data["step"] for e in metrics)
    assert steps == list(range(1, steps[-1] + 1)) and steps[-1] == 6  # 10 train examples, batch 4, 2 epochs
    assert any("succeeded" in e.message for e in events)
    checkpoints = list(client.fine_tuning.jobs.checkpoints.list(job.id))
    assert [c.step_number for c in checkpoints] == [4, 2]
    assert checkpoints[0].metrics.train_loss is not None and checkpoints[0].fine_tuning_job_id == job.id

    assert job.cluster_id == ft.json()["id"]
    right_away = client.chat.completions.create(  # callable at once, on the tenancy's hosting capacity
        model=job.fine_tuned_model, messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    assert right_away.model == job.fine_tuned_model and right_away.usage.completion_tokens >= 1
    endpoint = admin.post("/v1/endpoints", json={"name": "colors", "cluster_id": hosting.json()["id"],
                                                 "model": job.fine_tuned_model})
    assert endpoint.status_code == 201, endpoint.text
    assert {job.fine_tuned_model, endpoint.json()["id"]} <= {m.id for m in client.models.list()}
    answer = client.chat.completions.create(
        model=job.fine_tuned_model, messages=[{"role": "user", "content": "Say red"}], max_tokens=4, temperature=0
    )
    assert answer.model == job.fine_tuned_model and answer.usage.completion_tokens >= 1
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="cm_" + "0" * 24, messages=[{"role": "user", "content": "hi"}])

    bad = tmp_path / "bad.jsonl"
    bad.write_text(data.replace('"Say blue"', '""') + "{oops\n")
    with bad.open("rb") as handle:
        bad_file = client.files.create(file=handle, purpose="fine-tune")
    failed = client.fine_tuning.jobs.create(model=MODEL, training_file=bad_file.id)
    assert failed.status == "failed" and "line 2:" in failed.error.message and "line 13:" in failed.error.message
    with pytest.raises(openai.BadRequestError) as caught:
        client.fine_tuning.jobs.create(model=MODEL, training_file=uploaded.id, extra_body={
            "training_config": {"lora_r": 65}})
    assert caught.value.body["param"] == "training_config.lora_r"

    export = tmp_path / "exported"
    env = {**server.env, "ATELIER_URL": server.base_url, "ATELIER_API_KEY": server.env["ATELIER_ADMIN_KEY"]}
    done = subprocess.run([sys.executable, "-m", "atelier", "models", "export", job.fine_tuned_model, str(export)],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tmp_path / "tiny-model")
    peft_model = PeftModel.from_pretrained(base, export)
    assert peft_model.peft_config["default"].r == 4

    # --format merged and onnx: built by the CLI from its own catalog (the same ATELIER_CATALOG_FILE)
    import torch

    merged_dir = tmp_path / "merged"
    done = subprocess.run([sys.executable, "-m", "atelier", "models", "export", job.fine_tuned_model, str(merged_dir),
                           "--format", "merged"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "merging the LORA adapter" in done.stderr and str(merged_dir) in done.stdout
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    ids = torch.tensor([list(range(60, 80))])  # (1, T)
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, peft_model.eval()(input_ids=ids).logits,
                                   rtol=1e-4, atol=1e-4)
    pytest.importorskip("onnxruntime_genai", reason="pip install 'atelier[export]'")
    from atelier.tuning.onnx_export import onnx_greedy
    from tests.unit.tuning.export_checks import assert_same_greedy, greedy

    onnx_dir = tmp_path / "onnx"
    done = subprocess.run([sys.executable, "-m", "atelier", "models", "export", job.fine_tuned_model, str(onnx_dir),
                           "--format", "onnx"], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "adapter.onnx_adapter" in done.stdout and (onnx_dir / "README.md").is_file()
    eos = frozenset({257})
    for prompt in (list(b"Say red"), list(b"Say navy")):
        got = onnx_greedy(onnx_dir, prompt, 8)
        assert_same_greedy(peft_model, prompt, got, greedy(peft_model, prompt, 8, eos), eos, tie=1e-3)
