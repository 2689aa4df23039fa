"""The Playground page under Streamlit's ``AppTest``, against a fake API that records what it is sent.

The fake answers ``GET /v1/models`` and streams ``POST /v1/chat/completions`` as the real
API does (a role chunk, text with log probabilities, a tool call, the finish, the usage); its
text tries to format the page. The page must send exactly the request of its form, show the
model's text literally, show form errors before any request and API errors with their status.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from streamlit.testing.v1 import AppTest

from atelier.console.actions import escape_markdown

HOSTILE = "**Tokyo** [click](http://evil.example) ![x](http://evil.example/i.png) <b>bold</b>"
SECRET_KEY = "sk-playground-secret-key"


class FakeApi(BaseHTTPRequestHandler):
    """``/v1/models`` and a streamed ``/v1/chat/completions``; bodies received go to ``server.received``."""

    def log_message(self, *args) -> None:
        pass

    def _json(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        card = {"object": "model", "created": 0, "owned_by": "t", "context_length": 8192, "dimensions": 0}
        self._json(200, {"object": "list", "data": [
            {**card, "id": "smollm2-135m-instruct", "capabilities": ["chat", "completion"], "max_output_tokens": 4096},
            {**card, "id": "all-minilm-l6-v2", "capabilities": ["embedding"], "max_output_tokens": 0},
            {**card, "id": "ep_mine", "capabilities": ["chat", "completion"], "max_output_tokens": 4096},
        ]})  # fmt: skip

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.received.append(body)
        if body["max_tokens"] > 4096:
            self._json(400, {"error": {"message": "max_tokens is too large: 5000.", "type": "invalid_request_error",
                                       "param": "max_tokens", "code": "invalid_value"}})
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        for chunk in self._chunks(body):
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
        self.wfile.write(b"data: [DONE]\n\n")

    @staticmethod
    def _chunks(body: dict) -> Iterator[dict]:
        def chunk(delta=None, finish=None, logprobs=None, usage=None):
            choices = [] if usage else [{"index": 0, "delta": delta or {}, "finish_reason": finish, "logprobs": logprobs}]
            return {"object": "chat.completion.chunk", "model": body["model"], "choices": choices, "usage": usage}

        yield chunk({"role": "assistant", "content": ""})
        for piece in HOSTILE.split(" "):
            top = [{"token": piece, "logprob": -0.1}, {"token": "|x|", "logprob": -2.5}][: body.get("top_logprobs", 0)]
            logprobs = {"content": [{"token": piece, "logprob": -0.1, "top_logprobs": top}]} if body.get("logprobs") \
                else None
            yield chunk({"content": piece + " "}, logprobs=logprobs)
        if body.get("tools"):
            yield chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                         "function": {"name": "get_weather", "arguments": '{"city": "Tokyo"}'}}]})
        yield chunk(finish="tool_calls" if body.get("tools") else "stop")
        yield chunk(usage={"prompt_tokens": 9, "completion_tokens": 5, "total_tokens": 14})


@pytest.fixture
def api() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeApi)
    server.received = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def playground_script(url: str, key: str) -> None:
    from atelier.console import playground_page
    from atelier.console.actions import Connection

    playground_page.render(Connection(url, key, "sidebar"))


def page(api: ThreadingHTTPServer) -> AppTest:
    url = f"http://127.0.0.1:{api.server_address[1]}"
    return AppTest.from_function(playground_script, args=(url, SECRET_KEY), default_timeout=30).run()


def press(at: AppTest, label: str) -> AppTest:
    return next(b for b in at.button if b.label == label).click().run()


def everything_on_screen(at: AppTest) -> str:
    parts = [e.value for e in (*at.markdown, *at.caption, *at.error, *at.code)]
    return "\n".join(str(p) for p in parts)


def test_the_page_sends_its_form_and_shows_the_streamed_answer_literally(api):
    at = page(api)
    assert at.selectbox(key="pg_model").options == ["smollm2-135m-instruct", "ep_mine (endpoint)"]
    at.text_area(key="pg_message").input("What is the capital of Japan?")
    at.number_input(key="pg_max_tokens").set_value(16)
    at.number_input(key="pg_temperature").set_value(0.0)
    at.checkbox(key="pg_logprobs").check()
    at.number_input(key="pg_top_logprobs").set_value(2)
    at.text_area(key="pg_tools").input('[{"type": "function", "function": {"name": "get_weather"}}]')
    at = press(at, "Send")
    assert not at.exception, at.exception
    assert api.received == [{
        "model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "What is the capital of Japan?"}],
        "max_tokens": 16, "temperature": 0.0, "top_p": 1.0, "frequency_penalty": 0.0, "presence_penalty": 0.0,
        "tools": [{"type": "function", "function": {"name": "get_weather"}}], "tool_choice": "auto",
        "logprobs": True, "top_logprobs": 2, "stream": True, "stream_options": {"include_usage": True},
    }]  # fmt: skip
    answer = next(m.value for m in at.markdown if "Tokyo" in m.value)
    assert answer.strip() == escape_markdown(HOSTILE)  # shown literally: no bold, link, image or HTML
    shown = everything_on_screen(at)
    assert escape_markdown("Tokens: prompt 9 · completion 5 · total 14 — finish reason: tool_calls") in shown
    assert '{\n  "city": "Tokyo"\n}' in shown  # the tool call's arguments
    assert len(at.table) == len(HOSTILE.split(" "))  # one table per generated token
    assert SECRET_KEY not in shown


def test_a_form_error_is_shown_and_nothing_is_sent(api):
    at = page(api)
    at.text_area(key="pg_message").input("Hi")
    at.text_area(key="pg_schema").input('{"type": "object",')
    at = press(at, "Send")
    assert [e.value for e in at.error] == [
        "JSON Schema: not valid JSON (line 1, column 19: Expecting property name enclosed in double quotes)"]
    assert api.received == []


def test_view_code_shows_the_request_without_sending_it_and_without_the_key(api):
    at = page(api)
    at.text_area(key="pg_message").input("Hi")
    at.number_input(key="pg_top_k").set_value(40)
    at = press(at, "View code")
    python, curl = (c.value for c in at.code)
    assert "extra_body={\"top_k\": 40}," in python and "from openai import OpenAI" in python
    assert curl.startswith("curl -N http://127.0.0.1:") and '"top_k": 40' in curl
    assert SECRET_KEY not in python + curl and "$ATELIER_API_KEY" in curl
    assert api.received == []


def test_an_api_error_is_shown_with_its_status(api):
    at = page(api)
    at.text_area(key="pg_message").input("Hi")
    at.number_input(key="pg_max_tokens").set_value(5000)
    at = press(at, "Send")
    expected = "Invalid request (HTTP 400): max_tokens is too large: 5000. (param: max_tokens)"
    assert [e.value for e in at.error] == [expected]
