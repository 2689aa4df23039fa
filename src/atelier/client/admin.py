"""Operation in the API client: ``client.tenancies`` (and their limits), ``key_ring``, ``audit``, ``alerts``.

Routes for operators and tenancy administrators (see the README's Security section): the
server checks the caller's key; this module only carries requests. One HTTP call per method.
"""

from __future__ import annotations

from typing import Any

from atelier.client.base import Collection, Resource, drop_none


class Tenancies(Collection):
    """``/v1/tenancies`` (operator key): create, list, get tenancies; read and set their limits."""

    path = "/v1/tenancies"

    def create(self, name: str) -> dict[str, Any]:
        """``POST /v1/tenancies``: ``{"id", "name", "admin_user_id", "admin_key"}``; the key is shown this once."""
        return self._http.request("POST", self.path, {"name": name})

    def limits(self, tenancy_id: str) -> dict[str, Any]:
        """``GET /v1/tenancies/{id}/limits``: stored limits (null = default) and ``effective``."""
        return self._http.request("GET", self.item(tenancy_id, "limits"))

    def set_limits(
        self,
        tenancy_id: str,
        requests_per_minute: int | None = None,
        concurrent_generations: int | None = None,
        tokens_per_minute: int | None = None,
        units: dict[str, int] | None = None,
    ) -> dict[str, Any]:
        """``PUT /v1/tenancies/{id}/limits``.

        Replaces all three request limits (``None`` restores a default) and sets the unit
        limits of the unit types in ``units`` (the others keep theirs).

        Returns:
            The limits, as ``limits`` answers them.
        """
        body: dict[str, Any] = {
            "requests_per_minute": requests_per_minute,
            "concurrent_generations": concurrent_generations,
            "tokens_per_minute": tokens_per_minute,
        }
        if units:
            body["units"] = units
        return self._http.request("PUT", self.item(tenancy_id, "limits"), body)


class KeyRing(Resource):
    """``/v1/key-ring``: your tenancy's key versions (envelope encryption); never key material."""

    def get(self) -> dict[str, Any]:
        """``GET /v1/key-ring``: current and minimum versions, and every version's state."""
        return self._http.request("GET", "/v1/key-ring")

    def rotate(self) -> dict[str, Any]:
        """``POST /v1/key-ring/rotate``: add a key version; returns the ring."""
        return self._http.request("POST", "/v1/key-ring/rotate")

    def rewrap(self) -> dict[str, Any]:
        """``POST /v1/key-ring/rewrap``: ``{"rewrapped": n, "current_version"}``."""
        return self._http.request("POST", "/v1/key-ring/rewrap")

    def retire(self, below: int) -> dict[str, Any]:
        """``POST /v1/key-ring/retire``: versions below ``below`` stop opening; returns the ring."""
        return self._http.request("POST", "/v1/key-ring/retire", {"below": below})


class Audit(Resource):
    """``/v1/audit``: the hash-chained audit log, read through the API."""

    def entries(self, **filters: Any) -> dict[str, Any]:
        """``GET /v1/audit``: one page ``{"data": [entries], "next_after_seq"}``.

        Args:
            **filters: query parameters (``since``, ``until``, ``action``, ``decision``,
                ``principal_id``, ``key_id``, ``resource_type``, ``resource_id``, ``status``,
                ``request_id``, ``after_seq``, ``limit``; the operator's ``tenancy_id`` and
                ``all``); ``None`` and ``False`` values are not sent, ``True`` is ``"true"``.
        """
        params = {k: ("true" if v is True else v) for k, v in filters.items() if v is not None and v is not False}
        return self._http.request("GET", "/v1/audit", params=params)

    def verify(self) -> dict[str, Any]:
        """``GET /v1/audit/verify`` (operator): ``{"ok", "entries", "checkpoints", "problems"}``."""
        return self._http.request("GET", "/v1/audit/verify")


class Alerts(Resource):
    """``/v1/alerts``: anomaly alerts."""

    def list(self, **filters: Any) -> list[dict[str, Any]]:
        """``GET /v1/alerts``: alerts, oldest first.

        Args:
            **filters: ``kind``, ``since``, ``limit``, the operator's ``tenancy_id``;
                ``None`` values are not sent.
        """
        return self._http.get_list("/v1/alerts", drop_none(filters))
