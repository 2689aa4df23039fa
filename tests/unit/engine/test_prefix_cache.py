"""Automatic prefix caching: the cache's bookkeeping, and hits that equal cold runs token for token.

Token-for-token equality at temperature 0 holds here because the tiny random model's top
two logits are far apart next to the ~1e-6 by which a prefix computed in another batch
shape differs (the batched-vs-alone tests of the scheduler rely on the same margin).
"""

from __future__ import annotations

import torch

from atelier.engine.loading import tiny_loaded
from atelier.engine.prefix_cache import BLOCK, PrefixCache
from atelier.engine.scheduler import Scheduler
from atelier.engine.types import GenerationRequest, SamplingParams
from tests.unit.engine.conftest import Collector
from tests.unit.engine.test_scheduler import run

LM = tiny_loaded(seed=1)


def kv_of(ids, layers=2):
    """Fake per-layer KV whose values name their token (so a lookup's answer can be checked)."""
    def make(n):
        t = torch.tensor(ids[:n], dtype=torch.float32)  # (n,)
        return [(t.repeat(2, 1).unsqueeze(-1), -t.repeat(2, 1).unsqueeze(-1)) for _ in range(layers)]  # (H, n, 1)
    return make


def test_the_longest_cached_prefix_is_found_in_whole_blocks_and_leaves_a_token_to_compute():
    cache = PrefixCache(10**6)
    a = list(range(3 * BLOCK + 5))
    cache.store("t1", a, kv_of(a))
    assert len(cache) == 1 and cache.bytes > 0
    kv, n = cache.lookup("t1", a[: 2 * BLOCK + 3] + [999] * 40)
    assert n == 2 * BLOCK and kv[0][0][0, :n, 0].tolist() == a[:n]
    assert cache.lookup("t1", a[: 3 * BLOCK])[1] == 2 * BLOCK  # the last token is always computed
    assert cache.lookup("t1", a)[1] == 3 * BLOCK
    assert cache.lookup("t1", [7] + a) is None  # a prefix, not any substring
    assert cache.lookup("t1", a[: BLOCK - 1] + [999] * 40) is None
    assert (cache.hits, cache.misses) == (3, 2)


def test_scopes_never_share_entries():
    cache = PrefixCache(10**6)
    a = list(range(2 * BLOCK + 1))
    cache.store(("tenancy-1", 0, 0), a, kv_of(a))
    assert cache.lookup(("tenancy-2", 0, 0), a) is None
    assert cache.lookup(("tenancy-1", 1, 0), a) is None  # another adapter
    assert cache.lookup(("tenancy-1", 0, 1), a) is None  # the same slot after a re-install
    assert cache.lookup(("tenancy-1", 0, 0), a) is not None
    cache.drop(lambda scope: scope[1] == 0)
    assert len(cache) == 0 and cache.bytes == 0


def test_memory_is_bounded_least_recently_used_first():
    one = list(range(BLOCK + 1))
    size = sum(k.numel() * 4 + v.numel() * 4 for k, v in kv_of(one)(BLOCK))
    cache = PrefixCache(3 * size)
    prompts = [[p] * (BLOCK + 1) for p in range(4)]
    for p in prompts[:3]:
        cache.store("s", p, kv_of(p))
    assert cache.lookup("s", prompts[0]) is not None  # 0 is now the most recently used
    cache.store("s", prompts[3], kv_of(prompts[3]))
    assert cache.bytes <= 3 * size and len(cache) == 3
    assert cache.lookup("s", prompts[1]) is None  # the least recently used went
    assert all(cache.lookup("s", p) is not None for p in (prompts[0], prompts[2], prompts[3]))
    cache.store("s", prompts[0], kv_of(prompts[0]))  # cached already: nothing added
    assert len(cache) == 3
    calls = []
    PrefixCache(0).store("s", prompts[0], lambda n: calls.append(n))  # off: never even reads the KV
    assert not calls


def test_an_entry_evicted_with_shared_blocks_leaves_longer_ones_reachable():
    cache = PrefixCache(10**6)
    common = list(range(2 * BLOCK))
    long_one = common + [500 + i for i in range(BLOCK)] + [1]
    other = common + [900 + i for i in range(BLOCK)] + [1]
    cache.store("s", long_one, kv_of(long_one))
    cache.store("s", other, kv_of(other))  # newer: takes the shared blocks' keys
    cache.drop(lambda scope: False)
    cache._evict(max(cache._entries))  # evict the newer one
    assert cache.lookup("s", long_one)[1] == 3 * BLOCK


SYSTEM = "You are a careful assistant. Answer in one short sentence, and cite the manual. " * 2


def request(rid, text, scope="t1", max_tokens=10):
    return GenerationRequest(rid, LM.tokenizer.encode(text), SamplingParams(max_tokens=max_tokens, temperature=0.0,
                                                                             ignore_eos=True), cache_scope=scope)


def test_a_cache_hit_generates_what_a_cold_run_does():
    questions = ["How do I reset the pump?", "What does error E4 mean?", "Where is the filter?"]
    cold = Scheduler(LM, context_length=512)
    warm = Scheduler(LM, context_length=512, prefix_cache_bytes=64 * 2**20)
    try:
        expected = {q: run(cold, [request(q, SYSTEM + q)]).tokens(q) for q in questions}
        assert cold.prefix_cache.hits == 0 and len(cold.prefix_cache) == 0
        first = run(warm, [request("first", SYSTEM + questions[0])])
        assert first.tokens("first") == expected[questions[0]] and warm.prefix_cache.hits == 0
        for q in questions:  # one by one, then all at once: every later one starts from the cached system prompt
            assert run(warm, [request(q, SYSTEM + q)]).tokens(q) == expected[q]
        together = run(warm, [request(f"again-{q}", SYSTEM + q) for q in questions])
        for q in questions:
            assert together.tokens(f"again-{q}") == expected[q]
        assert warm.prefix_cache.hits >= 2 * len(questions)
        hits = warm.prefix_cache.hits
        other = run(warm, [request("other", SYSTEM + questions[1], scope="t2")])  # another tenancy: a cold run
        assert other.tokens("other") == expected[questions[1]] and warm.prefix_cache.hits == hits
    finally:
        cold.close()
        warm.close()


def test_a_conversation_reuses_its_earlier_turns():
    sched = Scheduler(LM, context_length=512, prefix_cache_bytes=64 * 2**20)
    try:
        turn = SYSTEM
        for i in range(3):
            turn += f" user: question number {i}? assistant:"
            col = run(sched, [request(f"t{i}", turn)])
            turn += LM.tokenizer.decode(col.tokens(f"t{i}"))
        assert sched.prefix_cache.hits == 2
    finally:
        sched.close()


def test_a_slot_given_another_adapter_never_reuses_the_old_adapters_prefixes(tmp_path):
    from atelier.engine.adapters import read_peft_adapter
    from tests.unit.engine.test_adapter_serving import save_adapter

    sched = Scheduler(LM, context_length=512, prefix_cache_bytes=64 * 2**20)
    try:
        for kind, seed in (("lora-all", 1), ("ia3", 2)):
            save_adapter(LM.model, tmp_path / kind, kind, seed=seed)
        bank = sched.adapters

        def serve(kind):
            sched.call(lambda: bank.install(1, read_peft_adapter(tmp_path / kind, bank.linears))).result()
            col = Collector()
            for rid in (f"{kind}-1", f"{kind}-2"):  # the second one hits the first one's prefix
                sched.submit(request(rid, SYSTEM + "Why?"), col.sink(rid), adapter=1)
                col.wait(1)
            return col.tokens(f"{kind}-1"), col.tokens(f"{kind}-2")

        lora_cold, lora_warm = serve("lora-all")
        assert lora_warm == lora_cold and sched.prefix_cache.hits == 1
        sched.call(lambda: bank.clear(1)).result()
        ia3_cold, ia3_warm = serve("ia3")  # same slot, same prompt: the LoRA's prefix must not be used
        assert sched.prefix_cache.hits == 2 and ia3_warm == ia3_cold and ia3_cold != lora_cold
    finally:
        sched.close()
