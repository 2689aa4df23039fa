"""Sampling math against hand-computed tables, properties and a plain per-row reference."""

from __future__ import annotations

from unittest import mock

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from atelier.engine import sampling
from atelier.engine.sampling import (
    SamplingTensors,
    apply_allowed,
    apply_logit_bias,
    apply_penalties,
    apply_repetition_penalty,
    apply_temperature,
    greedy,
    logprobs,
    process_logits,
    sample,
    top_k_mask,
    top_p_mask,
)
from atelier.engine.types import SamplingParams


def tensors(b: int, **fields) -> SamplingTensors:
    """Per-row tensors for ``b`` rows; each field is a scalar (broadcast) or a list of length b."""
    p = [{} for _ in range(b)]
    for name, value in fields.items():
        values = value if isinstance(value, list) else [value] * b
        for row, v in zip(p, values, strict=True):
            row[name] = v
    return SamplingTensors.from_params([SamplingParams(**row) for row in p])


def gens(*seeds: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


def close(actual: torch.Tensor, expected: torch.Tensor, atol: float = 1e-6) -> None:
    """``torch.allclose`` with a message (``torch.testing.assert_close``'s first call costs ~1 s)."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert torch.allclose(actual.to(expected.dtype), expected, rtol=0, atol=atol), (actual, expected)


@st.composite
def logit_rows(draw, max_b: int = 4, max_v: int = 12, ties: bool = False):
    """(B, V) float32 logits from a drawn seed; with ``ties`` they are small integers, so many are equal."""
    b = draw(st.integers(1, max_b))
    v = draw(st.integers(1, max_v))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**32 - 1)))
    if ties:
        return torch.randint(-3, 4, (b, v), generator=g).float()  # (B, V)
    return torch.randn(b, v, generator=g) * draw(st.sampled_from([0.1, 1.0, 5.0, 20.0]))  # (B, V)


# --- SamplingTensors ---------------------------------------------------------------------


def test_from_params_stacks_rows_with_dtypes():
    s = SamplingTensors.from_params(
        [
            SamplingParams(temperature=0.0, top_k=5),
            SamplingParams(top_p=0.5, frequency_penalty=1.5, presence_penalty=-0.5),
        ]
    )
    for name in ("temperature", "top_p", "frequency_penalty", "presence_penalty"):
        assert getattr(s, name).dtype == torch.float32
    assert s.top_k.dtype == torch.int64
    assert s.temperature.tolist() == [0.0, 1.0]
    assert s.top_k.tolist() == [5, 0]
    assert s.top_p.tolist() == [1.0, 0.5]
    assert s.frequency_penalty.tolist() == [0.0, 1.5]
    assert s.presence_penalty.tolist() == [0.0, -0.5]


# --- penalties ---------------------------------------------------------------------------

PENALTY_TABLE = [
    # logits, counts, frequency, presence, expected
    ([1.0, 2.0, 3.0], [0, 0, 0], 0.5, 0.7, [1.0, 2.0, 3.0]),
    ([1.0, 2.0, 3.0], [0, 1, 3], 0.5, 0.0, [1.0, 1.5, 1.5]),
    ([1.0, 2.0, 3.0], [0, 1, 3], 0.0, 0.7, [1.0, 1.3, 2.3]),
    ([1.0, 2.0, 3.0], [2, 0, 1], 0.5, 1.0, [-1.0, 2.0, 1.5]),
    ([0.0, 0.0], [4, 1], -0.25, -1.0, [2.0, 1.25]),  # negative penalties encourage repeats
]


@pytest.mark.parametrize(("logits", "counts", "fp", "pp", "expected"), PENALTY_TABLE)
def test_penalties_match_hand_computed(logits, counts, fp, pp, expected):
    out = apply_penalties(
        torch.tensor([logits]), torch.tensor([counts]), torch.tensor([fp]), torch.tensor([pp])
    )
    close(out, torch.tensor([expected]))


def test_penalties_are_per_row():
    logits = torch.zeros(2, 3)
    counts = torch.tensor([[1, 0, 2], [1, 0, 2]])
    out = apply_penalties(logits, counts, torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]))
    close(out, torch.tensor([[-1.0, 0.0, -2.0], [-1.0, 0.0, -1.0]]))


# --- temperature -------------------------------------------------------------------------


@pytest.mark.parametrize("t", [0.1, 0.5, 1.0, 2.0, 7.5])
def test_temperature_divides_logits(t):
    logits = torch.randn(3, 11, generator=torch.Generator().manual_seed(0))
    close(apply_temperature(logits, torch.full((3,), t)), logits / t)


def test_temperature_zero_rows_unchanged():
    logits = torch.randn(2, 5, generator=torch.Generator().manual_seed(1))
    out = apply_temperature(logits, torch.tensor([0.0, 2.0]))
    close(out[0], logits[0])
    close(out[1], logits[1] / 2)


@settings(max_examples=50, deadline=None)
@given(logit_rows(ties=True))
def test_temperature_zero_is_argmax(logits):
    b = logits.shape[0]
    out = sample(logits, tensors(b, temperature=0.0, top_k=2, top_p=0.3), None, [None] * b)
    assert out.tolist() == logits.argmax(dim=-1).tolist() == greedy(logits).tolist()


def test_greedy_uses_penalised_logits():
    logits = torch.tensor([[3.0, 2.5, 0.0]])
    counts = torch.tensor([[1, 0, 0]])
    out = sample(logits, tensors(1, temperature=0.0, presence_penalty=1.0), counts, [None])
    assert out.tolist() == [1]


# --- top-k -------------------------------------------------------------------------------

TOP_K_TABLE = [
    # logits, k, kept indices
    ([1.0, 5.0, 3.0, 4.0], 2, {1, 3}),
    ([1.0, 5.0, 3.0, 4.0], 1, {1}),
    ([1.0, 5.0, 3.0, 4.0], 0, {0, 1, 2, 3}),
    ([1.0, 5.0, 3.0, 4.0], 4, {0, 1, 2, 3}),
    ([1.0, 5.0, 3.0, 4.0], 9, {0, 1, 2, 3}),
    ([2.0, 2.0, 2.0, 1.0], 2, {0, 1}),  # ties: lower index first
    ([1.0, 3.0, 3.0, 3.0], 2, {1, 2}),
]


@pytest.mark.parametrize(("logits", "k", "kept"), TOP_K_TABLE)
def test_top_k_table(logits, k, kept):
    out = top_k_mask(torch.tensor([logits]), torch.tensor([k]))
    assert set(torch.isfinite(out[0]).nonzero().flatten().tolist()) == kept
    assert torch.equal(out[0][list(kept)], torch.tensor(logits)[list(kept)])


@settings(max_examples=60, deadline=None)
@given(logit_rows(ties=True), st.data())
def test_top_k_keeps_exactly_k_largest(logits, data):
    b, v = logits.shape
    k = torch.tensor(data.draw(st.lists(st.integers(0, v + 2), min_size=b, max_size=b)))
    out = top_k_mask(logits, k)
    for row in range(b):
        n = v if k[row] == 0 else min(int(k[row]), v)
        kept = torch.isfinite(out[row])
        assert int(kept.sum()) == n
        assert torch.equal(out[row][kept], logits[row][kept])
        if n < v:
            assert logits[row][kept].min() >= logits[row][~kept].max()
            # among logits equal to the threshold, the lowest indices are the ones kept
            at_edge = (logits[row] == logits[row][kept].min()).nonzero().flatten()
            kept_edge = kept[at_edge]
            assert kept_edge.tolist() == sorted(kept_edge.tolist(), reverse=True)


# --- top-p -------------------------------------------------------------------------------

TOP_P_TABLE = [
    # probabilities, p, kept indices
    ([0.1, 0.6, 0.3], 0.5, {1}),
    ([0.1, 0.6, 0.3], 0.6, {1}),
    ([0.1, 0.6, 0.3], 0.61, {1, 2}),
    ([0.1, 0.6, 0.3], 0.9, {1, 2}),
    ([0.1, 0.6, 0.3], 0.95, {0, 1, 2}),
    ([0.1, 0.6, 0.3], 1.0, {0, 1, 2}),
    ([0.1, 0.6, 0.3], 0.0, {1}),  # always at least the top token
    ([0.25, 0.25, 0.25, 0.25], 0.5, {0, 1}),  # ties: lower index first
]


@pytest.mark.parametrize(("probs", "p", "kept"), TOP_P_TABLE)
def test_top_p_table(probs, p, kept):
    logits = torch.tensor([probs]).log()
    out = top_p_mask(logits, torch.tensor([p]))
    assert set(torch.isfinite(out[0]).nonzero().flatten().tolist()) == kept


@settings(max_examples=60, deadline=None)
@given(logit_rows(), st.data())
def test_top_p_keeps_smallest_prefix_reaching_p(logits, data):
    b, v = logits.shape
    p = torch.tensor(data.draw(st.lists(st.floats(0.0, 1.0), min_size=b, max_size=b)), dtype=torch.float32)
    out = top_p_mask(logits, p)
    probs = logits.double().softmax(dim=-1)  # (B, V)
    tol = 1e-5
    for row in range(b):
        kept = torch.isfinite(out[row])
        assert torch.equal(out[row][kept], logits[row][kept])
        assert kept[logits[row].argmax()]
        if p[row] >= 1:
            assert bool(kept.all())
            continue
        # the kept set is a most-likely prefix ...
        if not bool(kept.all()):
            assert logits[row][kept].min() >= logits[row][~kept].max()
        # ... whose mass reaches p, and which would fall below p without its least likely token
        mass = float(probs[row][kept].sum())
        assert mass >= p[row] - tol
        if int(kept.sum()) > 1:
            assert mass - float(probs[row][kept].min()) < p[row] + tol


@settings(max_examples=50, deadline=None)
@given(logit_rows(ties=True), st.data())
def test_sample_filters_k_then_p(logits, data):
    """Every token drawn with top-k and top-p survives ``top_p_mask(top_k_mask(logits))``."""
    b, v = logits.shape
    k = data.draw(st.integers(1, v))
    p = data.draw(st.floats(0.0, 1.0))
    ref = top_p_mask(top_k_mask(logits, torch.full((b,), k)), torch.full((b,), p))
    out = sample(logits, tensors(b, top_k=k, top_p=p), None, gens(*range(b)))
    assert bool(torch.isfinite(ref.gather(1, out.unsqueeze(1))).all())


# --- the draw ----------------------------------------------------------------------------


def test_same_seed_same_draw():
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(2))
    s = tensors(3, temperature=1.0)
    first = sample(logits, s, None, gens(7, 8, 9))
    again = sample(logits, s, None, gens(7, 8, 9))
    assert first.tolist() == again.tolist()
    different = [sample(logits, s, None, gens(7, 8, seed))[2].item() for seed in range(10, 30)]
    assert len(set(different)) > 1


def test_row_draw_independent_of_batch_neighbours():
    torch.manual_seed(3)
    row = torch.randn(1, 64)
    alone = sample(row, tensors(1, temperature=0.8, top_k=20, top_p=0.9), None, gens(42))
    for others in [1, 3, 7]:
        batch = torch.cat([torch.randn(others, 64), row])  # the row moves to the end
        s = tensors(
            others + 1,
            temperature=[0.0, 1.5, 0.3, 2.0, 0.0, 1.0, 0.7][:others] + [0.8],
            top_k=[0, 5, 0, 1, 3, 0, 64][:others] + [20],
            top_p=[1.0, 0.5, 0.2, 1.0, 1.0, 0.9, 0.99][:others] + [0.9],
        )
        out = sample(batch, s, None, gens(*range(100, 100 + others), 42))
        assert out[-1].item() == alone.item()


def test_greedy_rows_consume_no_randomness():
    logits = torch.randn(2, 30, generator=torch.Generator().manual_seed(4))
    g = torch.Generator().manual_seed(5)
    before = g.get_state()
    sample(logits, tensors(2, temperature=[0.0, 1.0]), None, [g, torch.Generator().manual_seed(6)])
    assert torch.equal(g.get_state(), before)


def frequencies(logits_row: torch.Tensor, n: int, seed: int, **params) -> torch.Tensor:
    """Draw n tokens from one row, as a batch of n copies sharing one generator."""
    g = torch.Generator().manual_seed(seed)
    out = sample(logits_row.expand(n, -1), tensors(n, **params), None, [g] * n)
    return torch.bincount(out, minlength=logits_row.shape[-1]).double() / n


STAT_TABLE = [
    # params, temperature of the reference softmax, how many most-likely tokens it keeps
    ({"temperature": 1.0}, 1.0, 5),
    ({"temperature": 0.5}, 0.5, 5),
    ({"temperature": 2.0, "top_k": 3}, 2.0, 3),
    ({"temperature": 1.0, "top_p": 0.6}, 1.0, 2),  # masses 0.56, 0.21, ...: two reach 0.6
    ({"temperature": 1.0, "top_k": 3, "top_p": 0.99}, 1.0, 3),
]


@pytest.mark.parametrize(("params", "t", "n_kept"), STAT_TABLE)
def test_sampling_frequency_matches_softmax(params, t, n_kept):
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0])  # already sorted, so the kept set is a prefix
    want = torch.zeros(5, dtype=torch.float64)
    want[:n_kept] = (logits[:n_kept].double() / t).softmax(-1)
    got = frequencies(logits, 5_000, seed=11, **params)
    close(got, want, atol=0.025)  # ~3.5 standard errors at n=5000


# --- mixed batch -------------------------------------------------------------------------


def test_mixed_batch_behaves_per_row():
    torch.manual_seed(6)
    v = 40
    logits = torch.randn(5, v)
    counts = torch.randint(0, 3, (5, v))
    params = [
        SamplingParams(temperature=0.0, frequency_penalty=2.0),
        SamplingParams(temperature=1.0, top_k=1),
        SamplingParams(temperature=0.7, top_p=0.5, presence_penalty=1.0),
        SamplingParams(temperature=1.3, top_k=8, top_p=0.9),
        SamplingParams(temperature=1.0),
    ]
    s = SamplingTensors.from_params(params)
    batched = sample(logits, s, counts, gens(0, 1, 2, 3, 4))
    for row, p in enumerate(params):
        one = slice(row, row + 1)
        alone = sample(logits[one], SamplingTensors.from_params([p]), counts[one], gens(row))
        assert batched[row].item() == alone.item()
    penalised = apply_penalties(logits, counts, s.frequency_penalty, s.presence_penalty)
    assert batched[0].item() == penalised[0].argmax().item()
    assert batched[1].item() == penalised[1].argmax().item()  # top-k=1 is greedy
    kept_3 = top_p_mask(top_k_mask(apply_temperature(penalised, s.temperature), s.top_k), s.top_p)[3]
    assert torch.isfinite(kept_3[batched[3]])


# --- the fast filter used by sample ------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(st.booleans(), st.data())
def test_fast_filter_equals_reference(ties, data):
    logits = data.draw(logit_rows(max_v=16, ties=ties))
    b, v = logits.shape
    k = torch.tensor(data.draw(st.lists(st.integers(0, v + 1), min_size=b, max_size=b)))
    p_values = st.sampled_from([0.0, 0.3, 0.5, 0.8, 0.95, 1.0])
    p = torch.tensor(data.draw(st.lists(p_values, min_size=b, max_size=b)))
    candidates = data.draw(st.integers(1, 8))
    with mock.patch.object(sampling, "_CANDIDATES", candidates):
        fast = sampling._filter(logits, k, p)
    assert torch.equal(fast, top_p_mask(top_k_mask(logits, k), p))


FALLBACK_TABLE = [
    # a group of equal logits straddles the last candidate: the lowest indices still win
    ([5.0] + [1.0] * 299, 2, 1.0, {0, 1}),
    ([1.0] * 150 + [5.0] + [1.0] * 149, 3, 1.0, {0, 1, 150}),
    # a flat row whose nucleus is wider than the candidates
    ([0.0] * 400, 0, 0.8012, set(range(321))),  # mass before rank r is r/400
]


@pytest.mark.parametrize(("logits", "k", "p", "kept"), FALLBACK_TABLE)
def test_fast_filter_falls_back_exactly(logits, k, p, kept):
    out = sampling._filter(torch.tensor([logits]), torch.tensor([k]), torch.tensor([p]))
    assert set(torch.isfinite(out[0]).nonzero().flatten().tolist()) == kept


def forbid(monkeypatch, *names: str) -> None:
    def boom(*args, **kwargs):
        raise AssertionError("unexpected sort")

    for name in names:
        owner, attr = name.rsplit(".", 1)
        monkeypatch.setattr({"torch": torch, "torch.Tensor": torch.Tensor}[owner], attr, boom)


def test_no_vocabulary_sort_when_candidates_decide(monkeypatch):
    logits = torch.randn(4, 2000, generator=torch.Generator().manual_seed(8)) * 4  # (4, 2000)
    k, p = torch.tensor([50, 0, 5, 0]), torch.tensor([0.9, 0.9, 1.0, 0.5])
    with monkeypatch.context() as m:
        forbid(m, "torch.sort")
        fast = sampling._filter(logits, k, p)
    assert torch.equal(fast, top_p_mask(top_k_mask(logits, k), p))


def test_no_sort_without_top_k_or_top_p(monkeypatch):
    forbid(monkeypatch, "torch.sort", "torch.topk", "torch.Tensor.sort", "torch.Tensor.topk")
    logits = torch.randn(3, 100, generator=torch.Generator().manual_seed(7))
    # greedy rows with top-k/top-p set do not need the sort either
    s = tensors(3, temperature=[0.0, 1.0, 0.5], top_k=[5, 0, 100], top_p=[0.5, 1.0, 1.0])
    out = sample(logits, s, None, gens(1, 2, 3))
    assert out.shape == (3,) and out.dtype == torch.int64


# --- logit bias, repetition penalty, allowed tokens, log probabilities ----------------------


def test_from_params_logit_bias_and_repetition_penalty():
    plain = SamplingTensors.from_params([SamplingParams(), SamplingParams(temperature=0.0)])
    assert plain.repetition_penalty is None and plain.bias_rows is None  # nothing to pay for
    s = SamplingTensors.from_params(
        [SamplingParams(logit_bias=((3, 1.5), (7, -2.0))), SamplingParams(repetition_penalty=1.2),
         SamplingParams(logit_bias=((0, 100.0),))]
    )
    assert s.repetition_penalty.tolist() == pytest.approx([1.0, 1.2, 1.0])
    assert s.bias_rows.tolist() == [0, 0, 2] and s.bias_ids.tolist() == [3, 7, 0]
    assert s.bias_values.tolist() == [1.5, -2.0, 100.0] and s.bias_values.dtype == torch.float32


@given(logit_rows(), st.data())
@settings(max_examples=40, deadline=None)
def test_logit_bias_equals_a_loop_over_entries(logits, data):
    b, v = logits.shape
    n = data.draw(st.integers(0, 12))
    rows = torch.tensor(data.draw(st.lists(st.integers(0, b - 1), min_size=n, max_size=n)), dtype=torch.int64)
    ids = torch.tensor(data.draw(st.lists(st.integers(0, v - 1), min_size=n, max_size=n)), dtype=torch.int64)
    values = torch.tensor(data.draw(st.lists(st.floats(-100, 100, width=32), min_size=n, max_size=n)))
    expected = logits.clone()
    for r, i, x in zip(rows.tolist(), ids.tolist(), values.tolist()):
        expected[r, i] += x  # repeated entries add up
    close(apply_logit_bias(logits, rows, ids, values), expected, atol=1e-4)


REPETITION_TABLE = [
    # logits, seen, penalty, expected
    ([2.0, -1.0, 0.5, 3.0], [1, 1, 0, 0], 2.0, [1.0, -2.0, 0.5, 3.0]),
    ([2.0, -1.0, 0.0, 3.0], [1, 1, 1, 1], 0.5, [4.0, -0.5, 0.0, 6.0]),  # p < 1 encourages repeats
    ([2.0, -1.0, 0.5, 3.0], [1, 1, 1, 1], 1.0, [2.0, -1.0, 0.5, 3.0]),
]


@pytest.mark.parametrize(("logits", "seen", "p", "expected"), REPETITION_TABLE)
def test_repetition_penalty_matches_hand_computed(logits, seen, p, expected):
    out = apply_repetition_penalty(torch.tensor([logits]), torch.tensor([seen], dtype=torch.bool), torch.tensor([p]))
    close(out, torch.tensor([expected]))


@given(logit_rows(), st.data())
@settings(max_examples=40, deadline=None)
def test_repetition_penalty_equals_a_plain_loop(logits, data):
    b, v = logits.shape
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31)))
    seen = torch.rand(b, v, generator=g) < 0.5  # (B, V)
    penalty = torch.rand(b, generator=g) * 2 + 0.1  # (B,)
    expected = logits.clone()
    for r in range(b):
        for j in range(v):
            if seen[r, j]:
                x = float(logits[r, j])
                expected[r, j] = x / float(penalty[r]) if x > 0 else x * float(penalty[r])
    close(apply_repetition_penalty(logits, seen, penalty), expected, atol=1e-5)


def test_process_logits_order_bias_repetition_penalties_mask_temperature():
    logits = torch.tensor([[-1.0, 2.0, 0.5, 1.0]])
    st_ = SamplingTensors.from_params([SamplingParams(temperature=0.5, logit_bias=((0, 3.0),), repetition_penalty=2.0,
                                                      frequency_penalty=0.25)])
    seen = torch.tensor([[True, True, False, False]])
    counts = torch.tensor([[0.0, 2.0, 0.0, 0.0]])
    allowed = torch.tensor([[True, True, True, False]])
    out = process_logits(logits, st_, counts, seen, allowed)
    # 0: -1 + 3 = 2 (positive once biased) → /2 = 1 → /0.5 = 2;  1: 2 → /2 = 1 → -2·0.25 = 0.5 → /0.5 = 1
    # 2: unseen, 0.5 / 0.5 = 1;  3: not allowed
    close(out, torch.tensor([[2.0, 1.0, 1.0, float("-inf")]]))
    assert torch.equal(process_logits(logits, tensors(1), None, seen, None), logits)  # nothing asked: unchanged


@given(logit_rows(max_v=40), st.data())
@settings(max_examples=40, deadline=None)
def test_sampling_never_picks_a_disallowed_token(logits, data):
    b, v = logits.shape
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31)))
    allowed = torch.rand(b, v, generator=g) < 0.3  # (B, V)
    allowed[torch.arange(b), torch.randint(0, v, (b,), generator=g)] = True  # at least one per row
    allowed[0] = True  # a free row stays free
    s = tensors(b, temperature=data.draw(st.sampled_from([0.0, 0.7, 1.5])), top_k=data.draw(st.integers(0, 5)))
    out = sample(logits, s, None, gens(*range(b)), allowed=allowed)
    assert bool(allowed[torch.arange(b), out].all())
    assert torch.equal(apply_allowed(logits, allowed)[0], logits[0])
    assert int(out[0]) == int(sample(logits[:1], tensors(1, temperature=s.temperature[0].item(),
                                                         top_k=int(s.top_k[0])), None, gens(0))[0])


@given(logit_rows(max_v=30), st.integers(0, 40))
@settings(max_examples=40, deadline=None)
def test_logprobs_equal_log_softmax(logits, k):
    b, v = logits.shape
    tokens = torch.arange(b) % v  # (B,)
    chosen, top_values, top_ids = logprobs(logits, tokens, k)
    lp = torch.log_softmax(logits.double(), dim=-1)  # (B, V) reference in float64
    close(chosen, lp[torch.arange(b), tokens].float(), atol=1e-5)
    assert top_values.shape == top_ids.shape == (b, min(k, v))
    close(top_values, lp.gather(1, top_ids).float(), atol=1e-5)
    close(top_values, lp.topk(min(k, v), dim=-1).values.float(), atol=1e-5)
