"""``atelier eval`` against a real server on the bundled model: a custom model against its base prompted k-shot.

A LoRA job teaches the bundled model to answer one letter to anything (as in the vLLM test);
the CLI then evaluates the custom model on held-out prompts whose reference is that letter,
with a 3-shot baseline of the base model drawn from the training file. The tuned model must
answer every test prompt exactly (accuracy 1, its loss far below the baseline's), and the
report must carry every metric for both; ``atelier jobs logs --tensorboard`` writes the job's
curves as TensorBoard event files.
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
CONFIG = {"type": "lora", "total_training_epochs": 4, "training_batch_size": 8, "learning_rate": 0.003,
          "lora_r": 8, "log_model_metrics_interval_in_steps": 2, "early_stopping_patience": 0}


def test_a_tuned_model_against_its_base_k_shot_through_the_cli(make_server, tmp_path):
    server = make_server(extra_args=["--workers", "1"])
    client = server.client()
    admin = httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {server.env['ATELIER_ADMIN_KEY']}"},
                         timeout=120.0)
    admin.post("/v1/clusters", json={"name": "ft", "type": "fine-tuning", "unit_type": "small", "unit_count": 2,
                                     "base_model": MODEL}).raise_for_status()
    admin.post("/v1/clusters", json={"name": "host", "type": "hosting", "unit_type": "small", "unit_count": 1,
                                     "base_model": MODEL}).raise_for_status()
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({"prompt": p, "completion": "Q"}) + "\n" for p in TRAIN))
    test = tmp_path / "test.jsonl"
    test.write_text("".join(json.dumps({"prompt": p, "completion": "Q"}) + "\n" for p in TEST))
    with train.open("rb") as handle:
        uploaded = client.files.create(file=handle, purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model=MODEL, training_file=uploaded.id, seed=1,
                                         extra_body={"training_config": CONFIG})
    deadline = time.monotonic() + 900
    while (job := client.fine_tuning.jobs.retrieve(job.id)).status not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, server.stderr()
        time.sleep(1.0)
    assert job.status == "succeeded", (job.error, server.stderr())

    env = {**os.environ, "ATELIER_URL": server.base_url, "ATELIER_API_KEY": server.env["ATELIER_ADMIN_KEY"]}
    command = [sys.executable, "-m", "atelier", "eval", "--model", job.fine_tuned_model, "--data", str(test),
               "--k-shot", "3", "--examples", str(train), "--max-tokens", "4", "--label", "Q", "--label", "R"]
    shown = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert shown.returncode == 0, shown.stderr
    assert "3-shot" in shown.stdout and "accuracy" in shown.stdout, shown.stdout
    listed = admin.get("/v1/evaluations").json()["data"]
    report = listed[0]["report"]
    assert report["baseline"]["k"] == 3 and report["n_examples"] == len(TEST)
    tuned, base = report["metrics"], report["baseline"]["metrics"]
    assert tuned["accuracy"] == 1 and tuned["exact_match"] == 1, tuned["samples"]
    assert tuned["loss"] < 0.5 * base["loss"], (tuned["loss"], base["loss"])
    for metrics in (tuned, base):
        assert {"loss", "perplexity", "token_accuracy", "exact_match", "accuracy", "macro_f1", "rouge_l"} <= set(metrics)
    # the job's curves as TensorBoard event files
    logs = subprocess.run([sys.executable, "-m", "atelier", "jobs", "logs", job.id, "--tensorboard",
                           str(tmp_path / "tb")], env=env, capture_output=True, text=True, timeout=120)
    assert logs.returncode == 0, logs.stderr
    [events_file] = (tmp_path / "tb" / job.id).glob("events.out.tfevents.*")
    assert events_file.stat().st_size > 0
    admin.close()
    client.close()
