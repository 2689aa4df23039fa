"""The OpenAI surface beyond plain chat, through the official client and LangChain on the bundled model:
structured outputs (JSON mode, JSON Schema, Pydantic parsing), tools (forced, named, auto, streamed, a
tool-calling loop), log probabilities (chat and completions, echo), ``n``, ``logit_bias``, ``best_of``."""

from __future__ import annotations

import json
import math

import jsonschema
import langchain_openai
import openai
import pytest
from pydantic import BaseModel, Field

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODEL = "smollm2-135m-instruct"
PARAGRAPH = ("Ada Lovelace was born in London in 1815. She wrote the first published algorithm for Charles "
             "Babbage's Analytical Engine.")
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather of a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 40},
                                                       "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                       "required": ["city", "unit"], "additionalProperties": False},
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "description": "The time in a city.",
                                         "parameters": {"type": "object", "properties": {
                                             "city": {"type": "string", "maxLength": 40}}, "required": ["city"]}}}


class Person(BaseModel):
    name: str = Field(max_length=40)
    birth_year: int = Field(ge=1000, le=2100)
    city: str = Field(max_length=40)


def ask(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def test_json_mode_is_always_valid_json(openai_client: openai.OpenAI) -> None:
    for stream in (False, True):
        kwargs = dict(model=MODEL, messages=ask("Describe a cat as JSON."), response_format={"type": "json_object"},
                      max_tokens=200, temperature=0.7, seed=1)
        if stream:
            text = "".join(c.choices[0].delta.content or "" for c in openai_client.chat.completions.create(
                stream=True, **kwargs) if c.choices)
        else:
            reply = openai_client.chat.completions.create(**kwargs)
            assert reply.choices[0].finish_reason == "stop"
            text = reply.choices[0].message.content
        assert isinstance(json.loads(text), dict)


def test_structured_extraction_into_a_pydantic_model(openai_client: openai.OpenAI) -> None:
    parsed = openai_client.chat.completions.parse(
        model=MODEL, messages=[{"role": "system", "content": "Extract the person."}, *ask(PARAGRAPH)],
        response_format=Person, max_tokens=120, temperature=0,
    )  # fmt: skip
    person = parsed.choices[0].message.parsed
    assert isinstance(person, Person)
    jsonschema.validate(json.loads(parsed.choices[0].message.content), Person.model_json_schema())


def test_an_unsupported_schema_is_a_400_naming_response_format(openai_client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        openai_client.chat.completions.create(
            model=MODEL, messages=ask("hi"), max_tokens=5,
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}},
        )  # fmt: skip
    assert refused.value.body["param"].startswith("response_format")


def test_forced_and_named_tool_calls_match_the_function(openai_client: openai.OpenAI) -> None:
    for choice in ("required", {"type": "function", "function": {"name": "get_weather"}}):
        reply = openai_client.chat.completions.create(
            model=MODEL, messages=ask("What is the weather in Paris?"), tools=[WEATHER, TIME], tool_choice=choice,
            max_tokens=80, temperature=0,
        )  # fmt: skip
        message = reply.choices[0]
        assert message.finish_reason == "tool_calls"
        [call] = message.message.tool_calls
        assert call.function.name in ("get_weather", "get_time") and call.id.startswith("call_")
        schema = {"get_weather": WEATHER, "get_time": TIME}[call.function.name]["function"]["parameters"]
        jsonschema.validate(json.loads(call.function.arguments), schema)
        if isinstance(choice, dict):
            assert call.function.name == "get_weather"


def test_streamed_tool_call_and_a_tool_calling_loop(openai_client: openai.OpenAI) -> None:
    messages = ask("What is the weather in Paris?")
    chunks = list(openai_client.chat.completions.create(
        model=MODEL, messages=messages, tools=[WEATHER], tool_choice="required", max_tokens=80, temperature=0,
        stream=True,
    ))  # fmt: skip
    calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert len(calls) == 1 and calls[0].function.name == "get_weather"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]
    call = calls[0]
    messages += [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": call.id, "type": "function", "function": {"name": call.function.name,
                                                              "arguments": call.function.arguments}}]},
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature": 21, "sky": "sunny"})},
    ]  # fmt: skip
    final = openai_client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER], max_tokens=40,
                                                  temperature=0)
    assert final.choices[0].finish_reason in ("stop", "length", "tool_calls")
    assert final.choices[0].message.content or final.choices[0].message.tool_calls


def test_chat_log_probabilities_streamed_and_not(openai_client: openai.OpenAI) -> None:
    kwargs = dict(model=MODEL, messages=ask("Name a color."), max_tokens=6, temperature=0, logprobs=True,
                  top_logprobs=3)
    openai_client.chat.completions.create(**kwargs)  # caches the prompt's prefix: the next two take the same path
    reply = openai_client.chat.completions.create(**kwargs)  # (a cold run may differ at a near-tie, see README)
    content = reply.choices[0].logprobs.content
    assert len(content) == reply.usage.completion_tokens
    for entry in content:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 3
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[-1].logprob
        assert math.isclose(entry.logprob, entry.top_logprobs[0].logprob, abs_tol=1e-4)  # greedy: the likeliest
    streamed = [e for c in openai_client.chat.completions.create(stream=True, **kwargs) if c.choices
                and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert [e.token for e in streamed] == [e.token for e in content]
    assert all(math.isclose(a.logprob, b.logprob, abs_tol=1e-4) for a, b in zip(streamed, content))


def test_completion_echo_and_logprobs(openai_client: openai.OpenAI) -> None:
    prompt = "The capital of France is"
    reply = openai_client.completions.create(model=MODEL, prompt=prompt, max_tokens=3, temperature=0, logprobs=2,
                                             echo=True)
    choice = reply.choices[0]
    assert choice.text.startswith(prompt)
    logprobs = choice.logprobs
    assert logprobs.token_logprobs[0] is None and all(v <= 0 for v in logprobs.token_logprobs[1:])
    assert len(logprobs.tokens) == reply.usage.prompt_tokens + reply.usage.completion_tokens
    assert "".join(logprobs.tokens) == choice.text and logprobs.text_offset[0] == 0


def test_n_choices_equal_separate_seeded_requests(openai_client: openai.OpenAI) -> None:
    kwargs = dict(model=MODEL, messages=ask("Tell me a word."), max_tokens=8, temperature=1.0)
    together = openai_client.chat.completions.create(n=3, seed=7, **kwargs)
    assert [c.index for c in together.choices] == [0, 1, 2]
    alone = [openai_client.chat.completions.create(seed=7 + i, **kwargs).choices[0].message.content for i in range(3)]
    assert [c.message.content for c in together.choices] == alone


def test_logit_bias_forces_a_token(openai_client: openai.OpenAI) -> None:
    banana = openai_client.post("/tokenize", cast_to=dict, body={"model": MODEL, "text": " banana"})
    kwargs = dict(model=MODEL, messages=ask("Say hello."), max_tokens=3, temperature=0, logprobs=True)
    plain = openai_client.chat.completions.create(**kwargs)
    forced = openai_client.chat.completions.create(logit_bias={str(banana["ids"][0]): 100}, **kwargs)
    assert forced.choices[0].logprobs.content[0].token == banana["tokens"][0]
    assert plain.choices[0].logprobs.content[0].token != banana["tokens"][0]


def test_best_of_returns_n_of_them(openai_client: openai.OpenAI) -> None:
    reply = openai_client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=5, temperature=1.0,
                                             best_of=3, n=2, seed=3)
    assert [c.index for c in reply.choices] == [0, 1]


def test_langchain_structured_output_and_tools(base_url: str, admin_key: str) -> None:
    llm = langchain_openai.ChatOpenAI(base_url=f"{base_url}/v1", api_key=admin_key, model=MODEL, temperature=0,
                                      max_tokens=120, max_retries=0)
    person = llm.with_structured_output(Person).invoke(f"Extract the person: {PARAGRAPH}")
    assert isinstance(person, Person)
    called = llm.bind_tools([WEATHER], tool_choice="get_weather").invoke("What is the weather in Paris?")
    [call] = called.tool_calls
    assert call["name"] == "get_weather"
    jsonschema.validate(call["args"], WEATHER["function"]["parameters"])
