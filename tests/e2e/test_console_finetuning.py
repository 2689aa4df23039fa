"""The console's Fine-tuning page in a real browser: a job's curves and an evaluation's report.

Through the API (as a user's script would): a LoRA job on the bundled model teaches it to
answer one letter, then an evaluation scores the custom model against its base prompted
2-shot. In the browser: open Fine-tuning, see the job in the table with its loss and
accuracy charts, pick the evaluation and see its report (the model's accuracy next to the
baseline's) and its answers. A screenshot of each step lands in the test's tmp dir.
"""

from __future__ import annotations

import json
import time

import httpx
import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

MODEL = "smollm2-135m-instruct"
PROMPTS = [f"Say {w}" for w in ("red", "blue", "green", "gold", "pink", "gray", "teal", "navy", "lime", "plum",
                                 "rose", "sand", "mint", "ruby", "jade", "opal")]
CONFIG = {"type": "lora", "total_training_epochs": 2, "training_batch_size": 8, "learning_rate": 0.003,
          "log_model_metrics_interval_in_steps": 1, "validation_split": 0.25, "early_stopping_patience": 0}


def _upload(http: httpx.Client, rows: list[dict]) -> str:
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    response = http.post("/v1/files", files={"file": ("data.jsonl", data)}, data={"purpose": "fine-tune"})
    response.raise_for_status()
    return response.json()["id"]


def _wait(http: httpx.Client, path: str) -> dict:
    deadline = time.monotonic() + 900
    while (found := http.get(path).json())["status"] not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, found
        time.sleep(1.0)
    assert found["status"] == "succeeded", found
    return found


def test_fine_tuning_page_shows_curves_and_an_evaluation_report(page, screenshots, e2e_server, admin_key):
    from playwright.sync_api import expect

    with httpx.Client(base_url=e2e_server, headers={"Authorization": f"Bearer {admin_key}"}, timeout=120) as http:
        train = _upload(http, [{"prompt": p, "completion": "Q"} for p in PROMPTS])
        job = http.post("/v1/fine_tuning/jobs", json={"model": MODEL, "training_file": train,
                                                       "training_config": CONFIG}).json()
        job = _wait(http, f"/v1/fine_tuning/jobs/{job['id']}")
        test = _upload(http, [{"prompt": p, "completion": "Q"} for p in ("Name a fruit", "Pick a city")])
        evaluation = http.post("/v1/evaluations", json={"model": job["fine_tuned_model"], "test_file": test,
                                                        "max_tokens": 4, "k_shot": {"k": 2, "file": train}}).json()
        evaluation = _wait(http, f"/v1/evaluations/{evaluation['id']}")

    page.get_by_role("link", name="Fine-tuning").click()
    expect(page.get_by_role("heading", name="Fine-tuning")).to_be_visible()
    expect(page.locator(".st-key-ft-jobs").first).to_contain_text(job["id"])
    expect(page.locator(".st-key-ft-loss").first).to_be_visible()  # the loss chart of the newest job (ours)
    expect(page.locator(".st-key-ft-accuracy").first).to_be_visible()
    page.screenshot(path=str(screenshots / "1-curves.png"), full_page=True)

    report = page.locator(".st-key-ft-report").first
    expect(report).to_contain_text("2-shot", timeout=60_000)
    table = page.locator(".st-key-ft-report-table").first
    expect(table).to_contain_text("accuracy")
    expect(table).to_contain_text("rouge_l")
    expect(page.locator(".st-key-ft-samples").first).to_contain_text("Q")
    page.screenshot(path=str(screenshots / "2-report.png"), full_page=True)
    assert evaluation["report"]["metrics"]["accuracy"] >= 0  # the report the page shows is the API's
