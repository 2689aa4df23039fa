"""Dedicated-capacity methods of the API client: clusters, endpoints, costs.

A mixin of ``atelier.client.AtelierClient``, like ``client_admin``: every method is one HTTP
call through the host class's ``_request``.
"""

from __future__ import annotations

from typing import Any

from atelier.client_admin import _drop_none, _seg


class CloudMethods:
    """``/v1/clusters``, ``/v1/endpoints``, ``/v1/cost-estimate`` and ``/v1/costs``."""

    # --- clusters -------------------------------------------------------------------------

    def create_cluster(
        self, name: str, type: str, unit_type: str, unit_count: int, base_model: str, *,
        compartment: str | None = None, description: str | None = None,
    ) -> dict[str, Any]:
        """``POST /v1/clusters``: the cluster (``active``: local provisioning is instant)."""
        body = {"name": name, "type": type, "unit_type": unit_type, "unit_count": unit_count,
                "base_model": base_model, "compartment": compartment, "description": description}
        return self._request("POST", "/v1/clusters", _drop_none(body))

    def clusters(self, include_deleted: bool = False) -> list[dict[str, Any]]:
        """``GET /v1/clusters``: your clusters, oldest first."""
        params = {"include_deleted": "true"} if include_deleted else None
        return list(self._request("GET", "/v1/clusters", params=params).get("data") or [])

    def cluster(self, cluster_id: str) -> dict[str, Any]:
        """``GET /v1/clusters/{id}``."""
        return self._request("GET", f"/v1/clusters/{_seg(cluster_id)}")

    def update_cluster(self, cluster_id: str, *, name: str | None = None, unit_count: int | None = None,
                       description: str | None = None) -> dict[str, Any]:
        """``PATCH /v1/clusters/{id}``: rename, describe, grow or shrink."""
        body = _drop_none({"name": name, "unit_count": unit_count, "description": description})
        return self._request("PATCH", f"/v1/clusters/{_seg(cluster_id)}", body)

    def delete_cluster(self, cluster_id: str) -> dict[str, Any]:
        """``DELETE /v1/clusters/{id}``."""
        return self._request("DELETE", f"/v1/clusters/{_seg(cluster_id)}")

    # --- endpoints ------------------------------------------------------------------------

    def create_endpoint(self, name: str, cluster_id: str, model: str, *, compartment: str | None = None,
                        description: str | None = None) -> dict[str, Any]:
        """``POST /v1/endpoints``: serve the cluster's base model or a custom model of it."""
        body = {"name": name, "cluster_id": cluster_id, "model": model, "compartment": compartment,
                "description": description}
        return self._request("POST", "/v1/endpoints", _drop_none(body))

    def endpoints(self, cluster_id: str | None = None, include_deleted: bool = False) -> list[dict[str, Any]]:
        """``GET /v1/endpoints``: your endpoints, oldest first."""
        params = _drop_none({"cluster_id": cluster_id, "include_deleted": "true" if include_deleted else None})
        return list(self._request("GET", "/v1/endpoints", params=params).get("data") or [])

    def endpoint(self, endpoint_id: str) -> dict[str, Any]:
        """``GET /v1/endpoints/{id}``."""
        return self._request("GET", f"/v1/endpoints/{_seg(endpoint_id)}")

    def update_endpoint(self, endpoint_id: str, *, name: str | None = None,
                        description: str | None = None) -> dict[str, Any]:
        """``PATCH /v1/endpoints/{id}``: rename or describe."""
        body = _drop_none({"name": name, "description": description})
        return self._request("PATCH", f"/v1/endpoints/{_seg(endpoint_id)}", body)

    def delete_endpoint(self, endpoint_id: str) -> dict[str, Any]:
        """``DELETE /v1/endpoints/{id}``."""
        return self._request("DELETE", f"/v1/endpoints/{_seg(endpoint_id)}")

    # --- costs ----------------------------------------------------------------------------

    def cost_estimate(self, fine_tuning: list[dict[str, Any]] | None = None,
                      hosting: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """``POST /v1/cost-estimate``: per-line unit-hours and cost, and the total (amounts are strings)."""
        return self._request("POST", "/v1/cost-estimate", {"fine_tuning": fine_tuning or [], "hosting": hosting or []})

    def costs(self) -> dict[str, Any]:
        """``GET /v1/costs``: the metered cost so far of your hosting clusters and fine-tuning jobs."""
        return self._request("GET", "/v1/costs")
