"""Atelier on ``engine = "vllm"``: a real vLLM OpenAI server (CPU build) serves the base and the custom models.

vLLM (``scripts/install_vllm.sh``) runs the bundled model's safetensors copy under its
catalog name. Atelier (``atelier serve --workers 1``, ``ATELIER_ENGINE=vllm``) fine-tunes two
LoRA adapters with its own jobs (each taught to answer one letter to anything), hosts them on
endpoints, and everything is checked through the official ``openai`` client: the base and both
adapters answer, the adapters change the answers, vLLM only ever sees opaque adapter names,
deleting an endpoint unloads its adapter from vLLM, a T-Few adapter is refused with a 400, and
another tenancy reaches none of it. Then the same data directory is served again by the
in-process engine (float weights) and its greedy answers are compared with vLLM's.

Agreement between the two engines: both compute in float32, with different kernels (vLLM's CPU
attention, PyTorch's here), so log probabilities differ by rounding: measured at most 2e-5 nats
over 27 greedy positions of three prompts (AVX-512 machine), where the smallest top-two gap was
0.015. A greedy token can differ only where the top two candidates are closer than the rounding:
the test requires identical greedy tokens up to the first position where the in-process top-two
gap is below ``TIE`` (100x the measured rounding), chosen-token log probabilities within
``LOGPROB_TOLERANCE`` there, and at least ``GREEDY_TOKENS`` positions compared in all. The
adapters' answers (one letter, learned with a wide margin) must be equal outright.
"""

from __future__ import annotations

import json
import os
import time

import httpx
import openai
import pytest

from bench.vllm_server import REQUIRE_ENV, VllmServer, vllm_python

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODEL = "smollm2-135m-instruct"
WORDS = ["red", "blue", "green", "gold", "pink", "gray", "teal", "navy", "lime", "plum", "rose", "sand"]
TRAINING_PROMPTS = [f"Say {w}" for w in WORDS] + ["Name a color", "Name a word", "Name a number", "Say anything"]
LETTERS = {"Q": {"lora_r": 8}, "Z": {"lora_r": 16}}
TRAINING = {"type": "lora", "total_training_epochs": 4, "training_batch_size": 8, "learning_rate": 0.003,
            "log_model_metrics_interval_in_steps": 2, "early_stopping_patience": 0}
PROMPTS = ["What is the capital of France?", "Name a color", "Write a haiku about the sea."]
GREEDY_TOKENS = 12
TIE = 0.002
LOGPROB_TOLERANCE = 0.002
JOB_TIMEOUT = 900.0


@pytest.fixture(scope="module")
def vllm(tmp_path_factory):
    """vLLM's server on the bundled model (a failure, not a skip, when ``ATELIER_REQUIRE_VLLM=1``)."""
    if vllm_python() is None:
        reason = "vLLM is not installed (scripts/install_vllm.sh)"
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{reason}; {REQUIRE_ENV}=1: the vLLM test must run", pytrace=False)
        pytest.skip(reason)
    from pathlib import Path

    from atelier.catalog import BUILTIN
    from atelier.engine.loading import model_directory

    spec = next(s for s in BUILTIN if s.name == MODEL)
    cache = Path(os.environ.get("ATELIER_CACHE_DIR", "~/.cache/atelier")).expanduser()
    workdir = tmp_path_factory.mktemp("vllm")
    server = VllmServer(model_directory(spec, cache), MODEL, workdir / "vllm.log", threads=1)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def created(response: httpx.Response) -> dict:
    assert response.status_code == 201, response.text
    return response.json()


def train(client: openai.OpenAI, tmp_path, letter: str, method: str = "lora", **settings) -> str:
    path = tmp_path / f"{letter}.jsonl"
    path.write_text("".join(json.dumps({"prompt": p, "completion": letter}) + "\n" for p in TRAINING_PROMPTS))
    with path.open("rb") as handle:
        uploaded = client.files.create(file=handle, purpose="fine-tune")
    config = {**TRAINING, "type": method, **settings}
    return client.fine_tuning.jobs.create(model=MODEL, training_file=uploaded.id, suffix=f"letter-{letter}", seed=1,
                                          extra_body={"training_config": config}).id


def wait(client: openai.OpenAI, server, job_id: str) -> str:
    deadline = time.monotonic() + JOB_TIMEOUT
    while (job := client.fine_tuning.jobs.retrieve(job_id)).status not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, f"job {job_id} still {job.status}:\n{server.stderr()}"
        time.sleep(1.0)
    assert job.status == "succeeded", (job.error, server.stderr())
    return job.fine_tuned_model


def greedy(client: openai.OpenAI, model: str, prompt: str, max_tokens: int = 4):
    completion = client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                                max_tokens=max_tokens, temperature=0, logprobs=True, top_logprobs=2)
    assert completion.model == model
    return completion.choices[0]


def test_vllm_serves_the_base_and_custom_models_behind_atelier(vllm, make_server, tmp_path):
    adapter_dir = tmp_path / "vllm-adapters"
    server = make_server({"ATELIER_ENGINE": "vllm", "ATELIER_VLLM_URL": vllm.url,
                          "ATELIER_VLLM_ADAPTER_DIR": str(adapter_dir)}, extra_args=["--workers", "1"])
    client = server.client()
    admin = httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {server.env['ATELIER_ADMIN_KEY']}"},
                         timeout=120.0)
    health = admin.get("/health").json()
    assert health["status"] == "ok" and health["engine"]["vllm_servers"][0]["models"] == [MODEL], health
    cluster = {"unit_type": "small", "base_model": MODEL}
    created(admin.post("/v1/clusters", json={**cluster, "name": "ft", "type": "fine-tuning", "unit_count": 4}))
    hosting = created(admin.post("/v1/clusters", json={**cluster, "name": "host", "type": "hosting", "unit_count": 1}))

    jobs = {letter: train(client, tmp_path, letter, **settings) for letter, settings in LETTERS.items()}
    tfew_job = train(client, tmp_path, "T", method="tfew", total_training_epochs=1)
    custom = {letter: wait(client, server, job_id) for letter, job_id in jobs.items()}
    tfew = wait(client, server, tfew_job)

    endpoints = {letter: created(admin.post("/v1/endpoints", json={
        "name": f"letter-{letter.lower()}", "cluster_id": hosting["id"], "model": model_id}))["id"]
        for letter, model_id in custom.items()}  # fmt: skip
    refused = admin.post("/v1/endpoints", json={"name": "tfew", "cluster_id": hosting["id"], "model": tfew})
    assert refused.status_code == 400 and "LoRA adapters only" in refused.json()["error"]["message"], refused.text

    # vLLM knows the adapters by opaque names only, never a user's (the copies live in the adapter dir)
    loaded = [name for name in vllm.models() if name != MODEL]
    assert len(loaded) == 2 and all(name.startswith("atl-") for name in loaded), loaded
    assert sorted(p.name for p in adapter_dir.iterdir()) == sorted(loaded)
    assert not any(letter in name or model_id in name for name in loaded for letter, model_id in custom.items())

    for prompt in PROMPTS[:2]:
        base = greedy(client, MODEL, prompt).message.content
        tuned = {letter: greedy(client, endpoints[letter], prompt).message.content for letter in LETTERS}
        assert tuned == {letter: letter for letter in LETTERS}, tuned
        assert base not in tuned.values(), base
    streamed = client.chat.completions.create(model=custom["Q"], messages=[{"role": "user", "content": "Say hi"}],
                                              max_tokens=4, temperature=0, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == "Q"
    shaped = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "A city in France?"}],
                                            max_tokens=40, temperature=0, response_format={
        "type": "json_schema", "json_schema": {"name": "city", "schema": {
            "type": "object", "properties": {"city": {"type": "string", "maxLength": 20}}, "required": ["city"],
            "additionalProperties": False}}})  # fmt: skip
    assert set(json.loads(shaped.choices[0].message.content)) == {"city"}

    # another tenancy reaches neither the endpoints, nor the custom models, nor vLLM's names
    other = created(admin.post("/v1/tenancies", json={"name": "vllm-beta"}))
    stranger = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=other["admin_key"], max_retries=0)
    for model in [*endpoints.values(), *custom.values(), *loaded]:
        with pytest.raises(openai.NotFoundError):
            greedy(stranger, model, "Say hi")
    stranger.close()

    # deleting the endpoint frees the adapter in vLLM (and its copy)
    deleted = admin.delete(f"/v1/endpoints/{endpoints['Z']}")
    assert deleted.status_code in (200, 204), deleted.text
    remaining = [name for name in vllm.models() if name != MODEL]
    assert len(remaining) == 1 and [p.name for p in adapter_dir.iterdir()] == remaining

    on_vllm = {prompt: greedy(client, MODEL, prompt, GREEDY_TOKENS) for prompt in PROMPTS}
    on_vllm_q = greedy(client, endpoints["Q"], PROMPTS[0])
    admin.close()
    client.close()
    server.stop()
    assert [name for name in vllm.models() if name != MODEL] == []  # a clean shutdown unloads what it loaded

    # the same data directory on the in-process engine, float weights: the same greedy answers
    local = make_server({"ATELIER_QUANTIZATION": "none"}, workdir=server.data_dir.parent,
                        extra_args=["--workers", "0"])
    local_client = local.client()
    assert greedy(local_client, endpoints["Q"], PROMPTS[0]).message.content == on_vllm_q.message.content == "Q"
    compared = 0
    for prompt, theirs in on_vllm.items():
        ours = greedy(local_client, MODEL, prompt, GREEDY_TOKENS)
        compared += compare(prompt, ours.logprobs.content, theirs.logprobs.content)
    assert compared >= GREEDY_TOKENS  # not a vacuous comparison: most positions are far from a tie
    local_client.close()


def compare(prompt: str, ours, theirs) -> int:
    """Greedy tokens equal up to the first near-tie of ours, log probabilities close on the way; positions compared."""
    for position, (a, b) in enumerate(zip(ours, theirs)):
        gap = a.top_logprobs[0].logprob - a.top_logprobs[1].logprob if len(a.top_logprobs) > 1 else float("inf")
        if gap < TIE:
            return position  # a near-tie: either token is a correct greedy choice under rounding
        assert a.token == b.token, (prompt, position, a, b)
        assert abs(a.logprob - b.logprob) < LOGPROB_TOLERANCE, (prompt, position, a.logprob, b.logprob)
    return min(len(ours), len(theirs))
