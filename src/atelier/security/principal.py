"""The authenticated caller, as every service and repository sees it.

Knows nothing about how the caller proved who it is (API key today, maybe more later).
"""

from __future__ import annotations

from dataclasses import dataclass


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
    """The user behind the key, once users exist; None for service keys."""

    @property
    def is_operator(self) -> bool:
        """Whether the caller runs the service itself (may act across tenancies)."""
        return self.role == "operator"
