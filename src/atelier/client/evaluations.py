"""``client.evaluations``: a model scored on a test file (with a k-shot baseline of its base), as a job."""

from __future__ import annotations

from typing import Any

from atelier.client.base import Collection, drop_none


def report_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """An evaluation report as rows ``{"metric", "model", "baseline"}`` (baseline None without one), model's order."""
    mine = report.get("metrics", {})
    base = (report.get("baseline") or {}).get("metrics", {})
    names = [n for n in mine if n != "samples"] + [n for n in base if n not in mine and n != "samples"]
    return [{"metric": n, "model": mine.get(n), "baseline": base.get(n)} for n in names]


class Evaluations(Collection):
    """``/v1/evaluations``: create, list, get and cancel evaluations; read their events."""

    path = "/v1/evaluations"

    def create(self, model: str, test_file: str, *, metrics: list[str] | None = None, labels: list[str] | None = None,
               max_tokens: int | None = None, k_shot: dict[str, Any] | None = None) -> dict[str, Any]:
        """``POST /v1/evaluations``.

        Args:
            model: A base model, custom model (``cm_…``) or endpoint (``ep_…``).
            test_file: The uploaded test file's id (``fine-tune`` purpose).
            metrics: Default: the server's (likelihood and generation metrics).
            labels: The label set of classification answers; default inferred.
            max_tokens: Longest generated answer.
            k_shot: ``{"k", "file", "seed"}``: the base model prompted with k examples of that file.

        Returns:
            The evaluation (``queued``).
        """
        body = drop_none({"model": model, "test_file": test_file, "metrics": metrics, "labels": labels,
                          "max_tokens": max_tokens, "k_shot": k_shot})
        return self._http.send("POST", self.path, json=body).json()

    def cancel(self, evaluation_id: str) -> dict[str, Any]:
        """``POST /v1/evaluations/{id}/cancel``: the evaluation."""
        return self._http.request("POST", self.item(evaluation_id, "cancel"))

    def events(self, evaluation_id: str, limit: int = 1000) -> list[dict[str, Any]]:
        """``GET /v1/evaluations/{id}/events``: oldest first."""
        return self._http.get_list(self.item(evaluation_id, "events"), {"limit": limit})
