"""Lifecycle states of dedicated AI clusters and endpoints, and the moves allowed between them.

As in OCI: an object is ``creating`` until it can serve, then ``active``; ``updating``
while a change is applied; ``deleting`` then ``deleted`` (the row is kept, so its cost
so far can still be metered); ``failed`` when creation did not succeed; clusters also
know ``needs_attention`` (running, but something must be looked at). Every change of state
goes through :func:`move`, so an impossible move (``deleted`` → ``active``) is a
``Conflict``, never silent. Knows nothing about HTTP or the database.
"""

from __future__ import annotations

from typing import Literal

from atelier.errors import Conflict

State = Literal["creating", "active", "updating", "deleting", "deleted", "failed", "needs_attention"]
CLUSTER_STATES: tuple[State, ...] = (
    "creating", "active", "updating", "deleting", "deleted", "failed", "needs_attention",
)  # fmt: skip
ENDPOINT_STATES: tuple[State, ...] = ("creating", "active", "updating", "deleting", "deleted", "failed")

CLUSTER_MOVES: dict[str, frozenset[str]] = {
    "creating": frozenset({"active", "failed", "deleting"}),
    "active": frozenset({"updating", "deleting", "needs_attention"}),
    "updating": frozenset({"active", "failed", "needs_attention"}),
    "needs_attention": frozenset({"active", "updating", "deleting"}),
    "failed": frozenset({"deleting"}),
    "deleting": frozenset({"deleted", "failed"}),
    "deleted": frozenset(),
}
"""Cluster state → the states it may move to."""

ENDPOINT_MOVES: dict[str, frozenset[str]] = {
    "creating": frozenset({"active", "failed", "deleting"}),
    "active": frozenset({"updating", "deleting"}),
    "updating": frozenset({"active", "failed"}),
    "failed": frozenset({"deleting"}),
    "deleting": frozenset({"deleted", "failed"}),
    "deleted": frozenset(),
}
"""Endpoint state → the states it may move to."""

LIVE: frozenset[str] = frozenset({"creating", "active", "updating", "needs_attention", "deleting"})
"""States in which an object holds what it reserved (units, endpoint capacity)."""


def can_move(moves: dict[str, frozenset[str]], current: str, target: str) -> bool:
    """Whether ``current`` → ``target`` is an allowed move in ``moves``."""
    return target in moves.get(current, frozenset())


def move(moves: dict[str, frozenset[str]], what: str, current: str, target: str) -> str:
    """Check the move ``current`` → ``target`` and return ``target``.

    Args:
        moves: :data:`CLUSTER_MOVES` or :data:`ENDPOINT_MOVES`.
        what: The object, for the message (``"cluster 'dac_1'"``).
        current: Its state now.
        target: The state it should move to.

    Raises:
        Conflict: The move is not allowed (e.g. updating a deleted cluster).
    """
    if not can_move(moves, current, target):
        raise Conflict(f"{what} is {current}; it cannot become {target}", code="invalid_state")
    return target
