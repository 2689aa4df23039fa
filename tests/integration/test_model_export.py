"""Merged and ONNX exports of a LoRA on the bundled model generate what Atelier's engine generates.

The base is the bundled ``smollm2-135m-instruct`` (its converted Hugging Face directory, as
``atelier models export`` finds it); the adapter a random LoRA (r=8 on the attention
projections, B scaled down so the model still answers, differently). Atelier's in-process
engine serves base + adapter on float weights (``quantization="none"``); the merged directory
runs in transformers and the ONNX export under ONNX Runtime GenAI with its adapter file. Their
greedy tokens must agree with the engine's for the first ``N`` tokens of each prompt, except
where the two best logits are within ``TIE`` (two fp32 implementations round differently:
``export_checks.assert_same_greedy``).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow,
              pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")]

BASE = "smollm2-135m-instruct"
N = 24
PROMPTS = ["What is the capital of Japan?", "Write a short poem about the sea.", "Name three primary colors."]
TIE = 5e-3  # logits ~±30; PyTorch vs ONNX Runtime fp32 differ by ~1e-4 here (measured), a near-tie is 50x that


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The base directory, a random LoRA on it, its merged and ONNX exports, the reference model and prompts."""
    pytest.importorskip("onnxruntime_genai", reason="pip install 'atelier[export]'")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from atelier.catalog import Catalog
    from atelier.engine.loading import eos_ids, model_directory
    from atelier.settings import Settings
    from atelier.tuning.merge import merge_adapter
    from atelier.tuning.onnx_export import export_onnx
    from tests.unit.tuning.export_checks import save_random_adapter

    work = tmp_path_factory.mktemp("export")
    settings = Settings(data_dir=work / "data", cache_dir=os.environ.get("ATELIER_CACHE_DIR", "~/.cache/atelier"),
                        quantization="none", threads=2)  # fmt: skip
    catalog = Catalog.load()
    base_dir = model_directory(catalog.get(BASE), settings.cache_path)
    torch.set_num_threads(2)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    adapted = save_random_adapter(base, work / "adapter", "lora", seed=11, r=8,
                                  targets=["q_proj", "k_proj", "v_proj", "o_proj"], scale=0.2)  # fmt: skip
    merge_adapter(base_dir, work / "adapter", work / "merged")
    export_onnx(base_dir, work / "adapter", work / "onnx", title=f"random LoRA on {BASE}")
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    prompts = [
        tokenizer(tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                                tokenize=False), add_special_tokens=False)["input_ids"]
        for p in PROMPTS
    ]  # fmt: skip
    return {"work": work, "settings": settings, "catalog": catalog, "adapted": adapted, "prompts": prompts,
            "eos": eos_ids(tokenizer, base.config)}  # fmt: skip


def engine_greedy(setup, adapter: Path | None) -> list[list[int]]:
    """Atelier's in-process engine, float weights: greedy tokens of every prompt (base, or base + adapter)."""
    from atelier.engine.client import LocalEngine
    from atelier.engine.types import GenerationRequest, SamplingParams

    engine = LocalEngine(setup["catalog"], setup["settings"])
    try:
        slot = engine.add_adapter(BASE, "cm_export", adapter) if adapter is not None else None

        async def one(i: int, ids: list[int]) -> list[int]:
            request = GenerationRequest(f"r{i}", ids, SamplingParams(max_tokens=N, temperature=0), adapter_slot=slot)
            return [t for event in [e async for e in engine.generate(BASE, request)] for t in event.token_ids]

        return [asyncio.run(one(i, ids)) for i, ids in enumerate(setup["prompts"])]
    finally:
        engine.close()


def test_merged_and_onnx_exports_generate_the_engines_greedy_tokens(setup):
    from transformers import AutoModelForCausalLM

    from atelier.tuning.onnx_export import onnx_greedy
    from tests.unit.tuning.export_checks import assert_same_greedy, greedy

    served = engine_greedy(setup, setup["work"] / "adapter")
    plain = engine_greedy(setup, None)
    assert served != plain, "the adapter changes what the engine generates"
    merged = AutoModelForCausalLM.from_pretrained(setup["work"] / "merged").eval()
    reference, eos = setup["adapted"], setup["eos"]
    agreed = {"merged": 0, "onnx": 0}
    for prompt, want in zip(setup["prompts"], served):
        assert len(want) >= 8, "a prompt whose answer is long enough to compare"
        from_merged = greedy(merged, prompt, N, eos)
        from_onnx = onnx_greedy(setup["work"] / "onnx", prompt, N)
        agreed["merged"] += assert_same_greedy(reference, prompt, want, from_merged, eos, TIE)
        agreed["onnx"] += assert_same_greedy(reference, prompt, want, from_onnx, eos, TIE)
    compared = sum(len([t for t in w if t not in eos]) for w in served)
    print(f"greedy tokens agreeing with the engine's: {agreed} of {compared}")  # measured: all of them


def test_onnx_logits_with_the_adapter_file_are_pytorchs(setup):
    """The whole prompt's logits under ONNX Runtime GenAI with the adapter active, against PEFT's in PyTorch."""
    import numpy as np
    import onnxruntime_genai as og
    import torch

    model = og.Model(str(setup["work"] / "onnx"))
    adapters = og.Adapters(model)
    adapters.load(str(setup["work"] / "onnx" / "adapter.onnx_adapter"), "custom")
    for prompt in setup["prompts"]:
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=len(prompt) + 1)
        generator = og.Generator(model, params)
        generator.set_active_adapter(adapters, "custom")
        generator.append_tokens(np.asarray(prompt, dtype=np.int32))
        got = torch.from_numpy(np.array(generator.get_output("logits"))[0])  # (T, V)
        with torch.no_grad():
            want = setup["adapted"](input_ids=torch.tensor([prompt])).logits[0]  # (T, V)
        torch.testing.assert_close(got, want, rtol=0, atol=2e-3)  # measured 1.2e-4 on logits up to ~38


def test_the_readme_beside_the_onnx_model_runs(setup):
    """The README's snippet, as a user would run it in the export directory: the adapted model answers."""
    import subprocess
    import sys

    note = (setup["work"] / "onnx" / "README.md").read_text()
    code = note.split("```python\n", 1)[1].split("```", 1)[0]
    done = subprocess.run([sys.executable, "-c", code], cwd=setup["work"] / "onnx", capture_output=True, text=True,
                          timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "What is the capital of Japan?" in done.stdout and len(done.stdout.split("assistant", 1)[-1].strip()) > 3
