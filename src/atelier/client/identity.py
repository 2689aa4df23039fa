"""Identity in the API client: ``client.compartments``, ``users``, ``groups``, ``api_keys``, ``policies``.

The routes a tenancy administrator uses (see the README's Security section); the server
decides who may call them. A raw API key appears once, in the answer that creates or rotates
it. One HTTP call per method.
"""

from __future__ import annotations

from typing import Any

from atelier.client.base import Collection, drop_none, path_segment


class DescribedCollection(Collection):
    """Objects with a unique ``name`` and a free-text ``description``: create and update them."""

    def create(self, name: str, description: str | None = None) -> dict[str, Any]:
        """``POST {path}``: the new object."""
        return self._http.request("POST", self.path, drop_none({"name": name, "description": description}))

    def update(self, object_id: str, name: str | None = None, description: str | None = None) -> dict[str, Any]:
        """``PATCH {path}/{id}``: rename or describe."""
        return self._patch(object_id, name=name, description=description)


class Compartments(DescribedCollection):
    """``/v1/compartments``: every compartment comes with its ``path`` (``eng:ml``)."""

    path = "/v1/compartments"

    def create(self, name: str, description: str | None = None, parent: str | None = None) -> dict[str, Any]:
        """``POST /v1/compartments``; ``parent`` is an id or a path such as ``eng:ml`` (default the root)."""
        body = drop_none({"name": name, "parent": parent, "description": description})
        return self._http.request("POST", self.path, body)


class Users(DescribedCollection):
    """``/v1/users``: users with their group names; deleting one revokes its keys (``revoked_keys``)."""

    path = "/v1/users"


class Groups(DescribedCollection):
    """``/v1/groups``: groups with their members."""

    path = "/v1/groups"

    def add_member(self, group_id: str, user_id: str) -> dict[str, Any]:
        """``POST /v1/groups/{id}/members``: returns the group."""
        return self._http.request("POST", self.item(group_id, "members"), {"user_id": user_id})

    def remove_member(self, group_id: str, user_id: str) -> dict[str, Any]:
        """``DELETE /v1/groups/{id}/members/{user_id}``: returns the group."""
        return self._http.request("DELETE", self.item(group_id, "members", path_segment(user_id)))


class ApiKeys(Collection):
    """``/v1/api-keys``: yours, or (administrators) any user's; never their secrets, but once."""

    path = "/v1/api-keys"

    def create(self, name: str, user_id: str | None = None, expires_in_days: int | None = None) -> dict[str, Any]:
        """``POST /v1/api-keys``: the key's metadata and ``key``, the raw key shown this once."""
        body = drop_none({"name": name, "user_id": user_id, "expires_in_days": expires_in_days})
        return self._http.request("POST", self.path, body)

    def rotate(self, key_id: str, grace_seconds: int | None = None) -> dict[str, Any]:
        """``POST /v1/api-keys/{id}/rotate``: a new raw ``key``; the old one works ``grace_seconds`` more."""
        body = None if grace_seconds is None else {"grace_seconds": grace_seconds}
        return self._http.request("POST", self.item(key_id, "rotate"), body)

    def revoke(self, key_id: str) -> dict[str, Any]:
        """``DELETE /v1/api-keys/{id}``: revoke for good."""
        return self.delete(key_id)

    def list(self, user_id: str | None = None, include_revoked: bool = False) -> list[dict[str, Any]]:
        """``GET /v1/api-keys``: the keys the caller may manage (one user's, if given)."""
        params = {"user_id": user_id, "include_revoked": "true" if include_revoked else None}
        return self._http.get_list(self.path, params)


class Policies(Collection):
    """``/v1/policies``: the policies the caller may inspect; statements are checked by the server."""

    path = "/v1/policies"

    def create(self, name: str, statements: str, description: str | None = None) -> dict[str, Any]:
        """``POST /v1/policies``; a syntax error is an ``ApiError`` naming line and column."""
        body = drop_none({"name": name, "statements": statements, "description": description})
        return self._http.request("POST", self.path, body)

    def replace(self, policy_id: str, name: str, statements: str, description: str | None = None) -> dict[str, Any]:
        """``PUT /v1/policies/{id}``."""
        body = drop_none({"name": name, "statements": statements, "description": description})
        return self._http.request("PUT", self.item(policy_id), body)
