"""Training-file validation: every problem by line, masks from the serving chat rendering, split."""

from __future__ import annotations

import json

import pytest

from atelier.engine.loading import tiny_tokenizer
from atelier.errors import InvalidInput
from atelier.prompts.formats import render_chat
from atelier.tuning.data import (
    IGNORE_INDEX,
    TextTemplate,
    load_examples,
    split_examples,
    validate,
)

TOK = tiny_tokenizer()


def pair(i: int) -> str:
    return json.dumps({"prompt": f"question {i}", "completion": f"answer {i}"})


def good_lines(n: int = 10) -> list[str]:
    return [pair(i) for i in range(n)]


def check(lines: list[str], **kw):
    kw.setdefault("context_length", 512)
    return validate("\n".join(lines).encode(), TOK, **kw)


def learned_text(example) -> str:
    return TOK.decode([t for t in example.labels if t != IGNORE_INDEX])


def test_a_valid_file_has_no_problems():
    report = check(good_lines(12))
    assert report.ok and len(report.examples) == 12 and report.n_records == 12
    assert [e.line for e in report.examples] == list(range(1, 13))


@pytest.mark.parametrize(
    ("bad_line", "needle"),
    [
        ('{"prompt": "x", "completion": ', "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"prompt": "x"}', "missing field 'completion'"),
        ('{"completion": "y"}', "missing field 'prompt'"),
        ('{"prompt": "x", "completion": "   "}', "field 'completion' is empty"),
        ('{"prompt": "", "completion": "y"}', "field 'prompt' is empty"),
        ('{"prompt": 3, "completion": "y"}', "field 'prompt' must be a string"),
        ('{"text": "hello"}', "expected {'prompt', 'completion'} or {'messages'"),
        ('{"messages": [], "prompt": "x"}', "not both"),
        ('{"messages": []}', "'messages' must be a non-empty list"),
        ('{"messages": [{"role": "assistant", "content": "hi"}]}', "messages[0].role: expected 'user'"),
        (
            '{"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}, '
            '{"role": "assistant", "content": "c"}]}',
            "messages[1].role: expected 'assistant'",
        ),
        ('{"messages": [{"role": "user", "content": "a"}]}', "the last message must be from the assistant"),
        (
            '{"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "s"}, '
            '{"role": "assistant", "content": "c"}]}',
            "messages[1].role: a system message may only come first",
        ),
        ('{"messages": [{"role": "tool", "content": "a"}]}', "messages[0].role must be system, user or assistant"),
        ('{"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "c"}]}', "messages[0].content is empty"),
        ('{"messages": [{"role": "user"}, {"role": "assistant", "content": "c"}]}', "messages[0].content is missing"),
        (
            '{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "c", "weight": 0}]}',
            "nothing to learn",
        ),
        (
            '{"messages": [{"role": "user", "content": "a", "weight": 1}, {"role": "assistant", "content": "c"}]}',
            "weight must be 0 or 1, on assistant messages only",
        ),
    ],
)
def test_each_problem_is_named_by_its_line(bad_line, needle):
    lines = good_lines(12)
    lines.insert(4, bad_line)  # line 5
    report = check(lines)
    assert not report.ok
    assert [p.line for p in report.problems] == [5], report.problems
    assert needle in report.problems[0].message
    assert len(report.examples) == 12


def test_invalid_utf8_is_named_by_line():
    data = "\n".join(good_lines(11)).encode() + b'\n{"prompt": "caf\xe9", "completion": "x"}'
    report = validate(data, TOK, context_length=512)
    assert [(p.line, "UTF-8" in p.message) for p in report.problems] == [(12, True)]


def test_too_long_for_the_context_is_named_by_line():
    lines = good_lines(10) + [json.dumps({"prompt": "x" * 200, "completion": "y"})]
    report = check(lines, context_length=100)
    (problem,) = report.problems
    assert problem.line == 11 and "more than the model's context of 100 tokens" in problem.message


def test_too_few_examples_is_a_file_problem():
    report = check(good_lines(9))
    assert [(p.line, p.message) for p in report.problems] == [(None, "the file has 9 examples; at least 10 are needed")]
    assert check(good_lines(1), min_examples=1).ok


def test_every_problem_is_collected_and_raised_at_once():
    lines = good_lines(6) + ["{oops", '{"prompt": "x"}', "", '{"messages": [{"role": "user", "content": "a"}]}']
    # blank line 9 is skipped but still counted as a line number
    with pytest.raises(InvalidInput) as err:
        load_examples("\n".join(lines).encode(), TOK, context_length=512)
    msg = err.value.message
    assert err.value.param == "training_file" and err.value.line == 7
    assert "the file has 4 problems" in msg
    for expected in ("line 7: not valid JSON", "line 8: missing field 'completion'", "line 10: the last message", "9 examples"):
        assert expected in msg


def test_pair_is_rendered_as_a_chat_exchange_with_prompt_masked():
    (example,) = check(good_lines(1), min_examples=1).examples
    rendered = render_chat(
        TOK,
        [{"role": "user", "content": "question 0"}, {"role": "assistant", "content": "answer 0"}],
        add_generation_prompt=False,
    )
    assert example.input_ids == rendered.ids  # the serving rendering, token for token
    assert learned_text(example) == "answer 0<|im_end|>"
    first = example.labels.index(next(t for t in example.labels if t != IGNORE_INDEX))
    assert all(t == IGNORE_INDEX for t in example.labels[:first])
    assert TOK.decode(example.input_ids[:first]).endswith("<|im_start|>assistant\n")
    assert example.n_loss_tokens == len("answer 0") + 1


def test_chat_lines_label_every_assistant_turn_unless_weight_zero():
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": "uno"},
        {"role": "user", "content": "two"},
        {"role": "assistant", "content": [{"type": "text", "text": "dos"}]},
    ]
    both = check([json.dumps({"messages": messages})], min_examples=1).examples[0]
    assert learned_text(both) == "uno<|im_end|>dos<|im_end|>"
    messages[2] = {**messages[2], "weight": 0}
    last_only = check([json.dumps({"messages": messages})], min_examples=1).examples[0]
    assert last_only.input_ids == both.input_ids
    assert learned_text(last_only) == "dos<|im_end|>"


def test_developer_role_reads_as_system():
    line = json.dumps(
        {"messages": [{"role": "developer", "content": "s"}, {"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]}
    )
    (example,) = check([line], min_examples=1).examples
    assert "<|im_start|>system\ns" in TOK.decode(example.input_ids)


def test_text_template_splits_before_its_last_field():
    t = TextTemplate.parse("<prompt>{question}</prompt>{answer}")
    assert t.apply({"question": "2+2?", "answer": "4"}) == ("<prompt>2+2?</prompt>", "4")
    t2 = TextTemplate.parse("Q: {q} ({n})\nA: {a}\n{{end}}")
    assert t2.apply({"q": "x", "n": 3, "a": "y"}) == ("Q: x (3)\nA: ", "y\n{end}")
    assert t2.fields == ("q", "n", "a")


@pytest.mark.parametrize("template", ["no fields", "{answer}", "{a.b} {c}", "{0} {1}", "{a:>4} {b}", "{a} {b", "{} {x}"])
def test_bad_templates_are_refused(template):
    with pytest.raises(InvalidInput) as err:
        TextTemplate.parse(template)
    assert err.value.param == "text_template"


def test_text_template_lines_and_their_problems():
    rows = [json.dumps({"question": f"q{i}", "answer": f"a{i}"}) for i in range(10)]
    rows += [json.dumps({"question": "q"}), json.dumps({"question": ["x"], "answer": "  "})]
    report = check(rows, text_template="<prompt>{question}</prompt>{answer}")
    assert [(p.line, p.message) for p in report.problems] == [
        (11, "missing field 'answer' (used by text_template)"),
        (12, "field 'question' must be a string or a number"),
        (12, "field 'answer' (the completion) is empty"),
    ]
    first = report.examples[0]
    assert learned_text(first) == "a0<|im_end|>"
    assert "<|im_start|>user\n<prompt>q0</prompt><|im_end|>" in TOK.decode(first.input_ids)


def test_split_is_deterministic_by_seed_and_keeps_file_order():
    examples = check(good_lines(20)).examples
    train, val = split_examples(examples, 0.2, seed=3)
    again = split_examples(examples, 0.2, seed=3)
    other = split_examples(examples, 0.2, seed=4)
    assert (train, val) == again and len(val) == 4 and len(train) == 16
    assert {e.line for e in val} != {e.line for e in other[1]}
    assert [e.line for e in train] == sorted(e.line for e in train)
    assert {e.line for e in train} | {e.line for e in val} == set(range(1, 21))
    assert split_examples(examples, 0.0, seed=3) == (examples, [])
    assert len(split_examples(examples[:2], 0.5, seed=0)[0]) == 1
