"""Unit tests of ``atelier.client`` and ``atelier.cli`` over ``httpx.MockTransport``.

They check the client's own logic only — SSE parsing, error rendering, request bodies
built from flags, output formatting — against canned responses shaped like the API's.
They say nothing about the real server; integration tests drive that.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from atelier.cli import State, app
from atelier.cli.common import render_error
from atelier.cli.inference import parse_example
from atelier.cli.models import format_models_table
from atelier.client import ApiError, AtelierClient, ServerUnreachable, iter_sse_data, resolve_api_key
from atelier.settings import Settings

KEY = "sk-test-key"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("ATELIER_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("ATELIER_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("ATELIER_API_KEY", KEY)


class Server:
    """A canned server: records requests, answers with ``respond(request)``."""

    def __init__(self, respond: Callable[[httpx.Request], httpx.Response]):
        self.respond = respond
        self.requests: list[httpx.Request] = []
        self.transport = httpx.MockTransport(self._handle)

    def _handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.respond(request)

    @property
    def body(self) -> dict:
        return json.loads(self.requests[-1].content)


def sse(*events: dict | str) -> bytes:
    return "".join(f"data: {e if isinstance(e, str) else json.dumps(e)}\n\n" for e in events).encode()


def chat_chunk(content: str | None = None, finish: str | None = None) -> dict:
    delta = {} if content is None else {"content": content}
    return {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


USAGE = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
STREAM = sse(
    chat_chunk(""),
    chat_chunk("Tok"),
    chat_chunk("yo."),
    chat_chunk(None, "stop"),
    {"object": "chat.completion.chunk", "choices": [], "usage": USAGE},
    "[DONE]",
)


def sse_response(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, content=STREAM, headers={"content-type": "text/event-stream"})


def chat_response(request: httpx.Request) -> httpx.Response:
    return httpx.Response(
        200,
        json={
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Tokyo."}, "finish_reason": "stop"}],
            "usage": USAGE,
        },
    )


def error_response(
    status: int, message: str, param: str | None, **headers: str
) -> Callable[[httpx.Request], httpx.Response]:
    err = {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": "invalid_value"}}
    return lambda request: httpx.Response(status, json=err, headers=headers)


def run(server: Server, *args: str, input: str | None = None):
    return CliRunner().invoke(app, list(args), obj=State(transport=server.transport), input=input)


# --- SSE parsing -------------------------------------------------------------------------


def test_sse_yields_data_objects_and_stops_at_done():
    lines = ['data: {"a": 1}', "", ": keep-alive comment", "event: chunk", 'data:{"b": 2}', ""]
    lines += ["data: [DONE]", "", 'data: {"c": 3}', ""]
    assert list(iter_sse_data(lines)) == [{"a": 1}, {"b": 2}]


def test_sse_joins_multiline_data_and_flushes_last_event():
    lines = ["data: {\"text\":", "data:  \"x\"}", "", "data: {\"last\": true}\r\n"]
    assert list(iter_sse_data(lines)) == [{"text": "x"}, {"last": True}]


def test_sse_error_event_raises_api_error():
    lines = ['data: {"error": {"message": "queue full", "type": "rate_limit", "param": null, "code": "429"}}', ""]
    with pytest.raises(ApiError) as info:
        list(iter_sse_data(lines))
    assert info.value.message == "queue full" and info.value.code == "429"


def test_sse_non_json_data_is_an_api_error():
    with pytest.raises(ApiError, match="not JSON"):
        list(iter_sse_data(["data: hello", ""]))


# --- client ------------------------------------------------------------------------------


def test_client_streams_deltas_then_usage_and_asks_for_usage():
    server = Server(sse_response)
    client = AtelierClient("http://atelier.test", KEY, transport=server.transport)
    stream = client.chat([{"role": "user", "content": "hi"}], stream=True, model="m", temperature=0.0, seed=None)
    assert list(stream) == ["Tok", "yo."]
    usage = stream.usage
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (7, 3, 10)
    assert stream.finish_reason == "stop"
    request = server.requests[0]
    assert request.url.path == "/v1/chat/completions"
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert server.body == {
        "messages": [{"role": "user", "content": "hi"}],
        "model": "m",
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def test_client_whole_answer():
    server = Server(chat_response)
    result = AtelierClient("http://atelier.test", KEY, transport=server.transport).chat([{"role": "user", "content": "q"}])
    assert (result.text, result.finish_reason, result.usage.total_tokens) == ("Tokyo.", "stop", 10)
    assert "stream" not in server.body


def test_client_maps_error_object_with_retry_after():
    server = Server(error_response(429, "too many requests", None, **{"Retry-After": "2"}))
    with pytest.raises(ApiError) as info:
        AtelierClient("http://atelier.test", KEY, transport=server.transport).models.list()
    assert (info.value.status, info.value.message, info.value.retry_after) == (429, "too many requests", 2.0)


def test_client_error_before_stream_starts():
    server = Server(error_response(400, "top_p must be in (0, 1]", "top_p"))
    stream = AtelierClient("http://atelier.test", KEY, transport=server.transport).chat([], stream=True, top_p=2.0)
    with pytest.raises(ApiError) as info:
        list(stream)
    assert (info.value.status, info.value.param, str(info.value)) == (400, "top_p", "top_p must be in (0, 1] (param: top_p)")


def test_client_non_json_error_body():
    server = Server(lambda request: httpx.Response(502, text="<html>Bad Gateway</html>"))
    with pytest.raises(ApiError, match="HTTP 502: <html>Bad Gateway"):
        AtelierClient("http://atelier.test", KEY, transport=server.transport).health()


def test_client_connection_refused_is_server_unreachable():
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    client = AtelierClient("http://127.0.0.1:1", KEY, transport=httpx.MockTransport(refuse))
    with pytest.raises(ServerUnreachable, match="not reachable at http://127.0.0.1:1"):
        client.models.list()
    with pytest.raises(ServerUnreachable):
        list(client.chat([], stream=True))


def test_client_embed_orders_by_index_and_drops_unset_fields():
    rows = [{"index": 1, "embedding": [0.0, 1.0]}, {"index": 0, "embedding": [1.0, 0.0]}]
    data = {"model": "e", "data": rows, "usage": {"prompt_tokens": 4}}
    server = Server(lambda request: httpx.Response(200, json=data))
    result = AtelierClient("http://atelier.test", KEY, transport=server.transport).embed(["a", "b"], model="e")
    assert result.vectors == [[1.0, 0.0], [0.0, 1.0]] and result.dimensions == 2
    assert server.body == {"input": ["a", "b"], "model": "e"}


def test_key_resolution_order(tmp_path: Path):
    (tmp_path / "admin.key").write_text("from-file\n")
    assert resolve_api_key(Settings(data_dir=tmp_path, api_key="explicit", admin_key="admin")) == "explicit"
    assert resolve_api_key(Settings(data_dir=tmp_path, api_key=None, admin_key="admin")) == "admin"
    assert resolve_api_key(Settings(data_dir=tmp_path, api_key=None)) == "from-file"
    assert resolve_api_key(Settings(data_dir=tmp_path / "empty", api_key=None)) is None


def test_from_env_reads_url_and_key(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("ATELIER_URL", "http://atelier.test:9000/")
    server = Server(lambda request: httpx.Response(200, json={"status": "ok"}))
    AtelierClient.from_env(transport=server.transport).health()
    request = server.requests[0]
    assert str(request.url) == "http://atelier.test:9000/health"
    assert request.headers["authorization"] == f"Bearer {KEY}"


def test_no_key_sends_no_authorization_header(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("ATELIER_API_KEY")
    server = Server(lambda request: httpx.Response(200, json={"data": []}))
    AtelierClient.from_env(transport=server.transport).models.list()
    assert "authorization" not in server.requests[0].headers


# --- CLI: request bodies from flags ------------------------------------------------------


def test_chat_sends_every_flag():
    server = Server(chat_response)
    result = run(
        server, "chat", "What is the capital of Japan?", "--no-stream",
        "--model", "my-model", "--max-tokens", "32", "--temperature", "0.7", "--top-k", "40", "--top-p", "0.9",
        "--frequency-penalty", "0.5", "--presence-penalty", "-0.25", "--stop", "\n\n", "--stop", "END", "--seed", "7",
        "--system", "Answer briefly.", "--format", "llama2",
        "--example", "France => Paris", "-e", "Italy=>Rome", "--cot",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.stdout == "Tokyo.\n"
    assert server.body == {
        "messages": [{"role": "user", "content": "What is the capital of Japan?"}],
        "model": "my-model",
        "max_tokens": 32,
        "temperature": 0.7,
        "top_k": 40,
        "top_p": 0.9,
        "frequency_penalty": 0.5,
        "presence_penalty": -0.25,
        "stop": ["\n\n", "END"],
        "seed": 7,
        "preamble": "Answer briefly.",
        "chat_format": "llama2",
        "examples": [{"input": "France", "output": "Paris"}, {"input": "Italy", "output": "Rome"}],
        "chain_of_thought": True,
    }


def test_chat_defaults_stream_and_send_only_the_model():
    server = Server(sse_response)
    result = run(server, "chat", "hi", "--usage")
    assert result.exit_code == 0, result.output
    assert result.stdout == "Tokyo.\n"
    assert result.stderr == "usage: 7 prompt + 3 completion = 10 tokens (finish: stop)\n"
    assert server.body == {
        "messages": [{"role": "user", "content": "hi"}],
        "model": "smollm2-135m-instruct",
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def test_chat_reads_stdin_for_dash():
    server = Server(chat_response)
    assert run(server, "chat", "-", "--no-stream", input="from stdin\n").exit_code == 0
    assert server.body["messages"] == [{"role": "user", "content": "from stdin\n"}]


def test_complete_sends_prompt_and_sampling_flags():
    answer = {"choices": [{"text": " world", "finish_reason": "length"}], "usage": USAGE}
    server = Server(lambda request: httpx.Response(200, json=answer))
    result = run(server, "complete", "Hello", "--no-stream", "--max-tokens", "2", "--temperature", "0", "--seed", "1")
    assert result.exit_code == 0, result.output
    assert result.stdout == " world\n"
    assert server.requests[0].url.path == "/v1/completions"
    model = "smollm2-135m-instruct"
    assert server.body == {"prompt": "Hello", "model": model, "max_tokens": 2, "temperature": 0.0, "seed": 1}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("in=>out", {"input": "in", "output": "out"}),
        ("  2 + 2 =>  4 ", {"input": "2 + 2", "output": "4"}),
        ("a=>b=>c", {"input": "a", "output": "b=>c"}),
    ],
)
def test_parse_example(text: str, expected: dict):
    assert parse_example(text) == expected


@pytest.mark.parametrize("text", ["no arrow", "=>out", "in=>", " => "])
def test_bad_example_is_a_usage_error(text: str):
    server = Server(chat_response)
    result = run(server, "chat", "hi", "--example", text)
    assert result.exit_code == 2
    assert "input=>output" in result.output
    assert server.requests == []


def test_embed_prints_dimensions_and_vectors():
    rows = [{"index": 0, "embedding": [0.6, 0.8]}]
    data = {"object": "list", "model": "all-minilm-l6-v2", "data": rows, "usage": {"prompt_tokens": 2, "total_tokens": 2}}
    server = Server(lambda request: httpx.Response(200, json=data))
    result = run(server, "embed", "hello", "--truncate", "END", "--input-type", "search_query")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"model": "all-minilm-l6-v2", "dimensions": 2, "vectors": [[0.6, 0.8]]}
    assert server.body == {"input": ["hello"], "model": "all-minilm-l6-v2", "truncate": "END", "input_type": "search_query"}
    assert json.loads(run(server, "embed", "hello", "--json").stdout) == data


def test_tokenize_prints_ids_tokens_count():
    answer = {"model": "smollm2-135m-instruct", "ids": [19556, 905], "tokens": ["Hello", " wörld"], "count": 2}
    server = Server(lambda request: httpx.Response(200, json=answer))
    result = run(server, "tokenize", "Hello wörld")
    assert result.exit_code == 0, result.output
    assert result.stdout == 'ids:    [19556, 905]\ntokens: ["Hello", " wörld"]\ncount:  2\n'
    assert server.body == {"model": "smollm2-135m-instruct", "text": "Hello wörld"}


def test_models_table():
    listed = [
        {
            "id": "smollm2-135m-instruct",
            "capabilities": ["chat", "completion"],
            "context_length": 8192,
            "max_output_tokens": 4096,
            "dimensions": None,
        },
        {
            "id": "all-minilm-l6-v2",
            "capabilities": ["embedding"],
            "context_length": 512,
            "max_output_tokens": 0,
            "dimensions": 384,
        },
    ]
    assert format_models_table(listed).splitlines() == [
        "ID                     CAPABILITIES     CONTEXT  MAX OUTPUT  DIMS",
        "smollm2-135m-instruct  chat,completion  8192     4096        -",
        "all-minilm-l6-v2       embedding        512      -           384",
    ]
    server = Server(lambda request: httpx.Response(200, json={"object": "list", "data": listed}))
    result = run(server, "models")
    assert result.exit_code == 0 and result.stdout == format_models_table(listed) + "\n"


# --- CLI: errors -------------------------------------------------------------------------


def test_api_error_is_one_line_on_stderr_and_exit_1():
    server = Server(error_response(400, "temperature must be in [0, 2]", "temperature"))
    result = run(server, "chat", "hi", "--temperature", "3")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == "error: temperature must be in [0, 2] (param: temperature)\n"
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_unknown_model_and_missing_key_hints():
    result = run(Server(error_response(404, "model 'nope' not found", "model")), "embed", "x", "--model", "nope")
    assert (result.exit_code, result.stderr) == (1, "error: model 'nope' not found (param: model)\n")
    result = run(Server(error_response(401, "invalid API key", None)), "models")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: invalid API key\nhint: set ATELIER_API_KEY")


def test_render_error_with_retry_after():
    assert render_error(ApiError(503, "busy", retry_after=5)) == "error: busy (retry after 5s)"


def test_server_not_reachable_message():
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    state = State(transport=httpx.MockTransport(refuse))
    result = CliRunner().invoke(app, ["--url", "http://127.0.0.1:1", "chat", "hi"], obj=state)
    assert result.exit_code == 1
    assert "not reachable at http://127.0.0.1:1" in result.stderr
    assert "atelier serve" in result.stderr
    assert "Traceback" not in result.output
