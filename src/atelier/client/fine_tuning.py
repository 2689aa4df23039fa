"""``client.fine_tuning.jobs`` and ``client.custom_models``: fine-tuning jobs and the models they make.

A job is created from an uploaded training file and a ``training_config`` (OCI's names, the
server validates them); its events carry the live metrics; a succeeded job leaves a custom
model whose packed PEFT adapter can be downloaded. One HTTP call per method.
"""

from __future__ import annotations

from typing import Any

from atelier.client.base import Collection, HttpCore, drop_none


class FineTuningJobs(Collection):
    """``/v1/fine_tuning/jobs``: create, list, get and cancel jobs; read their events and checkpoints."""

    path = "/v1/fine_tuning/jobs"

    def create(
        self, model: str, training_file: str, *, validation_file: str | None = None, suffix: str | None = None,
        training_config: dict[str, Any] | None = None, idempotency_key: str | None = None,
        cluster_id: str | None = None,
    ) -> dict[str, Any]:
        """``POST /v1/fine_tuning/jobs``.

        Args:
            model: The base chat model.
            training_file: The uploaded training file's id.
            validation_file: An uploaded held-out file's id.
            suffix: Added to the custom model's name.
            training_config: Hyperparameters (OCI's names); unset ones are the server's defaults.
            idempotency_key: Sent as ``Idempotency-Key``: a retried request makes one job.
            cluster_id: The fine-tuning cluster; default any of the model with free units.

        Returns:
            The job (``queued``, or ``failed`` with every problem of the file).
        """
        body = drop_none({"model": model, "training_file": training_file, "validation_file": validation_file,
                          "suffix": suffix, "training_config": training_config, "cluster_id": cluster_id})
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        return self._http.send("POST", self.path, json=body, headers=headers).json()

    def cancel(self, job_id: str) -> dict[str, Any]:
        """``POST /v1/fine_tuning/jobs/{id}/cancel``: the job."""
        return self._http.request("POST", self.item(job_id, "cancel"))

    def events(self, job_id: str, limit: int = 1000) -> list[dict[str, Any]]:
        """``GET /v1/fine_tuning/jobs/{id}/events``: newest first."""
        return self._http.get_list(self.item(job_id, "events"), {"limit": limit})

    def checkpoints(self, job_id: str) -> list[dict[str, Any]]:
        """``GET /v1/fine_tuning/jobs/{id}/checkpoints``: newest step first."""
        return self._http.get_list(self.item(job_id, "checkpoints"), {"limit": 100})

    def tensorboard(self, job_id: str) -> bytes:
        """``GET /v1/fine_tuning/jobs/{id}/tensorboard``: a ``.tar.gz`` of the run's TensorBoard event files."""
        return self._http.send("GET", self.item(job_id, "tensorboard")).content

    def list(self, limit: int = 20) -> list[dict[str, Any]]:
        """``GET /v1/fine_tuning/jobs``: your newest jobs, newest first."""
        return self._http.get_list(self.path, {"limit": limit})


class FineTuning:
    """``client.fine_tuning``: its ``jobs`` (as in OpenAI's client)."""

    def __init__(self, http: HttpCore):
        self.jobs = FineTuningJobs(http)


class CustomModels(Collection):
    """``/v1/custom-models``: the models fine-tuning made; list, get, delete, download the adapter."""

    path = "/v1/custom-models"

    def adapter(self, model_id: str) -> bytes:
        """``GET /v1/custom-models/{id}/adapter``: the packed PEFT adapter (a tar)."""
        return self._http.send("GET", self.item(model_id, "adapter")).content

