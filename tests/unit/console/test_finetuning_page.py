"""The Fine-tuning page's data: curves from metric events, report rows next to the baseline."""

from __future__ import annotations

from atelier.client.evaluations import report_rows
from atelier.console.finetuning_page import curve_rows


def test_curves_have_one_row_per_step_oldest_first():
    events = [  # as the API lists them: newest first; a resumed job may repeat a step
        {"type": "metrics", "data": {"step": 2, "train_loss": 1.5, "valid_loss": None, "valid_token_accuracy": None}},
        {"type": "message", "data": {"state": "running"}},
        {"type": "metrics", "data": {"step": 1, "train_loss": 2.0, "valid_loss": 2.1, "valid_token_accuracy": 0.3}},
        {"type": "metrics", "data": {"step": 1, "train_loss": 2.0, "valid_loss": 2.1, "valid_token_accuracy": 0.3}},
    ]
    rows = curve_rows(events)
    assert [r["step"] for r in rows] == [1, 2]
    assert rows[0] == {"step": 1, "train_loss": 2.0, "valid_loss": 2.1, "valid_token_accuracy": 0.3}


def test_report_rows_put_the_baseline_beside_the_model():
    report = {"metrics": {"loss": 0.1, "accuracy": 1.0, "samples": []},
              "baseline": {"k": 3, "model": "base", "metrics": {"loss": 2.0, "accuracy": 0.5, "bleu": 3.0}}}
    assert report_rows(report) == [{"metric": "loss", "model": 0.1, "baseline": 2.0},
                                   {"metric": "accuracy", "model": 1.0, "baseline": 0.5},
                                   {"metric": "bleu", "model": None, "baseline": 3.0}]
    assert report_rows({"metrics": {"loss": 1.0}}) == [{"metric": "loss", "model": 1.0, "baseline": None}]
