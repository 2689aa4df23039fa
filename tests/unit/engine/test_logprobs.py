"""Log probabilities, logit bias and repetition penalty through the scheduler, against the model run directly."""

from __future__ import annotations

import pytest
import torch

from atelier.engine.loading import tiny_loaded
from atelier.engine.scheduler import Scheduler
from atelier.engine.types import Constraint, GenerationRequest, SamplingParams
from atelier.errors import InvalidInput

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

LM = tiny_loaded(seed=1)
TOK = LM.tokenizer
TOL = 2e-4  # batched KV-cached fp32 against a full recomputation


def req(rid, prompt, **params):
    params.setdefault("temperature", 0.0)
    params.setdefault("ignore_eos", True)
    params.setdefault("max_tokens", 10)
    constraint = params.pop("constraint", None)
    return GenerationRequest(rid, TOK.encode(prompt), SamplingParams(**params), constraint=constraint)


@pytest.fixture(scope="module")
def sched():
    s = Scheduler(LM, context_length=256, max_batch=8, max_waiting=16, prompt_logprobs_chunk=4)
    yield s
    s.close()


def raw_logits(ids: list[int]) -> torch.Tensor:
    """(T, V) logits of every position of ``ids``, one full forward pass."""
    with torch.no_grad():
        return LM.model(input_ids=torch.tensor([ids])).logits[0].float()


def assert_entry(entry, token: int, reference: torch.Tensor, k: int) -> None:
    """``entry`` is ``token``'s log probability and the k likeliest under ``reference`` (V,) log probabilities."""
    assert entry.token_id == token
    assert abs(entry.logprob - float(reference[token])) < TOL
    finite = reference[reference > float("-inf")]
    assert len(entry.top) == min(k, finite.numel())
    values = [v for _, v in entry.top]
    assert values == sorted(values, reverse=True)
    for token_id, value in entry.top:
        assert abs(value - float(reference[token_id])) < TOL
    expected = finite.topk(len(entry.top)).values  # the same values, whichever of near-equal tokens is listed
    assert torch.allclose(torch.tensor(values), expected, atol=TOL)


def test_raw_logprobs_equal_log_softmax_of_the_model_logits(sched, run_requests):
    prompt = "the quick brown fox"
    r = req("raw", prompt, temperature=0.8, seed=3, logprobs=5, max_tokens=8)
    col = run_requests(sched, [r, req("other", "noise", max_tokens=8)])
    tokens, entries = col.tokens("raw"), col.logprobs("raw")
    assert len(entries) == len(tokens) == 8
    ids = TOK.encode(prompt)
    for i, (token, entry) in enumerate(zip(tokens, entries)):
        reference = raw_logits(ids + tokens[:i])[-1].log_softmax(-1)  # (V,)
        assert_entry(entry, token, reference, 5)
    assert col.logprobs("other") == [] and col.events["other"][0].prompt_logprobs is None


def processed_reference(ids: list[int], out: list[int], p: SamplingParams) -> torch.Tensor:
    """(V,) log_softmax of the logits a row samples from, computed step by step as a plain loop."""
    logits = raw_logits(ids + out)[-1].clone()  # (V,)
    for token, bias in p.logit_bias:
        logits[token] += bias
    for token in set(ids + out):
        logits[token] = logits[token] / p.repetition_penalty if logits[token] > 0 else logits[token] * p.repetition_penalty
    for token in set(out):
        logits[token] -= out.count(token) * p.frequency_penalty + p.presence_penalty
    if p.temperature > 0:
        logits = logits / p.temperature
    return logits.log_softmax(-1)


@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_processed_logprobs_follow_bias_penalties_and_temperature(sched, run_requests, temperature):
    params = dict(temperature=temperature, seed=5, repetition_penalty=1.3, frequency_penalty=0.4, presence_penalty=0.2,
                  logit_bias=((66, 2.5), (101, -3.0), (66, 0.5)), logprobs=4, logprobs_mode="processed", max_tokens=9)
    r = req("proc", "repeat repeat repeat", **params)
    col = run_requests(sched, [r, req("plain", "x", temperature=1.0, seed=1)])
    tokens, entries = col.tokens("proc"), col.logprobs("proc")
    ids = TOK.encode("repeat repeat repeat")
    for i, (token, entry) in enumerate(zip(tokens, entries)):
        assert_entry(entry, token, processed_reference(ids, tokens[:i], r.params), 4)
        if temperature == 0:
            assert entry.top[0][0] == token or abs(entry.top[0][1] - entry.logprob) < TOL  # greedy: the argmax


def test_processed_logprobs_of_a_constrained_row_see_only_allowed_tokens(sched, run_requests):
    c = Constraint("regex", "[ab]{6}")
    col = run_requests(sched, [req("p", "x", constraint=c, logprobs=5, logprobs_mode="processed", temperature=1.0, seed=2),
                               req("r", "x", constraint=c, logprobs=5, temperature=1.0, seed=2)])
    assert col.tokens("p") == col.tokens("r")  # the mode changes what is reported, never what is sampled
    allowed = set(TOK.encode("ab"))
    for entry in col.logprobs("p"):
        assert {t for t, _ in entry.top} <= allowed and len(entry.top) == 2
        assert abs(sum(torch.tensor([v for _, v in entry.top]).exp().tolist()) - 1) < 1e-4
    for entry in col.logprobs("r"):
        assert len(entry.top) == 5  # raw: the model's own distribution


def test_prompt_logprobs_equal_a_full_forward_pass(sched, run_requests):
    prompt = "a prompt of several chunks"  # 26 byte tokens: 7 chunks of 4 positions
    ids = TOK.encode(prompt)
    asked = req("pl", prompt, prompt_logprobs=3, logprobs=2, max_tokens=6)
    others = [req("o1", "hello", max_tokens=6), req("o2", "日本語", temperature=0.9, seed=4, max_tokens=6)]
    solo = {r.request_id: run_requests(sched, [r]).tokens(r.request_id)
            for r in others + [req("pl", prompt, max_tokens=6)]}
    col = run_requests(sched, [others[0], asked, others[1]], hold=True)
    first = col.events["pl"][0]
    assert len(first.prompt_logprobs) == len(ids) and first.prompt_logprobs[0] is None
    reference = raw_logits(ids).log_softmax(-1)  # (T, V)
    for i in range(1, len(ids)):
        assert_entry(first.prompt_logprobs[i], ids[i], reference[i - 1], 3)
    assert all(ev.prompt_logprobs is None for ev in col.events["pl"][1:])
    for rid, tokens in solo.items():
        assert col.tokens(rid) == tokens, rid  # rows beside it, and its own output, are unchanged
    first_token = col.tokens("pl")[0]
    assert_entry(col.logprobs("pl")[0], first_token, reference[-1], 2)


def test_logit_bias_forces_and_forbids_tokens(sched, run_requests):
    plain = run_requests(sched, [req("plain", "hello", max_tokens=12)]).tokens("plain")
    favourite = max(set(plain), key=plain.count)
    target = TOK.convert_tokens_to_ids("Q")
    col = run_requests(sched, [req("force", "hello", max_tokens=12, logit_bias=((target, 100.0),)),
                               req("forbid", "hello", max_tokens=12, logit_bias=((favourite, -100.0),)),
                               req("sampled", "hello", max_tokens=12, temperature=1.0, seed=1,
                                   logit_bias=((favourite, -100.0), (target, -100.0)))])
    assert col.tokens("force") == [target] * 12
    assert favourite not in col.tokens("forbid") and col.tokens("forbid") != plain
    assert favourite not in col.tokens("sampled") and target not in col.tokens("sampled")


def test_repetition_penalty_matches_a_plain_greedy_loop(sched, run_requests):
    prompt = "repeat repeat"
    ids = TOK.encode(prompt)
    p = SamplingParams(max_tokens=15, temperature=0.0, ignore_eos=True, repetition_penalty=1.8)
    got = run_requests(sched, [GenerationRequest("rp", ids, p)]).tokens("rp")
    out: list[int] = []
    for _ in range(15):
        out.append(int(processed_reference(ids, out, p).argmax()))
    assert got == out
    assert got != run_requests(sched, [req("no-rp", prompt, max_tokens=15)]).tokens("no-rp")


@pytest.mark.parametrize(
    "params, param",
    [({"logit_bias": ((len(TOK), 1.0),)}, "logit_bias"), ({"logit_bias": ((-1, 1.0),)}, "logit_bias"),
     ({"repetition_penalty": 0.0}, "repetition_penalty"), ({"logprobs": -1}, "logprobs")],
)
def test_out_of_range_parameters_are_refused(sched, params, param):
    with pytest.raises(InvalidInput) as info:
        sched.submit(req("bad", "x", **params), lambda ev: None)
    assert info.value.param == param
