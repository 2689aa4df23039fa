"""The playground's pure parts: the form as a request, streamed chunks as the answer, the request as code.

The API is an ``httpx.MockTransport``: what the playground sends and how it reads what comes
back are checked without a server or a browser.
"""

from __future__ import annotations

import ast
import json
import math
import shlex

import httpx
import pytest

from atelier.client import ApiError, AtelierClient, Usage
from atelier.console import actions
from atelier.console.playground import (
    FormError,
    PlaygroundForm,
    StreamedAnswer,
    TokenLogprob,
    ToolCall,
    build_request,
    examples_from_rows,
    visible_token,
)

URL = "http://atelier.test"
SCHEMA = '{"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}}, "required": ["city"]}'
TOOLS = '[{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]'


def form(**values) -> PlaygroundForm:
    return PlaygroundForm(**{"model": "smollm2-135m-instruct", "message": "What is the capital of Japan?", **values})


def everything() -> dict:
    """A request with every control set."""
    return build_request(form(
        max_tokens=16, temperature=0.7000000000000001, top_k=40, top_p=0.9, frequency_penalty=0.5,
        presence_penalty=-0.25, repetition_penalty=1.1, stop="END\n\n Stop here\r\n", seed=7,
        system_prompt="Answer in one word.", examples=({"input": "Capital of France?", "output": "Paris"},),
        chain_of_thought=True, json_schema=SCHEMA, tools=TOOLS, tool_choice="required", logprobs=True,
        top_logprobs=3,
    ))  # fmt: skip


# --- the form as a request ---------------------------------------------------------------------


def test_defaults_send_the_core_sampling_fields_streamed_with_usage_and_no_extension():
    assert build_request(form(max_tokens=16, temperature=0)) == {
        "model": "smollm2-135m-instruct",
        "messages": [{"role": "user", "content": "What is the capital of Japan?"}],
        "max_tokens": 16, "temperature": 0.0, "top_p": 1.0, "frequency_penalty": 0.0, "presence_penalty": 0.0,
        "stream": True, "stream_options": {"include_usage": True},
    }  # fmt: skip


def test_every_control_becomes_its_field_openai_fields_first_then_atelier_extensions():
    body = everything()
    assert body == {
        "model": "smollm2-135m-instruct",
        "messages": [{"role": "user", "content": "What is the capital of Japan?"}],
        "max_tokens": 16, "temperature": 0.7, "top_p": 0.9, "frequency_penalty": 0.5, "presence_penalty": -0.25,
        "stop": ["END", " Stop here"], "seed": 7,
        "response_format": {"type": "json_schema", "json_schema": {"name": "answer", "schema": json.loads(SCHEMA)}},
        "tools": json.loads(TOOLS), "tool_choice": "required",
        "logprobs": True, "top_logprobs": 3,
        "stream": True, "stream_options": {"include_usage": True},
        "top_k": 40, "repetition_penalty": 1.1, "preamble": "Answer in one word.",
        "examples": [{"input": "Capital of France?", "output": "Paris"}], "chain_of_thought": True,
    }  # fmt: skip
    names = list(body)
    assert names[: names.index("stream_options") + 1] == [k for k in actions.OPENAI_FIELDS if k in body]


@pytest.mark.parametrize(
    ("values", "field", "message"),
    [
        ({"message": "  \n"}, "Message", "type a message first"),
        ({"model": ""}, "Model", "choose a model"),
        ({"json_schema": '{"type": "object",'}, "JSON Schema", "not valid JSON (line 1, column 19: "),
        ({"json_schema": '["not", "a", "schema"]'}, "JSON Schema", "must be a JSON object"),
        ({"tools": '{"type": "function"}'}, "Tools", "must be a JSON list of tool definitions"),
        ({"tools": '["get_weather"]'}, "Tools", "each tool must be an object"),
        ({"tools": "[{oops}]"}, "Tools", "not valid JSON (line 1, column 3: "),
        ({"stop": "a\nb\nc\nd\ne"}, "Stop sequences", "at most 4, one per line (5 given)"),
        ({"examples": ({"input": "", "output": "Paris"},)}, "Examples", "example 1 has an output but no input"),
        ({"logprobs": True, "top_logprobs": 21}, "Top log probabilities", "from 1 to 20"),
        ({"tool_choice": "sometimes"}, "Tool choice", "one of auto, none, required"),
    ],
)  # fmt: skip
def test_a_field_that_cannot_make_a_request_is_an_error_naming_it(values, field, message):
    with pytest.raises(FormError) as caught:
        build_request(form(**values))
    assert caught.value.field == field
    assert caught.value.message.startswith(message), caught.value.message
    assert str(caught.value).startswith(f"{field}: {message}")


def test_optional_controls_left_at_their_neutral_value_are_not_sent():
    body = build_request(form(top_k=0, repetition_penalty=1.0000000001, stop="\n  \n", json_schema="  ",
                              tools="", tool_choice="none", system_prompt=" ", logprobs=False, top_logprobs=99))
    assert not {"top_k", "repetition_penalty", "stop", "seed", "response_format", "tools", "tool_choice",
                "preamble", "examples", "chain_of_thought", "logprobs", "top_logprobs"} & set(body)
    assert "tool_choice" not in build_request(form(tools="[]", tool_choice="required"))


def test_examples_keep_rows_with_an_input_and_drop_blank_ones():
    rows = [{"input": "2+2", "output": "4"}, {"input": None, "output": None}, {"input": "  ", "output": float("nan")},
            {"input": "3+3", "output": None}]
    assert examples_from_rows(rows) == [{"input": "2+2", "output": "4"}, {"input": "3+3", "output": ""}]
    assert examples_from_rows(None) == []


# --- streamed chunks as the answer -------------------------------------------------------------


def chunk(content=None, finish=None, logprobs=None, tool_calls=None, usage=None, choices=True) -> dict:
    """A ``chat.completion.chunk`` as the API streams it."""
    delta = {k: v for k, v in {"content": content, "tool_calls": tool_calls}.items() if v is not None}
    choice = {"index": 0, "delta": delta, "finish_reason": finish,
              "logprobs": None if logprobs is None else {"content": logprobs}}
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "smollm2-135m-instruct",
            "choices": [choice] if choices else [], "usage": usage}  # fmt: skip


def entry(token: str, logprob: float, *top: tuple[str, float]) -> dict:
    return {"token": token, "logprob": logprob, "bytes": list(token.encode()),
            "top_logprobs": [{"token": t, "logprob": lp, "bytes": None} for t, lp in top]}  # fmt: skip


def test_chunks_build_the_text_finish_reason_usage_and_token_log_probabilities():
    answer = StreamedAnswer()
    added = [answer.add(c) for c in [
        {**chunk(), "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]},
        chunk("Tokyo", logprobs=[entry("Tokyo", -0.1, ("Tokyo", -0.1), (" Kyoto", -2.5))]),
        chunk(".", logprobs=[entry(".", -0.01, (".", -0.01), ("!", -5.0))]),
        chunk(finish="length"),
        chunk(usage={"prompt_tokens": 12, "completion_tokens": 2, "total_tokens": 14}, choices=False),
    ]]  # fmt: skip
    assert added == ["", "Tokyo", ".", "", ""]
    assert (answer.text, answer.finish_reason, answer.usage, answer.model) == (
        "Tokyo.", "length", Usage(12, 2, 14), "smollm2-135m-instruct")
    assert [t.token for t in answer.tokens] == ["Tokyo", "."]
    assert answer.tokens[0].top == (("Tokyo", -0.1), (" Kyoto", -2.5))
    assert answer.summary == ("Tokens: prompt 12 · completion 2 · total 14 — finish reason: length — "
                              "streamed in 5 chunks")


def test_only_the_first_choice_is_read_and_a_stream_cut_short_says_so():
    answer = StreamedAnswer()
    answer.add({"choices": [{"index": 1, "delta": {"content": "other"}}, {"index": 0, "delta": {"content": "Hi"}}]})
    assert (answer.text, answer.usage, answer.summary) == ("Hi", None, "finish reason: none — streamed in 1 chunk")


def test_tool_calls_sent_whole_or_in_openai_pieces_are_joined_by_index():
    whole = StreamedAnswer()
    whole.add(chunk(tool_calls=[{"index": 0, "id": "call_1", "type": "function",
                                 "function": {"name": "get_weather", "arguments": '{"city": "Tokyo"}'}}]))
    whole.add(chunk(finish="tool_calls"))
    assert whole.tool_calls == [ToolCall("call_1", "get_weather", '{"city": "Tokyo"}')]
    assert whole.finish_reason == "tool_calls"
    pieces = StreamedAnswer()
    for part in [{"index": 0, "id": "call_a", "function": {"name": "f", "arguments": ""}},
                 {"index": 1, "id": "call_b", "function": {"name": "g", "arguments": "{}"}},
                 {"index": 0, "function": {"arguments": '{"x": '}}, {"index": 0, "function": {"arguments": "1}"}}]:
        pieces.add(chunk(tool_calls=[part]))
    assert pieces.tool_calls == [ToolCall("call_a", "f", '{"x": 1}'), ToolCall("call_b", "g", "{}")]
    assert pieces.tool_calls[0].pretty_arguments == '{\n  "x": 1\n}'
    assert ToolCall("c", "f", "{not json").pretty_arguments == "{not json"


def test_a_token_table_shows_each_alternative_visibly_with_its_probability_and_marks_the_chosen_one():
    token = TokenLogprob.from_json(entry(" Tokyo", math.log(0.75), (" Tokyo", math.log(0.75)), ("\n", math.log(0.2))))
    assert token.label == "␣Tokyo · logprob -0.2877 · 75.00 %"
    assert token.rows() == [
        {"#": "1", "token": "␣Tokyo", "logprob": "-0.2877", "probability": "75.00 %", "✓": "✓"},
        {"#": "2", "token": "↵", "logprob": "-1.6094", "probability": "20.00 %", "✓": ""},
    ]


@pytest.mark.parametrize(("token", "shown"), [(" a", "␣a"), ("a\r\nb", "a↵b"), ("a\n\r", "a↵↵"), ("\t", "⇥"), ("", "∅"), ("x", "x")])
def test_tokens_show_their_white_space(token, shown):
    assert visible_token(token) == shown


# --- the API: models and the stream ------------------------------------------------------------


def models_api(request: httpx.Request) -> httpx.Response:
    card = {"object": "model", "created": 0, "owned_by": "t", "context_length": 8192, "dimensions": 0}
    return httpx.Response(200, json={"object": "list", "data": [
        {**card, "id": "cm_abc", "capabilities": ["chat", "completion"], "max_output_tokens": 4096},
        {**card, "id": "smollm2-135m-instruct", "capabilities": ["chat", "completion"], "max_output_tokens": 4096},
        {**card, "id": "all-minilm-l6-v2", "capabilities": ["embedding"], "max_output_tokens": 0},
        {**card, "id": "ep_xyz", "capabilities": ["chat", "completion"], "max_output_tokens": 2048},
    ]})  # fmt: skip


def test_chat_models_are_base_models_then_endpoints_then_custom_models():
    with AtelierClient(URL, "sk-key", transport=httpx.MockTransport(models_api)) as client:
        models = actions.chat_models(client)
    assert [(m.id, m.kind, m.max_output_tokens) for m in models] == [
        ("smollm2-135m-instruct", "base", 4096), ("ep_xyz", "endpoint", 2048), ("cm_abc", "custom model", 4096)]
    assert [m.label for m in models] == ["smollm2-135m-instruct", "ep_xyz (endpoint)", "cm_abc (custom model)"]


def sse(*events: dict) -> bytes:
    return "".join(f"data: {json.dumps(e)}\n\n" for e in events).encode() + b"data: [DONE]\n\n"


def test_stream_chat_sends_the_body_and_yields_the_answer_as_it_grows():
    sent = []

    def respond(request: httpx.Request) -> httpx.Response:
        sent.append(json.loads(request.content))
        body = sse(chunk("Tok"), chunk("yo"), chunk(finish="stop"),
                   chunk(usage={"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}, choices=False))
        return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})

    body = everything()
    with AtelierClient(URL, "sk-key", transport=httpx.MockTransport(respond)) as client:
        steps = [(added, answer.text) for added, answer in actions.stream_chat(client, body)]
    assert sent == [body]  # exactly the request the code views show
    assert steps == [("Tok", "Tok"), ("yo", "Tokyo"), ("", "Tokyo"), ("", "Tokyo")]


def test_stream_chat_raises_the_api_error_with_its_status():
    def refuse(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json={"error": {"message": "the schema is invalid", "type": "invalid_request_error",
                                                   "param": "response_format.json_schema.schema"}})

    client = AtelierClient(URL, "sk-key", transport=httpx.MockTransport(refuse))
    with client, pytest.raises(ApiError) as caught:
        list(actions.stream_chat(client, build_request(form())))
    assert actions.describe_error(caught.value) == (
        "Invalid request (HTTP 400): the schema is invalid (param: response_format.json_schema.schema)")


# --- the request as code -----------------------------------------------------------------------


def curl_body(command: str) -> dict:
    args = shlex.split(command.replace("\\\n", " "))
    return json.loads(args[args.index("-d") + 1])


@pytest.mark.parametrize("body", [
    build_request(form(max_tokens=16, temperature=0)),
    everything(),
    build_request(form(message='It\'s "quoted" \\ {braces} $HOME `ls` 東京 🗾 \u2028 end', system_prompt="'; rm -rf /")),
])  # fmt: skip
def test_python_code_compiles_and_curl_sends_the_same_json(body):
    code = actions.python_code(body, URL + "/")
    compile(code, "x", "exec")
    assert f'OpenAI(base_url="{URL}/v1", api_key=os.environ["ATELIER_API_KEY"])' in code
    command = actions.curl_command(body, URL)
    assert curl_body(command) == body
    assert command.startswith(f"curl -N {URL}/v1/chat/completions \\\n")
    assert '-H "Authorization: Bearer $ATELIER_API_KEY"' in command


def test_python_code_passes_openai_fields_as_arguments_and_extensions_in_extra_body():
    body = everything()
    code = actions.python_code(body, URL)
    create = next(node for node in ast.walk(ast.parse(code))
                  if isinstance(node, ast.Call) and ast.unparse(node.func) == "client.chat.completions.create")
    kwargs = {keyword.arg: ast.literal_eval(keyword.value) for keyword in create.keywords}
    extensions = {"top_k", "repetition_penalty", "preamble", "examples", "chain_of_thought"}
    assert kwargs == {**{k: v for k, v in body.items() if k not in extensions},
                      "extra_body": {k: body[k] for k in extensions}}
    assert "extra_body" not in actions.python_code(build_request(form()), URL)


def test_a_request_that_is_not_streamed_reads_the_whole_reply():
    body = {k: v for k, v in build_request(form()).items() if k not in ("stream", "stream_options")}
    code = actions.python_code(body, URL)
    compile(code, "x", "exec")
    assert "reply = client.chat.completions.create(" in code
    assert "print(reply.choices[0].message.content)" in code
    assert actions.curl_command(body, URL).startswith(f"curl {URL}/v1/chat/completions")
