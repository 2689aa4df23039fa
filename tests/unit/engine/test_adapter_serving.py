"""Many adapters on one shared base: each row of a mixed batch equals PEFT's output for its adapter alone."""

import asyncio
import copy
import threading

import pytest
import torch

from atelier.catalog import BUILTIN, Catalog, ModelSource, ModelSpec
from atelier.engine.adapters import AdapterBank, AdapterLinear, read_peft_adapter
from atelier.engine.client import LocalEngine
from atelier.engine.loading import tiny_loaded
from atelier.engine.types import GenerationRequest, SamplingParams
from atelier.errors import InvalidInput, NotFound, Unavailable
from atelier.settings import Settings

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")

KINDS = {
    "lora-qv": lambda: _lora(r=4, alpha=8, targets=["q_proj", "v_proj"]),
    "lora-all": lambda: _lora(r=8, alpha=16, targets=["q_proj", "k_proj", "v_proj", "o_proj", "down_proj"]),
    "lora-rs": lambda: _lora(r=2, alpha=4, targets=["o_proj", "up_proj"], rslora=True),
    "ia3": lambda: _ia3(targets=["k_proj", "v_proj", "down_proj"], ff=["down_proj"]),
    "ia3-out": lambda: _ia3(targets=["q_proj", "gate_proj"], ff=[]),
}


def _lora(r, alpha, targets, rslora=False):
    from peft import LoraConfig

    return LoraConfig(r=r, lora_alpha=alpha, target_modules=targets, init_lora_weights=False, use_rslora=rslora)


def _ia3(targets, ff):
    from peft import IA3Config

    return IA3Config(target_modules=targets, feedforward_modules=ff)


def save_adapter(base, path, kind: str, seed: int):
    """A PEFT adapter with non-trivial weights (LoRA B and IA3 vectors away from their identity init)."""
    from peft import get_peft_model

    torch.manual_seed(seed)
    model = get_peft_model(copy.deepcopy(base), KINDS[kind]())
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ia3_" in name:
                p.uniform_(0.5, 1.5)
    model.save_pretrained(str(path))
    return model.eval()


@pytest.fixture
def engine(tmp_path):
    spec = ModelSpec(name="tiny", kind="chat", source=ModelSource(path="/nonexistent"), context_length=128,
                     max_output_tokens=32)
    eng = LocalEngine(Catalog(list(BUILTIN) + [spec]), Settings(data_dir=tmp_path, cache_dir=tmp_path / "c", threads=1),
                      preloaded={"tiny": tiny_loaded("tiny", seed=1)})
    yield eng
    eng.close()


def test_one_mixed_forward_pass_equals_peft_for_each_adapter_alone(tmp_path):
    base = tiny_loaded("tiny", seed=1).model.eval()
    served = copy.deepcopy(base)
    weights_before = {k: v.clone() for k, v in served.state_dict().items()}
    bank = AdapterBank(served)
    references = {}
    for i, kind in enumerate(KINDS, start=1):
        references[i] = save_adapter(base, tmp_path / kind, kind, seed=10 + i)
        bank.install(i, read_peft_adapter(tmp_path / kind, bank.linears))
    rows = [0, 1, 2, 3, 4, 5, 3, 1, 0]  # base, every adapter, some twice, in one batch
    torch.manual_seed(0)
    ids = torch.randint(0, 256, (len(rows), 7))
    with torch.no_grad():
        bank.set_rows(rows)
        mixed = served(input_ids=ids).logits  # (N, T, V): one forward pass
        for n, index in enumerate(rows):
            model = base if index == 0 else references[index]
            alone = model(input_ids=ids[n : n + 1]).logits[0]
            torch.testing.assert_close(mixed[n], alone, rtol=1e-4, atol=5e-5)  # fp32, batched vs alone
        bank.set_rows([2] * 3)  # one adapter for the whole batch: the no-gather path
        torch.testing.assert_close(served(input_ids=ids[:3]).logits, references[2](input_ids=ids[:3]).logits,
                                   rtol=1e-5, atol=1e-5)
        bank.set_rows([0, 0])
        torch.testing.assert_close(served(input_ids=ids[:2]).logits, base(input_ids=ids[:2]).logits)
    shared = {k.replace(".base.", "."): v for k, v in served.state_dict().items()}
    assert all(torch.equal(shared[k], v) for k, v in weights_before.items()), "the base weights never change"
    assert sum(isinstance(m, AdapterLinear) for m in served.modules()) == 2 * 7  # every targeted layer wrapped once


def test_cleared_slot_is_the_base_again(tmp_path):
    base = tiny_loaded("tiny", seed=1).model.eval()
    served = copy.deepcopy(base)
    bank = AdapterBank(served)
    save_adapter(base, tmp_path / "a", "lora-all", seed=1)
    bank.install(1, read_peft_adapter(tmp_path / "a", bank.linears))
    bank.clear(1)
    ids = torch.randint(0, 256, (2, 5))
    with torch.no_grad():
        bank.set_rows([1, 0])
        bank.rows = torch.tensor([1, 0])  # force the gather path
        torch.testing.assert_close(served(input_ids=ids).logits, base(input_ids=ids).logits)


def test_adapters_that_do_not_fit_are_refused(tmp_path):
    base = tiny_loaded("tiny", seed=1).model
    save_adapter(base, tmp_path / "a", "lora-qv", seed=1)
    other = tiny_loaded("tiny", seed=1).model
    other.model.layers[0].self_attn.q_proj = torch.nn.Linear(64, 48, bias=False)
    with pytest.raises(InvalidInput, match="q_proj"):
        read_peft_adapter(tmp_path / "a", AdapterBank(other).linears)
    with pytest.raises(InvalidInput, match="not a PEFT adapter"):
        read_peft_adapter(tmp_path / "missing", AdapterBank(base).linears)


def greedy(model, ids: list[int], n: int) -> list[int]:
    """Plain greedy decoding with full recomputation: the reference."""
    out = list(ids)
    with torch.no_grad():
        for _ in range(n):
            logits = model(input_ids=torch.tensor([out])).logits  # (1, T, V)
            out.append(int(logits[0, -1].argmax()))
    return out[len(ids):]


async def generate(engine, slot, ids, n, rid=None):
    req = GenerationRequest(rid or f"r{slot}", ids, SamplingParams(max_tokens=n, temperature=0, ignore_eos=True),
                            adapter_slot=slot)
    return [t for ev in [e async for e in engine.generate("tiny", req)] for t in ev.token_ids]


def test_concurrent_requests_of_different_adapters_get_their_own_outputs(engine, tmp_path):
    base = tiny_loaded("tiny", seed=1).model.eval()
    kinds = ["lora-qv", "ia3", "lora-all", "ia3-out"]
    refs = [save_adapter(base, tmp_path / k, k, seed=20 + i) for i, k in enumerate(kinds)]
    slots = [engine.add_adapter("tiny", f"cm_{k}", tmp_path / k) for k in kinds]
    assert engine.adapter_slot("cm_ia3") == slots[1]
    prompts = [engine.tokenizer("tiny").encode(t) for t in ("hello there", "a longer prompt here", "x")]

    async def all_at_once():
        jobs = [generate(engine, slot, p, 8, rid=f"{i}-{j}") for i, slot in enumerate([None] + slots)
                for j, p in enumerate(prompts)]
        return await asyncio.gather(*jobs)

    got = asyncio.run(all_at_once())
    expected = [greedy(model, p, 8) for model in [base] + refs for p in prompts]
    assert got == expected
    assert len({tuple(g) for g in got}) > len(prompts), "the adapters change the outputs"
    assert engine.health()["chat_models"]["tiny"]["steps"] < 8 * len(got) / 2, "rows shared forward passes"


def test_lru_eviction_under_the_memory_budget_and_removal(tmp_path):
    spec = ModelSpec(name="tiny", kind="chat", source=ModelSource(path="/nonexistent"), context_length=128)
    base = tiny_loaded("tiny", seed=1).model
    save_adapter(base, tmp_path / "a", "lora-qv", seed=4)
    one = read_peft_adapter(tmp_path / "a", AdapterBank(copy.deepcopy(base)).linears).nbytes
    settings = Settings(data_dir=tmp_path, cache_dir=tmp_path / "c", threads=1, adapter_memory_mb=2.5 * one / 2**20)
    eng = LocalEngine(Catalog(list(BUILTIN) + [spec]), settings, preloaded={"tiny": tiny_loaded("tiny", seed=1)})
    try:
        s0 = eng.add_adapter("tiny", "k0", tmp_path / "a")
        s1 = eng.add_adapter("tiny", "k1", tmp_path / "a")
        assert eng.adapter_slot("k0") == s0  # k0 used: k1 is now the least recently used
        s2 = eng.add_adapter("tiny", "k2", tmp_path / "a")
        assert eng.adapter_slot("k1") is None and eng.adapter_stats()["loaded"] == 2
        with pytest.raises(NotFound):
            asyncio.run(generate(eng, s1, [1, 2], 2))
        s3 = eng.add_adapter("tiny", "k1", tmp_path / "a")  # loaded again: a new slot, never the old one
        assert s3 not in (s0, s1, s2) and eng.adapter_slot("k0") is None
        assert asyncio.run(generate(eng, s3, [1, 2], 3)) == asyncio.run(generate(eng, s2, [1, 2], 3))
        eng.remove_adapter(s2)
        assert eng.adapter_slot("k2") is None and eng.adapter_stats()["loaded"] == 1
    finally:
        eng.close()


def test_adapters_in_use_are_not_evicted(tmp_path):
    spec = ModelSpec(name="tiny", kind="chat", source=ModelSource(path="/nonexistent"), context_length=128)
    base = tiny_loaded("tiny", seed=1).model
    save_adapter(base, tmp_path / "a", "lora-qv", seed=4)
    one = read_peft_adapter(tmp_path / "a", AdapterBank(copy.deepcopy(base)).linears).nbytes
    settings = Settings(data_dir=tmp_path, cache_dir=tmp_path / "c", threads=1, adapter_memory_mb=1.5 * one / 2**20)
    eng = LocalEngine(Catalog(list(BUILTIN) + [spec]), settings, preloaded={"tiny": tiny_loaded("tiny", seed=1)})
    try:
        slot = eng.add_adapter("tiny", "busy", tmp_path / "a")

        async def hold_and_load():
            stream = eng.generate("tiny", GenerationRequest(
                "long", [1, 2], SamplingParams(max_tokens=100, temperature=0, ignore_eos=True), adapter_slot=slot))
            await stream.__anext__()  # running: pinned
            with pytest.raises(Unavailable, match="budget"):
                await asyncio.to_thread(eng.add_adapter, "tiny", "other", tmp_path / "a")
            rest = [e async for e in stream]
            assert rest[-1].finish_reason == "length"

        asyncio.run(hold_and_load())
        eng.add_adapter("tiny", "other", tmp_path / "a")  # idle now: evicted to make room
        assert eng.adapter_slot("busy") is None
    finally:
        eng.close()


def test_loading_an_adapter_does_not_pause_other_traffic(engine, tmp_path):
    base = tiny_loaded("tiny", seed=1).model
    save_adapter(base, tmp_path / "a", "lora-all", seed=5)
    loaded = threading.Event()

    async def run():
        stream = engine.generate("tiny", GenerationRequest(
            "bg", [1, 2, 3], SamplingParams(max_tokens=60, temperature=0, ignore_eos=True)))
        first = await stream.__anext__()
        steps_before = engine.health()["chat_models"]["tiny"]["steps"]
        slot = await asyncio.to_thread(engine.add_adapter, "tiny", "new", tmp_path / "a")
        loaded.set()
        rest = [e async for e in stream]
        return first, rest, slot, steps_before

    first, rest, slot, steps_before = asyncio.run(run())
    assert rest[-1].finish_reason == "length" and len(rest) + 1 == 60  # the base request ran to its end
    assert loaded.is_set() and engine.adapter_slot("new") == slot


def test_removing_an_adapter_ends_its_requests(engine, tmp_path):
    base = tiny_loaded("tiny", seed=1).model
    save_adapter(base, tmp_path / "a", "ia3", seed=6)
    slot = engine.add_adapter("tiny", "gone", tmp_path / "a")

    async def run():
        stream = engine.generate("tiny", GenerationRequest(
            "x", [1, 2], SamplingParams(max_tokens=100, temperature=0, ignore_eos=True), adapter_slot=slot))
        await stream.__anext__()
        await asyncio.to_thread(engine.remove_adapter, slot)
        with pytest.raises(Unavailable, match="removed"):
            async for _ in stream:
                pass

    asyncio.run(run())
    assert engine.adapter_stats() == {"loaded": 0, "bytes": 0, "stacked_bytes": engine.adapter_stats()["stacked_bytes"]}
