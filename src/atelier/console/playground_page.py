"""The console's Playground page (Streamlit): one message to a chat model, every control, the answer streamed.

Top: the model (the catalog's chat models, then your endpoints and custom models, as
``GET /v1/models`` lists them). The form: the message, a system prompt, k-shot examples,
chain of thought, a JSON Schema for the answer, tools and ``tool_choice`` (left); every
sampling control (middle); stop sequences, seed and log probabilities (right). *Send*
streams the answer, then shows its token counts, finish reason, tool calls and, when asked,
a table of the likeliest tokens at each position; *View code* shows the same request as
``openai`` Python code and as ``curl``. A field that cannot make a request (invalid JSON...)
is an error before anything is sent; an API error is shown with its status. Model text is
shown literally (escaped). The form's values become a request in ``playground``; the request
is sent by ``actions.stream_chat``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import streamlit as st

from atelier.client import ApiError, ServerUnreachable
from atelier.console import actions, playground
from atelier.console.actions import Connection
from atelier.console.calls import call
from atelier.console.playground import PlaygroundForm, StreamedAnswer

DEFAULT_MAX_TOKENS = 256  # a small CPU model writes ~15-30 tokens/s
MOST_MAX_TOKENS = 32_768  # the widget's bound; the server checks the model's own limit (400 naming max_tokens)
MOST_TABLES = 256  # log-probability tables shown (one per generated token)
TABLES_PER_ROW = 3
CURSOR = " ▌"


@dataclass(frozen=True)
class Exchange:
    """A sent request and what came back (kept across reruns)."""

    body: dict[str, Any]
    answer: StreamedAnswer
    error: str | None
    seconds: float


def render(conn: Connection) -> None:
    """The whole page."""
    st.title("Playground")
    with conn.client() as client:
        models = call(actions.chat_models, client)
    if models is None:
        return
    if not models:
        st.info("The server offers no chat model.")
        return
    by_id = {m.id: m for m in models}
    if st.session_state.get("pg_model") not in by_id:
        st.session_state.pop("pg_model", None)
    model = by_id[st.selectbox("Model", list(by_id), format_func=lambda i: by_id[i].label, key="pg_model")]
    form, sent, code_asked = request_form(model)
    body = None
    if sent or code_asked:
        try:
            body = playground.build_request(form)
        except playground.FormError as exc:
            st.error(str(exc), icon=":material/error:")
    if body is not None and (code_asked or "pg_code" in st.session_state):
        st.session_state["pg_code"] = body  # an open code view follows what was sent last
    with st.container(key="pg-answer"):
        if (sent and body is not None) or "pg_exchange" in st.session_state:
            st.subheader("Answer")
        slot = st.empty()
        if sent and body is not None:
            st.session_state.pop("pg_exchange", None)  # gone if a rerun interrupts the stream
            st.session_state["pg_exchange"] = send(conn, body, slot)
        exchange = st.session_state.get("pg_exchange")
        if exchange is not None:
            show_exchange(exchange, slot)
    if "pg_code" in st.session_state:
        show_code(st.session_state["pg_code"], conn.url)


def request_form(model: actions.ChatModel) -> tuple[PlaygroundForm, bool, bool]:
    """The form; its values, and whether *Send* or *View code* was pressed."""
    limit = f"up to {model.max_output_tokens} for this model" if model.max_output_tokens else "the model's limit applies"
    with st.form("playground"):
        text, sampling, more = st.columns([5, 2, 2], gap="large")
        with text:
            message = st.text_area("Message", placeholder="Ask the model something…", key="pg_message")
            system = st.text_area("System prompt", placeholder="(optional) who the model is, how it answers",
                                  key="pg_system", height=80, help="Sent as `preamble`: it replaces any system "
                                  "message.")
            with st.expander("Examples (k-shot)"):
                rows = st.data_editor([{"input": "", "output": ""}], num_rows="dynamic", hide_index=True,
                                      key="pg_examples", width="stretch",
                                      column_config={"input": st.column_config.TextColumn("Input"),
                                                     "output": st.column_config.TextColumn("Output")})
            cot = st.checkbox("Chain of thought", key="pg_cot", help="Ask for step-by-step reasoning first.")
            schema = st.text_area("JSON Schema", key="pg_schema", height=100,
                                  placeholder='{"type": "object", "properties": {"city": {"type": "string"}}}',
                                  help="The answer is JSON matching this schema; empty for free text.")
            tools = st.text_area("Tools", key="pg_tools", height=100,
                                 placeholder='[{"type": "function", "function": {"name": "get_weather", '
                                             '"parameters": {"type": "object", "properties": {}}}}]',
                                 help="A JSON list of OpenAI tool definitions; empty for none.")
            tool_choice = st.radio("Tool choice", playground.TOOL_CHOICES, horizontal=True, key="pg_tool_choice",
                                   help="Sent with tools only.")
        with sampling:
            max_tokens = st.number_input("Max tokens", 1, MOST_MAX_TOKENS, DEFAULT_MAX_TOKENS, key="pg_max_tokens",
                                         help=limit)
            temperature = st.number_input("Temperature", 0.0, 2.0, 1.0, 0.1, key="pg_temperature",
                                          help="0 is greedy: the same answer every time.")
            top_k = st.number_input("Top k", 0, 100_000, 0, key="pg_top_k", help="Keep the k likeliest tokens; 0 "
                                    "keeps all.")
            top_p = st.number_input("Top p", 0.01, 1.0, 1.0, 0.05, key="pg_top_p")
            frequency = st.number_input("Frequency penalty", -2.0, 2.0, 0.0, 0.1, key="pg_frequency")
            presence = st.number_input("Presence penalty", -2.0, 2.0, 0.0, 0.1, key="pg_presence")
            repetition = st.number_input("Repetition penalty", 0.01, 2.0, 1.0, 0.05, key="pg_repetition",
                                         help="Above 1 discourages tokens already in the prompt or the answer.")
        with more:
            stop = st.text_area("Stop sequences", key="pg_stop", height=100,
                                help=f"One per line, at most {playground.MAX_STOP_SEQUENCES}.")
            seed = st.number_input("Seed", 0, 2**53 - 1, None, key="pg_seed", placeholder="random",
                                   help="The same seed and settings give the same answer.")
            logprobs = st.checkbox("Show log probabilities", key="pg_logprobs")
            top_logprobs = st.number_input("Top log probabilities (k)", 1, playground.MAX_TOP_LOGPROBS, 5,
                                           key="pg_top_logprobs", help="Tokens shown at each position.")
        send_button, code_button, _ = st.columns([1, 1, 6])
        sent = send_button.form_submit_button("Send", type="primary", width="stretch")
        code_asked = code_button.form_submit_button("View code", width="stretch")
    form = PlaygroundForm(
        model=model.id, message=message, max_tokens=int(max_tokens), temperature=temperature, top_k=int(top_k),
        top_p=top_p, frequency_penalty=frequency, presence_penalty=presence, repetition_penalty=repetition,
        stop=stop, seed=None if seed is None else int(seed), system_prompt=system, examples=tuple(rows or ()),
        chain_of_thought=cot, json_schema=schema, tools=tools, tool_choice=tool_choice, logprobs=logprobs,
        top_logprobs=int(top_logprobs),
    )  # fmt: skip
    return form, sent, code_asked


def send(conn: Connection, body: dict[str, Any], slot: Any) -> Exchange:
    """Send ``body``, showing the answer in ``slot`` as it streams."""
    answer = StreamedAnswer()
    error = None
    started = time.monotonic()
    slot.caption("Waiting for the first token…")
    try:
        with conn.client() as client:
            for added, answer in actions.stream_chat(client, body):
                if added:
                    slot.markdown(actions.escape_markdown(answer.text) + CURSOR)
    except (ApiError, ServerUnreachable) as exc:
        error = actions.describe_error(exc)
    return Exchange(body, answer, error, time.monotonic() - started)


def show_exchange(exchange: Exchange, slot: Any) -> None:
    """The answer (in ``slot``), its counts, its tool calls and its log probabilities."""
    answer = exchange.answer
    with slot.container(key="pg-answer-text"):
        if answer.text:
            st.markdown(actions.escape_markdown(answer.text))
        elif not exchange.error and not answer.calls:
            st.caption("(empty answer)")
    if exchange.error:
        st.error(exchange.error, icon=":material/error:")
    if answer.chunks:
        with st.container(key="pg-usage"):
            model = f" — model {answer.model}" if answer.model else ""
            st.caption(actions.escape_markdown(f"{answer.summary} in {exchange.seconds:.1f} s{model}"))
    if "response_format" in exchange.body and answer.text and not exchange.error:
        try:
            json.loads(answer.text)
        except json.JSONDecodeError:
            st.warning("The answer is not valid JSON" + (" (it was cut at max tokens)."
                                                         if answer.finish_reason == "length" else "."))
    if answer.calls:
        show_tool_calls(answer.tool_calls)
    if exchange.body.get("logprobs") and answer.chunks:
        show_logprobs(answer.tokens)


def show_tool_calls(calls: list[playground.ToolCall]) -> None:
    """Each call: the function's name, its id and its arguments (JSON, indented)."""
    with st.container(key="pg-tool-calls"):
        st.subheader("Tool calls")
        for call in calls:
            st.markdown(f"**{actions.escape_markdown(call.name)}** · {actions.escape_markdown(call.id)}")
            st.code(call.pretty_arguments, language="json")


def show_logprobs(tokens: list[playground.TokenLogprob]) -> None:
    """A table per generated token: the likeliest tokens at its position, the chosen one marked."""
    with st.container(key="pg-logprobs"):
        st.subheader("Log probabilities")
        if not tokens:
            st.info("The server sent no log probabilities for this answer.")
            return
        shown = tokens[:MOST_TABLES]
        more = f"; the first {MOST_TABLES} are shown" if len(tokens) > MOST_TABLES else ""
        st.caption(f"{len(tokens)} generated tokens{more}. ␣ is a space, ↵ a line break.")
        for start in range(0, len(shown), TABLES_PER_ROW):
            row = enumerate(shown[start:start + TABLES_PER_ROW], start=start + 1)
            for column, (number, token) in zip(st.columns(TABLES_PER_ROW), row):
                with column:
                    st.markdown(f"**{number}.** {actions.escape_markdown(token.label)}")
                    cells = [{actions.escape_markdown(k): actions.escape_markdown(v) for k, v in line.items()}
                             for line in token.rows()]
                    if cells:
                        st.table(cells, hide_index=True)  # cells are Markdown: escaped


def show_code(body: dict[str, Any], url: str) -> None:
    """The request as ``openai`` Python code and as ``curl`` (the key is ``$ATELIER_API_KEY``)."""
    with st.container(key="pg-code"):
        head, close = st.columns([6, 1])
        head.subheader("Code")
        if close.button("Hide code", key="pg_hide_code"):
            st.session_state.pop("pg_code", None)
            st.rerun()
        st.caption("The same request; set ATELIER\\_API\\_KEY to your key first.")
        st.markdown("**Python** (openai)")
        st.code(actions.python_code(body, url), language="python")
        st.markdown("**curl**")
        st.code(actions.curl_command(body, url), language="bash")
