"""Structured outputs on tiny random models: compiling, masks, and constrained rows in the scheduler."""

from __future__ import annotations

import asyncio
import json
import random
import re

import jsonschema
import pytest
import torch

from atelier.catalog import BUILTIN, Catalog, ModelSource, ModelSpec
from atelier.engine import constraints
from atelier.engine.client import LocalEngine
from atelier.engine.constraints import COMPILED, TokenMasks, check_constraint, new_matcher
from atelier.engine.loading import LoadedModel, eos_ids, tiny_loaded, tiny_model
from atelier.engine.scheduler import Scheduler
from atelier.engine.types import Constraint, GenerationRequest, SamplingParams
from atelier.errors import InvalidInput
from atelier.settings import Settings

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

LM = tiny_loaded(seed=1)
TOK = LM.tokenizer
EOS = next(iter(LM.eos_token_ids))


def schema_of(**schema) -> Constraint:
    return Constraint("json_schema", json.dumps(schema))


def req(rid, prompt="json:", constraint=None, **params):
    params.setdefault("temperature", 0.0)
    params.setdefault("max_tokens", 64)
    return GenerationRequest(rid, TOK.encode(prompt), SamplingParams(**params), constraint=constraint)


@pytest.fixture
def sched():
    s = Scheduler(LM, context_length=2048, max_batch=32, max_waiting=128)
    yield s
    s.close()


# --- compiling -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "constraint, words",
    [
        (Constraint("json_schema", '{"type": "nonsense"}'), ["nonsense"]),
        (schema_of(type="array", uniqueItems=True), ["uniqueItems"]),
        (schema_of(type="object", properties={"a": {"type": "string", "format": "weird"}}), ["weird"]),
        (schema_of(type="integer", minimum=5, maximum=1), ["minimum", "maximum"]),
        (Constraint("json_schema", '{"type": '), ["not valid JSON"]),
        (Constraint("json_schema", "[1, 2]"), ["JSON object"]),
        (Constraint("regex", "a[b"), ["unclosed character class"]),
        (Constraint("choice", '"yes"'), ["list of strings"]),
        (Constraint("choice", "[]"), ["list of strings"]),
        (Constraint("choice", '["a", 1]'), ["list of strings"]),
        (Constraint("grammar", "start: missing_rule"), ["missing_rule"]),
        (Constraint("grammar", "  "), ["empty"]),
    ],
)
def test_invalid_constraints_name_the_problem(constraint, words):
    with pytest.raises(InvalidInput) as info:
        check_constraint(TOK, constraint)
    assert info.value.param == "response_format"
    for word in words:
        assert word in info.value.message, info.value.message
    with pytest.raises(InvalidInput) as info:
        check_constraint(TOK, constraint, param="tool_choice")
    assert info.value.param == "tool_choice"


def test_each_distinct_constraint_is_compiled_once(monkeypatch):
    calls = []
    real = constraints.grammar_of
    monkeypatch.setattr(constraints, "grammar_of", lambda c, p: calls.append(c) or real(c, p))
    c = schema_of(type="object", properties={"compiled_once": {"type": "boolean"}}, required=["compiled_once"])
    check_constraint(TOK, c)
    first = COMPILED.matcher(TOK, c, "response_format")
    check_constraint(tiny_loaded(seed=3).tokenizer, c)  # another tokenizer object with the same content
    assert calls == [c]
    one, two = new_matcher(TOK, c), new_matcher(TOK, c)
    assert one is not first and two is not one  # each row its own state
    assert one.consume_tokens(TOK.encode('{"compiled_once": true}')) and one.is_stopped()
    assert not two.is_stopped() and not first.is_stopped()


@pytest.mark.parametrize(
    "constraint, accepted, refused",
    [
        (Constraint("json_object"), ['{"a": [1, {"b": null}]}', "{}"], ["[1]", '{"a":1}', '{ "a": 1}']),
        (schema_of(type="object", properties={"n": {"type": "integer"}}, required=["n"]), ['{"n": -3}'], ['{"n": 1.5}']),
        (Constraint("regex", "[0-9]+(px|em)"), ["12px", "0em"], ["px", "12pt"]),
        (Constraint("choice", json.dumps(["yes", 'say "no"', "日本"])), ["yes", 'say "no"', "日本"], ["ye", "no", "yess"]),
        (Constraint("grammar", 'start: "(" NUM ("," NUM)* ")"\nNUM: /[0-9]+/'), ["(1)", "(1,22)"], ["()", "(1,)"]),
    ],
)
def test_each_kind_accepts_exactly_its_language(constraint, accepted, refused):
    """JSON in ``json.dumps``' default layout: ", " and ": ", no other whitespace."""
    for text in accepted:
        m = new_matcher(TOK, constraint)
        assert m.consume_tokens(TOK.encode(text)) and m.is_accepting(), text
    for text in refused:
        m = new_matcher(TOK, constraint)
        assert not (m.consume_tokens(TOK.encode(text)) and m.is_accepting()), text


# --- masks -----------------------------------------------------------------------------------


def test_masks_equal_the_matchers_answer_token_by_token_over_a_wider_model_vocabulary():
    """Plain reference: ``allowed[j] = matcher.validate_tokens([j]) == 1`` for every tokenizer id."""
    vocab = len(TOK) + 45  # the model's logits are wider than the tokenizer
    masks = TokenMasks(TOK, vocab, sorted(LM.eos_token_ids))
    c = Constraint("regex", "[a-c]{2}(x|yz)?")
    matchers = [new_matcher(TOK, c) for _ in range(3)]
    for m, text in zip(matchers, ["", "a", "ab"]):
        assert m.consume_tokens(TOK.encode(text)) if text else True
    allowed = masks.allowed(matchers)  # (3, V)
    assert allowed.shape == (3, vocab) and allowed.dtype == torch.bool
    for r, m in enumerate(matchers):
        expected = torch.tensor([m.validate_tokens([j]) == 1 for j in range(len(TOK))])
        assert torch.equal(allowed[r, : len(TOK)], expected)
        assert not allowed[r, len(TOK) :].any(), "ids past the tokenizer are never allowed"
        assert bool(allowed[r, EOS]) == m.is_accepting()
    assert [int(allowed[r].sum()) for r in range(3)] == [3, 3, 3]  # a-c; a-c; x, y, EOS


# --- constrained rows in the scheduler --------------------------------------------------------


def test_regex_and_choice_are_obeyed(sched, run_requests):
    regex = Constraint("regex", r"[0-9]{3}-[a-z]{2,4}")
    choices = ["yes", "no", "maybe so", "日本"]
    choice = Constraint("choice", json.dumps(choices))
    requests = [req(f"re{i}", constraint=regex, temperature=1.0, seed=i) for i in range(6)]
    requests += [req(f"ch{i}", constraint=choice, temperature=1.0, seed=i) for i in range(12)]
    col = run_requests(sched, requests)
    for i in range(6):
        assert re.fullmatch(r"[0-9]{3}-[a-z]{2,4}", col.text(f"re{i}")), col.text(f"re{i}")
        assert col.last(f"re{i}").finish_reason == "stop"
    picked = {col.text(f"ch{i}") for i in range(12)}
    assert picked <= set(choices) and len(picked) > 1
    assert all(col.last(f"ch{i}").finish_reason == "stop" for i in range(12))


def flattened(seed: int = 1) -> LoadedModel:
    """A tiny random model whose logits are scaled by 0.1: near-uniform sampling at temperature 1.

    A peaked random model can repeat one digit of a number's fraction, or one character of
    a string, for hundreds of tokens that only the length limit would end.
    """
    lm = tiny_loaded(seed=seed)
    with torch.no_grad():
        lm.model.model.norm.weight.mul_(0.1)
    return lm


def force(model, token: int) -> None:
    """Make ``token`` the argmax of every position (+1000 on its logit)."""

    def hook(module, args, output):
        output[..., token] += 1000.0
        return output

    model.lm_head.register_forward_hook(hook)


def test_lark_grammar_and_json_object(run_requests):
    s = Scheduler(flattened(), context_length=2048, max_batch=32)
    closing = tuple((TOK.convert_tokens_to_ids(t), 4.0) for t in ['"', "}", "]"])  # strings and objects end sooner
    lark = Constraint("grammar", 'start: "(" item ("," item)* ")"\nitem: /[a-z]{1,3}/')
    requests = [req(f"g{i}", constraint=lark, temperature=1.0, seed=i, max_tokens=400) for i in range(4)]
    requests += [req(f"o{i}", "{", constraint=Constraint("json_object"), temperature=1.0, seed=i, max_tokens=800,
                     logit_bias=closing) for i in range(8)]
    try:
        col = run_requests(s, requests)
    finally:
        s.close()
    for i in range(4):
        assert col.last(f"g{i}").finish_reason == "stop"
        assert re.fullmatch(r"\([a-z]{1,3}(,[a-z]{1,3})*\)", col.text(f"g{i}")), col.text(f"g{i}")
    for i in range(8):
        assert col.last(f"o{i}").finish_reason == "stop", col.text(f"o{i}")
        assert isinstance(json.loads(col.text(f"o{i}")), dict)
    assert len({col.text(f"o{i}") for i in range(8)}) > 2


def test_free_rows_of_a_mixed_batch_equal_their_solo_runs(sched, run_requests):
    free = [req("free-greedy", "hello", max_tokens=12), req("free-seeded", "hello", temperature=0.9, seed=4, max_tokens=12),
            req("free-long", "a longer prompt here", max_tokens=9)]
    constrained = [req("c-json", constraint=schema_of(type="object", properties={"a": {"type": "integer"}},
                                                       required=["a"], additionalProperties=False)),
                   req("c-regex", "x", constraint=Constraint("regex", "[ab]{5}"), temperature=1.0, seed=2),
                   req("c-choice", constraint=Constraint("choice", '["left", "right"]'))]
    solo = {r.request_id: run_requests(sched, [r]).tokens(r.request_id) for r in free + constrained}
    for hold in (True, False):  # one shared prefill, or rows joining the running batch
        mixed = run_requests(sched, [constrained[0], free[0], constrained[1], free[1], constrained[2], free[2]], hold=hold)
        for r in free + constrained:
            assert mixed.tokens(r.request_id) == solo[r.request_id], r.request_id
    assert re.fullmatch("[ab]{5}", mixed.text("c-regex"))
    assert mixed.text("c-choice") in ("left", "right")


def test_max_tokens_before_the_grammar_completes_is_length(sched, run_requests):
    col = run_requests(sched, [req("short", constraint=Constraint("regex", "a{50}"), max_tokens=5)])
    assert col.text("short") == "aaaaa" and col.last("short").finish_reason == "length"


def test_eos_is_allowed_only_once_the_grammar_accepts(run_requests):
    lm = tiny_loaded(seed=1)
    force(lm.model, EOS)
    s = Scheduler(lm, context_length=256)
    try:
        col = run_requests(s, [req("three", constraint=Constraint("regex", "[a-z]{3,6}")), req("free")])
        assert len(col.text("three")) == 3 and col.last("three").finish_reason == "stop"
        assert col.tokens("three")[-1] == EOS  # ended by the model, once the grammar allowed it
        assert col.tokens("free") == [EOS]
    finally:
        s.close()


def test_a_model_vocabulary_wider_than_the_tokenizer_never_yields_its_extra_ids(run_requests):
    model = tiny_model(vocab_size=len(TOK) + 40, seed=1)
    force(model, len(TOK) + 7)  # a padding id is the argmax everywhere
    lm = LoadedModel("wide", model, TOK, eos_ids(TOK, model.config))
    s = Scheduler(lm, context_length=256)
    try:
        c = Constraint("regex", "[a-z]{4}")
        col = run_requests(s, [req("c", constraint=c), req("s", constraint=c, temperature=1.0, seed=3), req("free")])
        assert re.fullmatch("[a-z]{4}", col.text("c")) and re.fullmatch("[a-z]{4}", col.text("s"))
        assert set(col.tokens("free")) == {len(TOK) + 7}  # unconstrained rows are untouched
    finally:
        s.close()


def test_constrained_generation_on_a_lora_adapter_row(tmp_path):
    from test_adapter_serving import save_adapter

    base = tiny_loaded("tiny", seed=1).model.eval()
    reference = save_adapter(base, tmp_path / "a", "lora-all", seed=21)
    spec = ModelSpec(name="tiny", kind="chat", source=ModelSource(path="/nonexistent"), context_length=256,
                     max_output_tokens=64)
    eng = LocalEngine(Catalog(list(BUILTIN) + [spec]), Settings(data_dir=tmp_path, cache_dir=tmp_path / "c", threads=1),
                      preloaded={"tiny": tiny_loaded("tiny", seed=1)})
    c = schema_of(type="object", properties={"k": {"type": "string", "maxLength": 6}, "n": {"type": "integer",
                  "minimum": 0, "maximum": 99}}, required=["k", "n"], additionalProperties=False)
    try:
        slot = eng.add_adapter("tiny", "cm_a", tmp_path / "a")
        eng.validate_constraint("tiny", c)
        with pytest.raises(InvalidInput, match="nonsense") as info:
            eng.validate_constraint("tiny", Constraint("json_schema", '{"type": "nonsense"}'), param="response_format.json_schema")
        assert info.value.param == "response_format.json_schema"

        async def invalid():
            bad = GenerationRequest("bad", [1, 2], constraint=Constraint("regex", "(unclosed"))
            return [ev async for ev in eng.generate("tiny", bad)]

        with pytest.raises(InvalidInput, match="unclosed") as info:
            asyncio.run(invalid())
        assert info.value.param == "response_format"
        prompt = TOK.encode("give json")

        async def both():
            runs = [eng.generate("tiny", GenerationRequest(f"r{s}", prompt, SamplingParams(max_tokens=60, temperature=0),
                                                           adapter_slot=s, constraint=c)) for s in (slot, None)]

            async def collect(stream):
                return [ev async for ev in stream]

            return await asyncio.gather(*(collect(r) for r in runs))

        adapted, plain = asyncio.run(both())
        for events in (adapted, plain):
            assert events[-1].finish_reason == "stop"
            jsonschema.validate(json.loads("".join(e.text for e in events)), json.loads(c.spec))
        tokens = [t for e in adapted for t in e.token_ids]
        assert tokens == constrained_greedy(reference, prompt, c, 60)
        assert [t for e in plain for t in e.token_ids] == constrained_greedy(base, prompt, c, 60)
    finally:
        eng.close()


def constrained_greedy(model, prompt: list[int], constraint: Constraint, n: int) -> list[int]:
    """Reference: full recomputation, each step's argmax among the tokens the matcher allows."""
    matcher = new_matcher(TOK, constraint)
    out: list[int] = []
    with torch.no_grad():
        for _ in range(n):
            logits = model(input_ids=torch.tensor([prompt + out])).logits[0, -1]  # (V,)
            allowed = torch.tensor([matcher.validate_tokens([j]) == 1 for j in range(logits.shape[-1])])  # (V,)
            token = int(logits.masked_fill(~allowed, float("-inf")).argmax())
            out.append(token)
            if token == EOS or (matcher.consume_token(token) and matcher.is_stopped()):
                break
    return out


# --- property: random bounded JSON Schemas ---------------------------------------------------

KEYS = ["id", "name", "age", "tags", "ok", "score", "meta", "x", "kind", "note"]
ENUM_VALUES = ["a", "b c", "日本", 1, 2.5, None, True, 'x"y', "\\n"]


def random_schema(rng: random.Random, depth: int = 0) -> dict:
    """A JSON Schema whose every instance is finite: bounded strings and arrays, closed objects."""
    kinds = ["object", "array", "enum", "integer", "number", "string", "boolean"]
    kind = rng.choice(kinds if depth < 3 else kinds[2:]) if depth or rng.random() < 0.25 else "object"
    if kind == "object":
        keys = rng.sample(KEYS, rng.randint(1, 4))
        return {"type": "object", "properties": {k: random_schema(rng, depth + 1) for k in keys},
                "required": [k for k in keys if rng.random() < 0.6], "additionalProperties": False}
    if kind == "array":
        most = rng.randint(0, 3)
        return {"type": "array", "items": random_schema(rng, depth + 1), "minItems": rng.randint(0, most), "maxItems": most}
    if kind == "enum":
        return {"enum": rng.sample(ENUM_VALUES, rng.randint(1, 4))}
    if kind == "integer":
        low = rng.randint(-1000, 1000)
        return {"type": "integer", "minimum": low, "maximum": low + rng.randint(0, 5000)}
    if kind == "number":
        low = round(rng.uniform(-100, 100), 2)
        return {"type": "number", "minimum": low, "maximum": round(low + rng.uniform(0, 100), 2)}
    if kind == "string":
        most = rng.randint(0, 8)
        return {"type": "string", "minLength": rng.randint(0, most), "maxLength": most}
    return {"type": "boolean"}


def test_every_output_of_100_random_bounded_schemas_is_valid_and_complete(run_requests):
    """Sampled at temperature 1 from a random model flattened towards uniform (see ``flattened``)."""
    lm = flattened()
    s = Scheduler(lm, context_length=4096, max_batch=32, max_waiting=128)
    rng = random.Random(20240601)
    schemas = [random_schema(rng) for _ in range(100)]
    try:
        requests = [GenerationRequest(f"s{i}", TOK.encode("json:"), SamplingParams(max_tokens=1500, temperature=1.0, seed=i),
                                      constraint=Constraint("json_schema", json.dumps(schema)))
                    for i, schema in enumerate(schemas)]
        col = run_requests(s, requests)
    finally:
        s.close()
    for i, schema in enumerate(schemas):
        last, text = col.last(f"s{i}"), col.text(f"s{i}")
        assert last.finish_reason == "stop", (schema, text)
        jsonschema.validate(json.loads(text), schema)
