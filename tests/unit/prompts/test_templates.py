"""Prompt templates: k-shot layout, chain of thought, completion-style prompts."""

from __future__ import annotations

import pytest

from atelier.errors import InvalidInput
from atelier.prompts.templates import (
    ZERO_SHOT_COT,
    Example,
    PromptTemplate,
    chain_of_thought,
    extract_answer,
    k_shot,
    k_shot_text,
)

PAIRS = [("great film", "positive"), ("dull and long", "negative")]


@pytest.mark.parametrize(
    "examples",
    [PAIRS, [{"input": x, "output": y} for x, y in PAIRS], [Example(input=x, output=y) for x, y in PAIRS]],
)
def test_k_shot_alternates_examples_before_the_query(examples):
    msgs = k_shot(examples, "loved it", instruction="Classify the sentiment.")
    assert msgs == [
        {"role": "system", "content": "Classify the sentiment."},
        {"role": "user", "content": "great film"},
        {"role": "assistant", "content": "positive"},
        {"role": "user", "content": "dull and long"},
        {"role": "assistant", "content": "negative"},
        {"role": "user", "content": "loved it"},
    ]


def test_k_shot_without_instruction_or_examples():
    assert k_shot([], "hi") == [{"role": "user", "content": "hi"}]
    assert k_shot(PAIRS[:1], "q")[0] == {"role": "user", "content": "great film"}


@pytest.mark.parametrize("bad", [[("only input",)], [{"input": "x"}], [{"input": "", "output": "y"}], [None]])
def test_k_shot_rejects_malformed_examples(bad):
    with pytest.raises(InvalidInput) as err:
        k_shot(PAIRS + bad, "q")
    assert err.value.param == "examples[2]"


def test_k_shot_text_blocks():
    text = k_shot_text(PAIRS, "loved it", instruction="Classify.")
    assert text == (
        "Classify.\n\n"
        "Input: great film\nOutput: positive\n\n"
        "Input: dull and long\nOutput: negative\n\n"
        "Input: loved it\nOutput:"
    )


def test_chain_of_thought_zero_shot():
    msgs = chain_of_thought("What is 17 + 25?")
    assert msgs == [{"role": "user", "content": f"What is 17 + 25?\n{ZERO_SHOT_COT}"}]
    assert ZERO_SHOT_COT == "Let's think step by step."


def test_chain_of_thought_with_worked_examples():
    examples = [{"question": "2 + 3 * 4?", "reasoning": "3 * 4 = 12, and 2 + 12 = 14.", "answer": "14"}]
    msgs = chain_of_thought("5 * 5 - 1?", examples, instruction="Solve.")
    assert msgs == [
        {"role": "system", "content": "Solve."},
        {"role": "user", "content": "2 + 3 * 4?"},
        {"role": "assistant", "content": "3 * 4 = 12, and 2 + 12 = 14.\nThe answer is 14."},
        {"role": "user", "content": "5 * 5 - 1?"},
    ]
    with pytest.raises(InvalidInput) as err:
        chain_of_thought("q", [{"question": "x", "answer": "y"}])
    assert err.value.param == "examples[0]"


@pytest.mark.parametrize(
    ("completion", "answer"),
    [
        ("25 - 1 = 24.\nThe answer is 24.", "24"),
        ("the answer is: Paris", "Paris"),
        ("The answer is 3. Wait, the answer is 4.", "4"),
        ("The answer is 3.14.", "3.14"),
        ("no idea", None),
    ],
)
def test_extract_answer(completion, answer):
    assert extract_answer(completion) == answer


def test_prompt_template_options():
    template = PromptTemplate(instruction="Classify.", examples=[Example(input="a", output="b")])
    assert template.messages("c") == k_shot([("a", "b")], "c", instruction="Classify.")
    assert template.text("c") == k_shot_text([("a", "b")], "c", instruction="Classify.")
    cot = PromptTemplate(chain_of_thought=True)
    assert cot.messages("q") == chain_of_thought("q")
    assert cot.text("q").endswith(f"q\n{ZERO_SHOT_COT}\nOutput:")
    schema = PromptTemplate.model_json_schema()
    assert all("description" in f for f in Example.model_json_schema()["properties"].values())
    assert "examples" in schema["properties"]
