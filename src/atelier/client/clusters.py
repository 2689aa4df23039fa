"""Dedicated capacity in the API client: ``client.clusters``, ``client.endpoints``, ``client.costs``.

Clusters reserve units of a base model for fine-tuning or hosting; endpoints serve a base or
custom model on a hosting cluster; costs are estimated and metered by the server (amounts
arrive as strings, exact decimals). One HTTP call per method.
"""

from __future__ import annotations

from typing import Any

from atelier.client.base import Collection, Resource, drop_none


def _deleted_too(include_deleted: bool) -> str | None:
    return "true" if include_deleted else None


class Clusters(Collection):
    """``/v1/clusters``: create, list, get, update (resize) and delete dedicated AI clusters."""

    path = "/v1/clusters"

    def create(
        self, name: str, type: str, unit_type: str, unit_count: int, base_model: str, *,
        compartment: str | None = None, description: str | None = None,
    ) -> dict[str, Any]:
        """``POST /v1/clusters``.

        Args:
            name: Unique among your clusters.
            type: ``fine-tuning`` or ``hosting``.
            unit_type: The model's unit type (``small``...).
            unit_count: Units to reserve.
            base_model: The base model it serves.
            compartment: Compartment id or path; default the root.
            description: Free text.

        Returns:
            The cluster (``active``: local provisioning is instant).
        """
        body = {"name": name, "type": type, "unit_type": unit_type, "unit_count": unit_count,
                "base_model": base_model, "compartment": compartment, "description": description}
        return self._http.request("POST", self.path, drop_none(body))

    def update(self, cluster_id: str, *, name: str | None = None, unit_count: int | None = None,
               description: str | None = None) -> dict[str, Any]:
        """``PATCH /v1/clusters/{id}``: rename, describe, grow or shrink."""
        return self._patch(cluster_id, name=name, unit_count=unit_count, description=description)

    def list(self, include_deleted: bool = False) -> list[dict[str, Any]]:
        """``GET /v1/clusters``: your clusters, oldest first (``include_deleted``: deleted ones too)."""
        return self._http.get_list(self.path, {"include_deleted": _deleted_too(include_deleted)})


class Endpoints(Collection):
    """``/v1/endpoints``: create, list, get, update and delete endpoints on hosting clusters."""

    path = "/v1/endpoints"

    def create(self, name: str, cluster_id: str, model: str, *, compartment: str | None = None,
               description: str | None = None) -> dict[str, Any]:
        """``POST /v1/endpoints``: serve the cluster's base model or a custom model of it."""
        body = {"name": name, "cluster_id": cluster_id, "model": model, "compartment": compartment,
                "description": description}
        return self._http.request("POST", self.path, drop_none(body))

    def update(self, endpoint_id: str, *, name: str | None = None, description: str | None = None) -> dict[str, Any]:
        """``PATCH /v1/endpoints/{id}``: rename or describe."""
        return self._patch(endpoint_id, name=name, description=description)

    def list(self, cluster_id: str | None = None, include_deleted: bool = False) -> list[dict[str, Any]]:
        """``GET /v1/endpoints``: your endpoints (of one cluster, if given), oldest first."""
        return self._http.get_list(self.path, {"cluster_id": cluster_id,
                                               "include_deleted": _deleted_too(include_deleted)})


class Costs(Resource):
    """``/v1/cost-estimate`` and ``/v1/costs``."""

    def estimate(self, fine_tuning: list[dict[str, Any]] | None = None,
                 hosting: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """``POST /v1/cost-estimate``: per-line unit-hours and cost, and the total (amounts are strings)."""
        body = {"fine_tuning": fine_tuning or [], "hosting": hosting or []}
        return self._http.request("POST", "/v1/cost-estimate", body)

    def metered(self) -> dict[str, Any]:
        """``GET /v1/costs``: the metered cost so far of your hosting clusters and fine-tuning jobs."""
        return self._http.request("GET", "/v1/costs")
