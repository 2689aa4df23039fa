"""A hyperparameter search and a QLoRA job on the bundled model, through a real server, its worker and ``openai``.

The task is the evaluation test's: answer one letter to anything. The search (two trials:
LoRA vs T-Few, learning rates drawn by Optuna) must show both trials with their validation
losses and curves, keep the lower one as the custom model, and that model must answer the
letter to prompts it never saw. The QLoRA job (``quantize_base: int8``) must say it quantized
the base, and its adapter, served over the int4 base, must answer the letter too (at 3e-3 for 8
steps: the defaults, 1e-3 and n_epochs auto's 12 steps, got one of three).
"""

from __future__ import annotations

import json

import httpx
import pytest

from tests.integration.test_finetune_full import wait as finished

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODEL = "smollm2-135m-instruct"
TRAIN = [f"Say {w}" for w in ("red", "blue", "green", "gold", "pink", "gray", "teal", "navy", "lime", "plum",
                                "rose", "sand", "mint", "ruby", "jade", "onyx")] + [
    "Name a color", "Name a word", "Name a number", "Say anything"]
TEST = ["Name a fruit", "Say hello", "Pick a city"]
BASE = {"total_training_epochs": 3, "training_batch_size": 8, "log_model_metrics_interval_in_steps": 2,
        "early_stopping_patience": 0, "validation_split": 0.2}


def answers(client, model):
    return [client.chat.completions.create(model=model, messages=[{"role": "user", "content": p}], max_tokens=3,
                                           temperature=0).choices[0].message.content.strip() for p in TEST]


def test_a_search_and_a_qlora_job_on_the_bundled_model(make_server, tmp_path):
    server = make_server(extra_args=["--workers", "1"])
    client = server.client()
    admin = httpx.Client(base_url=server.base_url, timeout=120.0,
                         headers={"Authorization": f"Bearer {server.env['ATELIER_ADMIN_KEY']}"})
    for name, kind, units in (("ft", "fine-tuning", 2), ("host", "hosting", 1)):
        admin.post("/v1/clusters", json={"name": name, "type": kind, "unit_type": "small", "unit_count": units,
                                         "base_model": MODEL}).raise_for_status()
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps({"prompt": p, "completion": "Q"}) + "\n" for p in TRAIN))
    with path.open("rb") as handle:
        uploaded = client.files.create(file=handle, purpose="fine-tune")

    search = {"max_trials": 2, "type": ["lora", "tfew"], "seed": 3}
    job = client.fine_tuning.jobs.create(model=MODEL, training_file=uploaded.id, seed=1,
                                         extra_body={"training_config": BASE, "search": search})
    job = finished(client, job, server)
    shown = job.model_extra["search"]
    trials = shown["trials"]
    assert len(trials) == 2 and all(t["state"] == "complete" for t in trials), trials
    best = min(trials, key=lambda t: t["valid_loss"])
    assert shown["best_trial"] == best["trial"]
    events = list(client.fine_tuning.jobs.list_events(job.id, limit=1000))
    curves = {e.data["trial"] for e in events if e.type == "metrics" and e.data.get("trial") is not None}
    assert curves == {0, 1}
    row = admin.get(f"/v1/custom-models/{job.fine_tuned_model}").json()
    assert row["method"] == best["params"]["type"]
    assert answers(client, job.fine_tuned_model) == ["Q"] * len(TEST)

    qlora = client.fine_tuning.jobs.create(model=MODEL, training_file=uploaded.id, seed=1, extra_body={
        "training_config": {**BASE, "type": "lora", "quantize_base": "int8", "learning_rate": 3e-3,
                            "total_training_epochs": 4}})
    qlora = finished(client, qlora, server)
    messages = [e.message for e in client.fine_tuning.jobs.list_events(qlora.id, limit=1000)]
    assert any("base quantized to int8" in m for m in messages), messages
    assert answers(client, qlora.fine_tuned_model) == ["Q"] * len(TEST)  # served over the int4 base
    admin.close()
    client.close()
