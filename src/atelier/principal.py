"""The authenticated caller, as every service and repository sees it.

Knows nothing about how the caller proved who it is (an API key today). Repositories take
it first and filter by its tenancy; the policy evaluator reads its user id and groups.
"""

from __future__ import annotations

from dataclasses import dataclass, field

ADMINISTRATORS = "Administrators"
"""The group every tenancy is created with; its members administer the tenancy (users,
groups, compartments, policies, keys), like OCI's tenancy administrators."""


@dataclass(frozen=True)
class Principal:
    """Who is calling, and in which tenancy."""

    tenancy_id: str
    """The tenancy every query of this caller is scoped to."""
    key_id: str
    """The API key that authenticated the call (for audit and last-used tracking)."""
    role: str
    """``operator`` (runs the service), ``admin`` (manages the tenancy) or ``user``."""
    user_id: str | None = None
    """The user the key is bound to; None for keys installed without a user."""
    groups: frozenset[str] = field(default_factory=frozenset)
    """Names of the groups the user belongs to (what policies grant to)."""

    @property
    def is_operator(self) -> bool:
        """Whether the caller runs the service itself (may create tenancies)."""
        return self.role == "operator"

    @property
    def is_admin(self) -> bool:
        """Whether the caller administers its tenancy (operator, admin key or Administrators member)."""
        return self.role in ("operator", "admin") or ADMINISTRATORS in self.groups

    @property
    def id(self) -> str:
        """The id policies see as ``request.principal.id``: the user, else the key."""
        return self.user_id or self.key_id
