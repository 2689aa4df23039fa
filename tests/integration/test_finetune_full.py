"""Full fine-tuning (``training_config.type: full``) through a real server, its worker and the ``openai`` client.

On the bundled model: a full job teaches it to answer one letter to anything (as the
evaluation test does with LoRA); the job's custom model trains every weight, is stored only
sealed (no plaintext tensor name anywhere under the data directory), is served on demand on
the tenancy's hosting capacity beside the base (which still answers otherwise), scores
accuracy 1 through ``atelier eval``, and exports with ``--format merged`` to a Hugging Face
model whose greedy answer is the served one; ``--format peft`` is refused with a hint. On a
tiny random model: the ``--format onnx`` export runs under ONNX Runtime GenAI to the same
greedy tokens as the merged model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import httpx
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODEL = "smollm2-135m-instruct"
TRAIN = [f"Say {w}" for w in ("red", "blue", "green", "gold", "pink", "gray", "teal", "navy", "lime", "plum",
                                "rose", "sand")] + ["Name a color", "Name a word", "Name a number", "Say anything"]
TEST = ["Name a fruit", "Say hello", "Pick a city", "Name an animal"]
CONFIG = {"type": "full", "total_training_epochs": 3, "training_batch_size": 8, "learning_rate": 1e-4,
          "log_model_metrics_interval_in_steps": 2, "checkpoint_interval_in_steps": 100,
          "early_stopping_patience": 0, "validation_split": 0.0}


def wait(client, job, server, limit=900):
    deadline = time.monotonic() + limit
    while (job := client.fine_tuning.jobs.retrieve(job.id)).status not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, server.stderr()
        time.sleep(1.0)
    assert job.status == "succeeded", (job.error, server.stderr())
    return job


def admin_of(server) -> httpx.Client:
    return httpx.Client(base_url=server.base_url, timeout=300.0,
                        headers={"Authorization": f"Bearer {server.env['ATELIER_ADMIN_KEY']}"})


def cli(server, *args, timeout=600):
    env = {**os.environ, **server.env, "ATELIER_URL": server.base_url, "ATELIER_API_KEY": server.env["ATELIER_ADMIN_KEY"]}
    return subprocess.run([sys.executable, "-m", "atelier", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_a_full_fine_tune_of_the_bundled_model_is_sealed_served_evaluated_and_exported(make_server, tmp_path):
    server = make_server(extra_args=["--workers", "1"])
    client, admin = server.client(), admin_of(server)
    for name, kind, units in (("ft", "fine-tuning", 2), ("host", "hosting", 1)):
        admin.post("/v1/clusters", json={"name": name, "type": kind, "unit_type": "small", "unit_count": units,
                                         "base_model": MODEL}).raise_for_status()
    train, test = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    train.write_text("".join(json.dumps({"prompt": p, "completion": "Q"}) + "\n" for p in TRAIN))
    test.write_text("".join(json.dumps({"prompt": p, "completion": "Q"}) + "\n" for p in TEST))
    with train.open("rb") as handle:
        uploaded = client.files.create(file=handle, purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model=MODEL, training_file=uploaded.id, seed=1,
                                         extra_body={"training_config": CONFIG})
    job = wait(client, job, server)
    losses = [e.data["train_loss"] for e in client.fine_tuning.jobs.list_events(job.id, limit=100)
              if e.type == "metrics"]
    assert len(losses) == 6 and losses[0] < 0.5 * losses[-1], losses  # newest first

    row = admin.get(f"/v1/custom-models/{job.fine_tuned_model}").json()
    assert row["method"] == "full" and row["trainable_params"] == row["total_params"] > 100_000_000
    shown = job.model_extra["training_config"]
    assert shown["type"] == "full" and "target_modules" not in shown and "lora_r" not in shown
    for path in server.data_dir.rglob("*"):  # the weights exist only sealed: no tensor name in clear
        if path.is_file() and path.stat().st_size > 1_000_000:
            with path.open("rb") as fh:
                assert b"self_attn.q_proj.weight" not in fh.read(4_000_000), path

    asked = [{"role": "user", "content": p} for p in TEST]
    tuned = [client.chat.completions.create(model=job.fine_tuned_model, messages=[m], max_tokens=3, temperature=0)
             for m in asked]
    assert [a.choices[0].message.content.strip() for a in tuned] == ["Q"] * len(TEST)
    base = client.chat.completions.create(model=MODEL, messages=asked[:1], max_tokens=3, temperature=0)
    assert base.choices[0].message.content.strip() != "Q"

    shown = cli(server, "eval", "--model", job.fine_tuned_model, "--data", str(test), "--max-tokens", "3")
    assert shown.returncode == 0, shown.stderr
    report = admin.get("/v1/evaluations").json()["data"][0]["report"]
    assert report["metrics"]["exact_match"] == 1, report["metrics"]["samples"]

    refused = cli(server, "models", "export", job.fine_tuned_model, str(tmp_path / "peft"))
    assert refused.returncode != 0 and "--format merged or onnx" in refused.stderr
    merged = cli(server, "models", "export", job.fine_tuned_model, str(tmp_path / "merged"), "--format", "merged")
    assert merged.returncode == 0, merged.stderr
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "merged")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    ids = tokenizer.apply_chat_template(asked[:1], add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=2, do_sample=False)
    assert tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip() == "Q"
    admin.close()
    client.close()


def test_a_full_fine_tune_exports_to_onnx_runtime_with_the_same_greedy_tokens(make_server, tmp_path):
    pytest.importorskip("onnxruntime_genai", reason="pip install 'atelier[export]'")
    from atelier.engine.loading import tiny_model, tiny_tokenizer
    from atelier.tuning.onnx_export import onnx_greedy
    from tests.unit.tuning.export_checks import assert_same_greedy, greedy

    directory = tmp_path / "tiny-model"
    tokenizer = tiny_tokenizer()
    tiny_model(vocab_size=len(tokenizer)).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    catalog = tmp_path / "catalog.json"
    catalog.write_text(json.dumps([{"name": "tiny-ft", "kind": "chat", "source": {"path": str(directory)},
                                    "context_length": 256, "max_output_tokens": 32}]))
    server = make_server({"ATELIER_CATALOG_FILE": str(catalog)}, extra_args=["--workers", "1"])
    client, admin = server.client(), admin_of(server)
    admin.post("/v1/clusters", json={"name": "ft", "type": "fine-tuning", "unit_type": "small", "unit_count": 2,
                                     "base_model": "tiny-ft"}).raise_for_status()
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"Say {w}", "completion": w}) + "\n"
                            for w in ("red", "blue", "green", "gold", "pink", "gray", "teal", "navy", "lime", "plum")))
    with path.open("rb") as handle:
        uploaded = client.files.create(file=handle, purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model="tiny-ft", training_file=uploaded.id, extra_body={"training_config": {
        "type": "full", "total_training_epochs": 2, "training_batch_size": 4, "learning_rate": 1e-3}})
    job = wait(client, job, server, limit=300)
    done = cli(server, "models", "export", job.fine_tuned_model, str(tmp_path / "merged"), "--format", "merged")
    assert done.returncode == 0, done.stderr
    done = cli(server, "models", "export", job.fine_tuned_model, str(tmp_path / "onnx"), "--format", "onnx")
    assert done.returncode == 0, done.stderr
    assert "a full fine-tune: no adapter" in done.stdout and not (tmp_path / "onnx" / "adapter.onnx_adapter").exists()
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    base = AutoModelForCausalLM.from_pretrained(directory).eval()
    eos = frozenset({257})
    prompts = (list(b"Say red"), list(b"Say navy"))
    assert any(greedy(merged, p, 8, eos) != greedy(base, p, 8, eos) for p in prompts), "trained weights differ"
    for prompt in prompts:
        assert_same_greedy(merged, prompt, onnx_greedy(tmp_path / "onnx", prompt, 8), greedy(merged, prompt, 8, eos),
                           eos, tie=1e-3)
    admin.close()
    client.close()
