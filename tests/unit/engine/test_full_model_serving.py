"""Full fine-tunes in the in-process engine: a whole model in a slot of its own, beside adapters on the base."""

from __future__ import annotations

import asyncio
import copy

import pytest
import torch

from atelier.catalog import BUILTIN, Catalog, ModelSource, ModelSpec
from atelier.engine.client import LocalEngine
from atelier.engine.loading import tiny_loaded, tiny_model
from atelier.errors import InvalidInput, NotFound
from atelier.settings import Settings

from tests.unit.engine.test_adapter_serving import generate, greedy, save_adapter

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")

SPEC = ModelSpec(name="tiny", kind="chat", source=ModelSource(path="/nonexistent"), context_length=128,
                 max_output_tokens=32)


def save_full(base: torch.nn.Module, path, seed: int) -> torch.nn.Module:
    """A 'fine-tuned' copy of the base: every weight moved a little, saved as ``save_pretrained`` does."""
    model = copy.deepcopy(base)
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.save_pretrained(str(path))
    return model.eval()


@pytest.fixture
def engine(tmp_path):
    eng = LocalEngine(Catalog(list(BUILTIN) + [SPEC]), Settings(data_dir=tmp_path, cache_dir=tmp_path / "c", threads=1),
                      preloaded={"tiny": tiny_loaded("tiny", seed=1)})
    yield eng
    eng.close()


def test_a_full_fine_tune_is_served_beside_the_base_and_an_adapter(engine, tmp_path):
    base = tiny_loaded("tiny", seed=1).model.eval()
    full_ref = save_full(base, tmp_path / "full", seed=3)
    lora_ref = save_adapter(base, tmp_path / "lora", "lora-qv", seed=4)
    full = engine.add_adapter("tiny", "cm_full", tmp_path / "full")
    lora = engine.add_adapter("tiny", "cm_lora", tmp_path / "lora")
    assert engine.add_adapter("tiny", "cm_full", tmp_path / "full") == full  # loaded once
    assert engine.adapter_slot("cm_full") == full and engine.adapter_stats()["loaded"] == 2
    prompt = engine.tokenizer("tiny").encode("hello there")

    async def together():
        return await asyncio.gather(*(generate(engine, slot, prompt, 8, rid=f"r{i}")
                                      for i, slot in enumerate([None, full, lora])))

    got = asyncio.run(together())
    assert got == [greedy(m, prompt, 8) for m in (base, full_ref, lora_ref)]
    assert got[1] != got[0], "the fine-tuned weights change the output"
    engine.remove_adapter(full)
    assert engine.adapter_slot("cm_full") is None
    with pytest.raises(NotFound):
        asyncio.run(generate(engine, full, prompt, 2))
    assert asyncio.run(generate(engine, lora, prompt, 8)) == got[2]  # the others are untouched


def test_a_model_of_another_shape_is_refused(engine, tmp_path):
    other = tiny_model(vocab_size=len(tiny_loaded().tokenizer), hidden_size=32, seed=2)
    other.save_pretrained(str(tmp_path / "other"))
    with pytest.raises(InvalidInput, match="hidden_size"):
        engine.add_adapter("tiny", "cm_other", tmp_path / "other")
    assert engine.adapter_slot("cm_other") is None


def test_a_full_fine_tune_counts_against_the_adapter_budget(tmp_path):
    base = tiny_loaded("tiny", seed=1).model.eval()
    save_full(base, tmp_path / "full", seed=3)
    nbytes = sum(p.numel() * p.element_size() for p in base.parameters())
    settings = Settings(data_dir=tmp_path, cache_dir=tmp_path / "c", threads=1,
                        adapter_memory_mb=1.5 * nbytes / 2**20)
    eng = LocalEngine(Catalog(list(BUILTIN) + [SPEC]), settings, preloaded={"tiny": tiny_loaded("tiny", seed=1)})
    try:
        first = eng.add_adapter("tiny", "cm_a", tmp_path / "full")
        second = eng.add_adapter("tiny", "cm_b", tmp_path / "full")  # evicts the idle first one
        assert eng.adapter_slot("cm_a") is None and eng.adapter_slot("cm_b") == second != first
        prompt = [1, 2, 3]
        assert asyncio.run(generate(eng, second, prompt, 4)) != asyncio.run(generate(eng, None, prompt, 4))
    finally:
        eng.close()
