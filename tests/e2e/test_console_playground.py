"""The console's Playground in a real browser, on a real server and the bundled chat model.

A person's path: open the Playground, pick ``smollm2-135m-instruct``, set temperature 0
and 16 max tokens, send a question and see the answer streamed with its token counts;
turn on log probabilities and see a table per generated token; view the request as Python
and curl (the key never in it); type an invalid JSON Schema and see the error before any
request; ask for more tokens than the model allows and see the API's 400; then a JSON
Schema makes the answer JSON with a ``city``. A screenshot of each step lands in the
test's tmp dir.

Streamlit may show the previous run's block beside the new one for a moment while a rerun
replaces it: every wait is for an element that only the new run shows, and takes the first.
"""

from __future__ import annotations

import json
import re
import time

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

MODEL = "smollm2-135m-instruct"
QUESTION = "What is the capital of Japan?"
CITY_SCHEMA = '{"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}}, "required": ["city"]}'
ANSWER_TIMEOUT_MS = 300_000
USAGE = re.compile(r"Tokens: prompt (\d+) · completion (\d+) · total (\d+) — finish reason: (\w+) — "
                   r"streamed in (\d+) chunks")


def test_playground_streams_an_answer_with_its_counts_log_probabilities_and_code(page, screenshots, admin_key):
    from playwright.sync_api import expect

    started = time.monotonic()
    page.get_by_role("link", name="Playground").click()
    expect(page.get_by_role("heading", name="Playground")).to_be_visible()
    send = page.get_by_role("button", name="Send")
    expect(send).to_be_visible()

    # The bundled model, greedy, 16 tokens at most.
    page.get_by_label("Model").click()
    page.get_by_role("option", name=MODEL).click()
    expect(page.get_by_role("combobox", name="Model")).to_have_value(MODEL)
    page.get_by_label("Message").fill(QUESTION)
    page.get_by_label("Max tokens", exact=True).fill("16")
    page.get_by_label("Temperature", exact=True).fill("0")
    send.click()
    usage = page.locator(".st-key-pg-usage").first
    expect(usage).to_contain_text("finish reason", timeout=ANSWER_TIMEOUT_MS)
    found = USAGE.search(usage.inner_text())
    assert found, usage.inner_text()
    prompt, completion, total, finish, chunks = found.groups()
    assert int(prompt) > 0 and 0 < int(completion) <= 16 and int(total) == int(prompt) + int(completion)
    assert finish in ("stop", "length")
    assert int(chunks) > int(completion) // 2 + 1, "the answer came in one piece, not streamed"
    answer = page.locator(".st-key-pg-answer-text").first
    expect(answer).to_have_text(re.compile(r"\w"))
    page.screenshot(path=str(screenshots / "1-answer.png"), full_page=True)

    # Log probabilities: a table of the 3 likeliest tokens for each generated token.
    page.get_by_text("Show log probabilities", exact=True).click()
    expect(page.get_by_label("Show log probabilities")).to_be_checked()
    page.get_by_label("Top log probabilities (k)", exact=True).fill("3")
    send.click()
    logprobs = page.locator(".st-key-pg-logprobs").first
    expect(logprobs).to_contain_text("generated tokens", timeout=ANSWER_TIMEOUT_MS)
    tables = logprobs.locator("table")
    expect(tables.first).to_contain_text("probability")
    assert tables.count() >= 1
    expect(tables.first.locator("tbody tr")).to_have_count(3)
    expect(logprobs).to_contain_text(re.compile(r"1\. .+ · logprob -?\d+\.\d{4} · \d+\.\d\d %"))
    page.screenshot(path=str(screenshots / "2-logprobs.png"), full_page=True)

    # The same request as code: the openai client and curl, the key as $ATELIER_API_KEY.
    page.get_by_role("button", name="View code").click()
    code = page.locator(".st-key-pg-code").first
    expect(code).to_contain_text("from openai import OpenAI")
    expect(code).to_contain_text("top_logprobs=3")
    expect(code).to_contain_text("curl -N ")
    expect(code).to_contain_text('"Authorization: Bearer $ATELIER_API_KEY"')
    assert admin_key not in code.inner_text()
    code.scroll_into_view_if_needed()
    page.screenshot(path=str(screenshots / "3-code.png"), full_page=True)

    # An invalid JSON Schema is an error before any request.
    schema = page.get_by_label("JSON Schema", exact=True)
    schema.fill('{"type": "object",')
    send.click()
    expect(page.get_by_text("JSON Schema: not valid JSON (line 1").first).to_be_visible()

    # An API error shows its status: more tokens than the model allows.
    schema.fill("")
    page.get_by_label("Max tokens", exact=True).fill("5000")
    send.click()
    expect(page.get_by_text(re.compile(r"Invalid request \(HTTP 400\): .*max_tokens")).first).to_be_visible(
        timeout=ANSWER_TIMEOUT_MS)
    page.screenshot(path=str(screenshots / "4-errors.png"), full_page=True)

    # A JSON Schema: the answer is JSON with a city.
    schema.fill(CITY_SCHEMA)
    page.get_by_label("Max tokens", exact=True).fill("64")
    send.click()
    answer = page.locator(".st-key-pg-answer-text").filter(has_text='"city"').first
    expect(answer).to_be_visible(timeout=ANSWER_TIMEOUT_MS)
    value = json.loads(answer.inner_text())
    assert isinstance(value, dict) and isinstance(value.get("city"), str) and value["city"], value
    page.screenshot(path=str(screenshots / "5-json.png"), full_page=True)
    print(f"\nplayground e2e: {time.monotonic() - started:.1f} s in the browser; screenshots in {screenshots}")
