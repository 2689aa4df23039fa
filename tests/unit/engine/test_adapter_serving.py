"""LocalEngine.add_adapter: a merged copy per adapter, equal to PEFT's own unmerged model."""

import asyncio
import copy

import pytest
import torch

from atelier.catalog import BUILTIN, Catalog, ModelSource, ModelSpec
from atelier.engine.client import MAX_MERGED_ADAPTERS, LocalEngine
from atelier.engine.loading import tiny_loaded
from atelier.engine.types import GenerationRequest, SamplingParams
from atelier.errors import NotFound
from atelier.settings import Settings

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")


@pytest.fixture
def engine(tmp_path):
    spec = ModelSpec(name="tiny", kind="chat", source=ModelSource(path="/nonexistent"), context_length=128,
                     max_output_tokens=32)
    eng = LocalEngine(Catalog(list(BUILTIN) + [spec]), Settings(data_dir=tmp_path, cache_dir=tmp_path / "c", threads=1),
                      preloaded={"tiny": tiny_loaded("tiny", seed=1)})
    yield eng
    eng.close()


def save_adapter(base, path, kind: str, seed: int):
    """A PEFT adapter with non-trivial weights (LoRA B and IA3 vectors away from their identity init)."""
    from peft import IA3Config, LoraConfig, get_peft_model

    torch.manual_seed(seed)
    config = (LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
              if kind == "lora" else IA3Config(target_modules=["k_proj", "down_proj"], feedforward_modules=["down_proj"]))
    model = get_peft_model(copy.deepcopy(base), config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ia3_" in name:
                p.uniform_(0.5, 1.5)
    model.save_pretrained(str(path))
    return model


def greedy(model, ids: list[int], n: int) -> list[int]:
    """Plain greedy decoding with full recomputation: the reference."""
    out = list(ids)
    with torch.no_grad():
        for _ in range(n):
            logits = model(input_ids=torch.tensor([out])).logits  # (1, T, V)
            out.append(int(logits[0, -1].argmax()))
    return out[len(ids):]


async def generate(engine, slot, ids, n):
    req = GenerationRequest(f"r{slot}", ids, SamplingParams(max_tokens=n, temperature=0, ignore_eos=True),
                            adapter_slot=slot)
    return [t for ev in [e async for e in engine.generate("tiny", req)] for t in ev.token_ids]


@pytest.mark.parametrize("kind", ["lora", "tfew"])
def test_adapter_generation_equals_peft(engine, tmp_path, kind):
    base = tiny_loaded("tiny", seed=1).model
    reference = save_adapter(base, tmp_path / kind, kind, seed=3).eval()
    ids = engine.tokenizer("tiny").encode("hello there")
    slot = engine.add_adapter("tiny", f"cm_{kind}", tmp_path / kind)
    assert engine.adapter_slot(f"cm_{kind}") == slot
    got = asyncio.run(generate(engine, slot, ids, 8))
    assert got == greedy(reference, ids, 8)
    assert got != asyncio.run(generate(engine, None, ids, 8)), "the adapter changes the output"


def test_slots_are_evicted_and_removed(engine, tmp_path):
    base = tiny_loaded("tiny", seed=1).model
    save_adapter(base, tmp_path / "a", "lora", seed=4)
    slots = [engine.add_adapter("tiny", f"k{i}", tmp_path / "a") for i in range(MAX_MERGED_ADAPTERS + 1)]
    assert engine.adapter_slot("k0") is None and engine.stats()["adapters"] == MAX_MERGED_ADAPTERS
    with pytest.raises(NotFound):
        asyncio.run(generate(engine, slots[0], [1, 2], 2))
    engine.remove_adapter(slots[-1])
    assert engine.adapter_slot(f"k{MAX_MERGED_ADAPTERS}") is None
