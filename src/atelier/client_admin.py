"""Administration methods of the API client: audit, key ring, tenancies, identity, API keys, policies.

A mixin of ``atelier.client.AtelierClient``, split out so that the client module keeps the
transport and the inference routes; every method is one HTTP call through ``_request``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote


def _seg(value: str) -> str:
    """An id as one URL path segment (a ``/`` or ``?`` in it cannot change the route)."""
    return quote(value, safe="")


def _drop_none(params: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if v is not None}


class AdminMethods:
    """Routes for operators and tenancy administrators (see the README's Security section).

    Relies on the host class's ``_request(method, path, body=None, params=None)`` and ``_send``.
    """

    # --- audit and key ring ----------------------------------------------------------

    def audit_entries(self, **filters: Any) -> dict[str, Any]:
        """``GET /v1/audit``: one page ``{"data": [entries], "next_after_seq"}``.

        Args:
            **filters: query parameters (``since``, ``until``, ``action``, ``decision``,
                ``principal_id``, ``key_id``, ``resource_type``, ``resource_id``, ``status``,
                ``request_id``, ``after_seq``, ``limit``; the operator's ``tenancy_id`` and
                ``all``); ``None`` values are not sent.
        """
        params = {k: ("true" if v is True else v) for k, v in filters.items() if v is not None and v is not False}
        return self._request("GET", "/v1/audit", params=params)

    def audit_verify(self) -> dict[str, Any]:
        """``GET /v1/audit/verify`` (operator): ``{"ok", "entries", "checkpoints", "problems"}``."""
        return self._request("GET", "/v1/audit/verify")

    def key_ring(self) -> dict[str, Any]:
        """``GET /v1/key-ring``: current and minimum versions, and every version's state."""
        return self._request("GET", "/v1/key-ring")

    def rotate_key_ring(self) -> dict[str, Any]:
        """``POST /v1/key-ring/rotate``: add a key version; returns the ring."""
        return self._request("POST", "/v1/key-ring/rotate")

    def rewrap_objects(self) -> dict[str, Any]:
        """``POST /v1/key-ring/rewrap``: ``{"rewrapped": n, "current_version"}``."""
        return self._request("POST", "/v1/key-ring/rewrap")

    def retire_key_versions(self, below: int) -> dict[str, Any]:
        """``POST /v1/key-ring/retire``: versions below ``below`` stop opening; returns the ring."""
        return self._request("POST", "/v1/key-ring/retire", {"below": below})

    # --- administration: tenancies, identity, API keys, policies --------------------------

    def create_tenancy(self, name: str) -> dict[str, Any]:
        """``POST /v1/tenancies`` (operator): ``{"id", "name", "admin_user_id", "admin_key"}``;
        the admin key is shown this once."""
        return self._request("POST", "/v1/tenancies", {"name": name})

    def tenancies(self) -> list[dict[str, Any]]:
        """``GET /v1/tenancies`` (operator)."""
        return self._list("/v1/tenancies")

    def tenancy(self, tenancy_id: str) -> dict[str, Any]:
        """``GET /v1/tenancies/{id}`` (operator)."""
        return self._request("GET", f"/v1/tenancies/{_seg(tenancy_id)}")

    def tenancy_limits(self, tenancy_id: str) -> dict[str, Any]:
        """``GET /v1/tenancies/{id}/limits`` (operator): stored limits (null = default) and ``effective``."""
        return self._request("GET", f"/v1/tenancies/{_seg(tenancy_id)}/limits")

    def set_tenancy_limits(
        self,
        tenancy_id: str,
        requests_per_minute: int | None = None,
        concurrent_generations: int | None = None,
        tokens_per_minute: int | None = None,
        units: dict[str, int] | None = None,
    ) -> dict[str, Any]:
        """``PUT /v1/tenancies/{id}/limits`` (operator): replaces all three request limits (None
        restores a default) and sets the unit limits of the unit types in ``units``."""
        body: dict[str, Any] = {
            "requests_per_minute": requests_per_minute,
            "concurrent_generations": concurrent_generations,
            "tokens_per_minute": tokens_per_minute,
        }
        if units:
            body["units"] = units
        return self._request("PUT", f"/v1/tenancies/{_seg(tenancy_id)}/limits", body)

    def alerts(self, **filters: Any) -> list[dict[str, Any]]:
        """``GET /v1/alerts``: anomaly alerts, oldest first (filters ``kind``, ``since``, ``limit``,
        the operator's ``tenancy_id``; ``None`` values are not sent)."""
        return self._list("/v1/alerts", _drop_none(filters))

    def create_compartment(
        self, name: str, parent: str | None = None, description: str | None = None
    ) -> dict[str, Any]:
        """``POST /v1/compartments``; ``parent`` is an id or a path such as ``eng:ml``."""
        return self._request(
            "POST", "/v1/compartments", _drop_none({"name": name, "parent": parent, "description": description})
        )

    def compartments(self) -> list[dict[str, Any]]:
        """``GET /v1/compartments``: every compartment, with its ``path``."""
        return self._list("/v1/compartments")

    def compartment(self, compartment_id: str) -> dict[str, Any]:
        """``GET /v1/compartments/{id}``."""
        return self._request("GET", f"/v1/compartments/{_seg(compartment_id)}")

    def update_compartment(
        self, compartment_id: str, name: str | None = None, description: str | None = None
    ) -> dict[str, Any]:
        """``PATCH /v1/compartments/{id}``."""
        body = _drop_none({"name": name, "description": description})
        return self._request("PATCH", f"/v1/compartments/{_seg(compartment_id)}", body)

    def delete_compartment(self, compartment_id: str) -> dict[str, Any]:
        """``DELETE /v1/compartments/{id}`` (an empty one)."""
        return self._request("DELETE", f"/v1/compartments/{_seg(compartment_id)}")

    def create_user(self, name: str, description: str | None = None) -> dict[str, Any]:
        """``POST /v1/users``."""
        return self._request("POST", "/v1/users", _drop_none({"name": name, "description": description}))

    def users(self) -> list[dict[str, Any]]:
        """``GET /v1/users``: users with their group names."""
        return self._list("/v1/users")

    def user(self, user_id: str) -> dict[str, Any]:
        """``GET /v1/users/{id}``."""
        return self._request("GET", f"/v1/users/{_seg(user_id)}")

    def update_user(self, user_id: str, name: str | None = None, description: str | None = None) -> dict[str, Any]:
        """``PATCH /v1/users/{id}``."""
        body = _drop_none({"name": name, "description": description})
        return self._request("PATCH", f"/v1/users/{_seg(user_id)}", body)

    def delete_user(self, user_id: str) -> dict[str, Any]:
        """``DELETE /v1/users/{id}``: also revokes the user's keys (``revoked_keys``)."""
        return self._request("DELETE", f"/v1/users/{_seg(user_id)}")

    def create_group(self, name: str, description: str | None = None) -> dict[str, Any]:
        """``POST /v1/groups``."""
        return self._request("POST", "/v1/groups", _drop_none({"name": name, "description": description}))

    def groups(self) -> list[dict[str, Any]]:
        """``GET /v1/groups``: groups with their members."""
        return self._list("/v1/groups")

    def group(self, group_id: str) -> dict[str, Any]:
        """``GET /v1/groups/{id}``."""
        return self._request("GET", f"/v1/groups/{_seg(group_id)}")

    def update_group(self, group_id: str, name: str | None = None, description: str | None = None) -> dict[str, Any]:
        """``PATCH /v1/groups/{id}``."""
        body = _drop_none({"name": name, "description": description})
        return self._request("PATCH", f"/v1/groups/{_seg(group_id)}", body)

    def delete_group(self, group_id: str) -> dict[str, Any]:
        """``DELETE /v1/groups/{id}``."""
        return self._request("DELETE", f"/v1/groups/{_seg(group_id)}")

    def add_group_member(self, group_id: str, user_id: str) -> dict[str, Any]:
        """``POST /v1/groups/{id}/members``: returns the group."""
        return self._request("POST", f"/v1/groups/{_seg(group_id)}/members", {"user_id": user_id})

    def remove_group_member(self, group_id: str, user_id: str) -> dict[str, Any]:
        """``DELETE /v1/groups/{id}/members/{user_id}``: returns the group."""
        return self._request("DELETE", f"/v1/groups/{_seg(group_id)}/members/{_seg(user_id)}")

    def create_api_key(
        self, name: str, user_id: str | None = None, expires_in_days: int | None = None
    ) -> dict[str, Any]:
        """``POST /v1/api-keys``: the key's metadata and ``key``, the raw key shown this once."""
        body = _drop_none({"name": name, "user_id": user_id, "expires_in_days": expires_in_days})
        return self._request("POST", "/v1/api-keys", body)

    def api_keys(self, user_id: str | None = None, include_revoked: bool = False) -> list[dict[str, Any]]:
        """``GET /v1/api-keys``: the keys the caller may manage."""
        params = {"user_id": user_id, "include_revoked": "true" if include_revoked else None}
        return self._list("/v1/api-keys", params)

    def api_key(self, key_id: str) -> dict[str, Any]:
        """``GET /v1/api-keys/{id}``."""
        return self._request("GET", f"/v1/api-keys/{_seg(key_id)}")

    def rotate_api_key(self, key_id: str, grace_seconds: int | None = None) -> dict[str, Any]:
        """``POST /v1/api-keys/{id}/rotate``: a new raw ``key``; the old one works ``grace_seconds`` more."""
        body = None if grace_seconds is None else {"grace_seconds": grace_seconds}
        return self._request("POST", f"/v1/api-keys/{_seg(key_id)}/rotate", body)

    def revoke_api_key(self, key_id: str) -> dict[str, Any]:
        """``DELETE /v1/api-keys/{id}``: revoke for good."""
        return self._request("DELETE", f"/v1/api-keys/{_seg(key_id)}")

    def create_policy(self, name: str, statements: str, description: str | None = None) -> dict[str, Any]:
        """``POST /v1/policies``; a syntax error is an ``ApiError`` naming line and column."""
        body = _drop_none({"name": name, "statements": statements, "description": description})
        return self._request("POST", "/v1/policies", body)

    def policies(self) -> list[dict[str, Any]]:
        """``GET /v1/policies``: the policies the caller may inspect."""
        return self._list("/v1/policies")

    def policy(self, policy_id: str) -> dict[str, Any]:
        """``GET /v1/policies/{id}``."""
        return self._request("GET", f"/v1/policies/{_seg(policy_id)}")

    def replace_policy(
        self, policy_id: str, name: str, statements: str, description: str | None = None
    ) -> dict[str, Any]:
        """``PUT /v1/policies/{id}``."""
        body = _drop_none({"name": name, "statements": statements, "description": description})
        return self._request("PUT", f"/v1/policies/{_seg(policy_id)}", body)

    def delete_policy(self, policy_id: str) -> dict[str, Any]:
        """``DELETE /v1/policies/{id}``."""
        return self._request("DELETE", f"/v1/policies/{_seg(policy_id)}")

    def _list(self, path: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        return list(self._request("GET", path, params=params).get("data") or [])


