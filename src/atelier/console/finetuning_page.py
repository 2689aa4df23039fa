"""The console's Fine-tuning page (Streamlit): jobs and their curves, evaluations and their reports.

Top: your fine-tuning jobs (newest first) as a table; the chosen one's state and its curves,
drawn from its metric events: training and validation loss, and validation token accuracy,
by step (a running job's curves grow at each refresh). Below: your evaluations; the chosen
one's report, the model's value of each metric next to its k-shot baseline's, and a few of
its answers next to their references. Every request goes through the client of the HTTP API;
an API error is shown as such.
"""

from __future__ import annotations

from typing import Any

import streamlit as st

from atelier.client.evaluations import report_rows
from atelier.console.actions import Connection
from atelier.console.calls import call

LOSSES = ("train_loss", "valid_loss")
ACCURACY = ("valid_token_accuracy",)


def curve_rows(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per step of the job's metric events (oldest first, one per step): ``step`` and each metric."""
    rows: dict[int, dict[str, Any]] = {}
    for event in events:
        data = event.get("data") or {}
        if event.get("type") == "metrics" and isinstance(data.get("step"), int):
            rows[data["step"]] = {"step": data["step"], **{k: data.get(k) for k in LOSSES + ACCURACY}}
    return [rows[step] for step in sorted(rows)]


def _number(value: Any) -> str:
    """A metric as the table shows it (4 significant digits; "-" when there is none)."""
    return "-" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def _chart(rows: list[dict[str, Any]], columns: tuple[str, ...], key: str) -> None:
    points = [{"step": r["step"], **{c: r[c] for c in columns if r.get(c) is not None}} for r in rows]
    points = [p for p in points if len(p) > 1]
    if points:
        with st.container(key=key):
            st.line_chart(points, x="step", y=[c for c in columns if any(c in p for p in points)])


def render(conn: Connection) -> None:
    """The whole page."""
    st.title("Fine-tuning")
    with conn.client() as client:
        jobs = call(client.fine_tuning.jobs.list, 50)
        evaluations = call(client.evaluations.list)
        if jobs is None or evaluations is None:
            return
        st.subheader("Jobs")
        if not jobs:
            st.info("No fine-tuning job yet: `atelier finetune --model MODEL --data train.jsonl --wait`.")
        else:
            with st.container(key="ft-jobs"):  # st.table: plain HTML (st.dataframe draws on a canvas)
                st.table([{"id": j["id"], "status": j["status"], "model": j["model"],
                           "method": (j.get("training_config") or {}).get("type"),
                           "custom model": j.get("fine_tuned_model")} for j in jobs], hide_index=True)
            chosen = st.selectbox("Job", [j["id"] for j in jobs], key="ft-job")
            job = next(j for j in jobs if j["id"] == chosen)
            st.caption(f"{job['id']} · {job['status']} · {job['model']}"
                       + (f" → {job['fine_tuned_model']}" if job.get("fine_tuned_model") else ""))
            events = call(client.fine_tuning.jobs.events, chosen, 1000) or []
            rows = curve_rows(events)
            if rows:
                with st.container(key="ft-curves"):
                    left, right = st.columns(2)
                    with left:
                        st.markdown("**Loss**")
                        _chart(rows, LOSSES, "ft-loss")
                    with right:
                        st.markdown("**Validation token accuracy**")
                        _chart(rows, ACCURACY, "ft-accuracy")
            else:
                st.info("No metrics yet.")
        st.subheader("Evaluations")
        if not evaluations:
            st.info("No evaluation yet: `atelier eval --model MODEL --data test.jsonl --k-shot 5 --examples "
                    "train.jsonl`.")
            return
        chosen = st.selectbox("Evaluation", [e["id"] for e in evaluations], key="ft-evaluation",
                              format_func=lambda i: next(f"{e['id']} · {e['model']} · {e['status']}"
                                                         for e in evaluations if e["id"] == i))
        evaluation = next(e for e in evaluations if e["id"] == chosen)
        report = evaluation.get("report")
        if not report:
            st.info(f"Evaluation {evaluation['status']}" + (f": {evaluation['error']}" if evaluation.get("error")
                                                             else "."))
            return
        with st.container(key="ft-report"):
            base = report.get("baseline")
            st.caption(f"{report['model']} on {report['n_examples']} examples"
                       + (f" · baseline: {base['model']} {base['k']}-shot" if base else ""))
            with st.container(key="ft-report-table"):
                st.table([{**row, "model": _number(row["model"]), "baseline": _number(row["baseline"])}
                          for row in report_rows(report)], hide_index=True)
            samples = report.get("metrics", {}).get("samples") or []
            if samples:
                st.markdown("**Answers**")
                with st.container(key="ft-samples"):
                    st.table(samples, hide_index=True)
