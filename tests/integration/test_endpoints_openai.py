"""Many custom models on one hosting cluster, served together: the "done when" of dedicated clusters.

On a real server (``atelier serve --workers 1``) whose catalog has a tiny random Llama
(registered through ``ATELIER_CATALOG_FILE``), the test creates a fine-tuning cluster and
trains two LoRA and two T-Few custom models through fine-tuning jobs, each taught to answer
its own single letter whatever it is asked. It then creates a hosting cluster with one
endpoint per custom model and one for the base model, and chats with all of them at once
through the official ``openai`` client at temperature 0, then with each one alone: every
endpoint's answer in the concurrent run must equal its answer alone (rows of different
adapters share forward passes, and must not bleed into each other).

What is asserted must hold on any CPU, whose float rounding differs (AVX2, AVX-512, thread
counts): batched and alone forward passes agree to ~1e-6, not bit for bit, so a greedy token
is the same only where its top two logits are further apart than that. The learned task is
therefore one constant letter then the end of the turn, which every seed tried learns with a
top-two gap of at least 3 logits at both steps (LoRA and T-Few), and the base model's greedy
answers (fixed weights, seed 0) have gaps of at least 0.04. Beyond that the test asserts only
robust facts: training loss falls, every adapter answers its letter (so unlike the base and
unlike each other).
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from threading import Barrier

import httpx
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODEL = "tiny-endpoints"
PROMPTS = ["Say red", "Name a color"]
WORDS = ["red", "blue", "green", "gold", "pink", "gray", "teal", "navy", "lime", "plum", "rose", "sand", "mint",
         "ruby", "jade", "onyx", "opal", "sage", "snow", "rust"]
TRAINING_PROMPTS = [f"Say {w}" for w in WORDS] + ["Name a color", "Name a word", "Name a number", "Say anything"]
ADAPTERS = [  # (method, the letter it learns to answer, training settings)
    ("lora", "Q", {"learning_rate": 0.02, "lora_r": 4}),
    ("lora", "Z", {"learning_rate": 0.02, "lora_r": 8}),
    ("tfew", "X", {"learning_rate": 0.5}),
    ("tfew", "J", {"learning_rate": 0.3}),
]
MAX_TOKENS = 8
JOB_TIMEOUT = 600.0


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


def created(response: httpx.Response) -> dict:
    assert response.status_code == 201, response.text
    return response.json()


def train(client, tmp_path, method: str, letter: str, settings: dict) -> str:
    """Start a job teaching the base model to answer ``letter`` to anything; returns the job id."""
    path = tmp_path / f"{letter}.jsonl"
    path.write_text("".join(json.dumps({"prompt": p, "completion": letter}) + "\n" for p in TRAINING_PROMPTS))
    with path.open("rb") as handle:
        uploaded = client.files.create(file=handle, purpose="fine-tune")
    config = {"type": method, "total_training_epochs": 20, "training_batch_size": 4,
              "log_model_metrics_interval_in_steps": 10, "early_stopping_patience": 0, **settings}
    job = client.fine_tuning.jobs.create(model=MODEL, training_file=uploaded.id, suffix=f"letter-{letter}", seed=1,
                                         extra_body={"training_config": config})
    assert job.status == "queued", job.error
    return job.id


def train_losses(client, job_id: str) -> list[float]:
    """The job's training loss at each metrics event, in step order."""
    events = [e for e in client.fine_tuning.jobs.list_events(job_id, limit=1000) if e.type == "metrics"]
    return [e.data["train_loss"] for e in sorted(events, key=lambda e: e.data["step"])]


def answer(client, model: str, prompt: str) -> str:
    completion = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": prompt}], max_tokens=MAX_TOKENS, temperature=0
    )
    assert completion.model == model
    return completion.choices[0].message.content


def test_many_custom_models_served_together_answer_as_alone(server, tmp_path):
    client = server.client()
    key = server.env["ATELIER_ADMIN_KEY"]
    admin = httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=120.0)
    cluster = {"unit_type": "small", "base_model": MODEL}
    ft = created(admin.post("/v1/clusters", json={**cluster, "name": "ft", "type": "fine-tuning", "unit_count": 8}))
    hosting = created(admin.post("/v1/clusters", json={**cluster, "name": "host", "type": "hosting", "unit_count": 1}))

    jobs = [train(client, tmp_path, method, word, settings) for method, word, settings in ADAPTERS]
    custom = []
    deadline = time.monotonic() + JOB_TIMEOUT
    for job_id in jobs:
        while (job := client.fine_tuning.jobs.retrieve(job_id)).status not in ("succeeded", "failed", "cancelled"):
            assert time.monotonic() < deadline, f"job {job_id} still {job.status}:\n{server.stderr()}"
            time.sleep(1.0)
        assert job.status == "succeeded", (job.error, server.stderr())
        assert job.cluster_id == ft["id"]
        losses = train_losses(client, job_id)
        assert len(losses) > 10 and losses[-1] < 0.25 * losses[0], f"training loss did not fall: {losses}"
        custom.append(job.fine_tuned_model)
    assert len(set(custom)) == len(ADAPTERS)

    endpoints = {"base": created(admin.post("/v1/endpoints", json={
        "name": "base", "cluster_id": hosting["id"], "model": MODEL}))["id"]}
    for (_, letter, _), model_id in zip(ADAPTERS, custom, strict=True):
        endpoint = created(admin.post("/v1/endpoints", json={"name": f"letter-{letter.lower()}",
                                                             "cluster_id": hosting["id"], "model": model_id}))
        assert endpoint["state"] == "active" and endpoint["custom_model_id"] == model_id
        endpoints[letter] = endpoint["id"]
    shown = admin.get(f"/v1/clusters/{hosting['id']}").json()
    assert (shown["used_endpoint_capacity"], shown["total_endpoint_capacity"]) == (len(ADAPTERS) + 1, 50)
    assert set(endpoints.values()) <= {m.id for m in client.models.list()}

    calls = [(name, endpoint_id, prompt) for name, endpoint_id in endpoints.items() for prompt in PROMPTS]
    start = Barrier(len(calls))

    def together(call):
        start.wait()  # every request in flight at once: the engine batches them
        return answer(client, call[1], call[2])

    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        concurrent = dict(zip(calls, pool.map(together, calls), strict=True))
    alone = {call: answer(client, call[1], call[2]) for call in calls}
    different = {call: (concurrent[call], alone[call]) for call in calls if concurrent[call] != alone[call]}
    assert not different, f"concurrent answers differ from the same endpoint alone: {different}"

    for prompt in PROMPTS:
        base = alone[("base", endpoints["base"], prompt)]
        tuned = {letter: alone[(letter, endpoints[letter], prompt)] for _, letter, _ in ADAPTERS}
        assert tuned == {letter: letter for letter in tuned}, f"adapters did not learn their letters: {tuned}"
        assert base not in tuned.values(), (base, tuned)  # each adapter changes the base's answer...
        assert len(set(tuned.values())) == len(tuned)  # ...and no two answer alike
    # the custom model's id reaches the same adapter as its endpoint
    letter = ADAPTERS[2][1]
    assert answer(client, custom[2], PROMPTS[0]) == alone[(letter, endpoints[letter], PROMPTS[0])]
