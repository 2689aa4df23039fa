"""Authorization of a request's objects, in one place: load, decide, list, create, reference.

``api/access.py`` authenticates the caller and decides the route's rule at the type level
(may this caller do this operation on this resource type anywhere?). Everything that
depends on the object itself goes through the :class:`Guard` a route receives (``GuardDep``):

- ``load(kind, id, operation)``: the caller's object, once the operation on it is allowed:
  one it may not even inspect answers 404 exactly like a missing one (another tenancy's
  too); a visible one with too weak a verb, 403;
- ``visible(rows)``: the rows a listing shows, decided by exactly the rule ``load`` applies,
  so a listing never shows what GET hides nor hides what GET shows;
- ``creation_compartment(kind, ref, name)``: where a new object goes, once creating there is
  allowed;
- ``reference(kind, id, operation, param)``: an id inside a request body, which is a 400
  naming the field when it names nothing the caller may use.

Compartment paths are read once per request (one query for the whole tenancy), never once
per row. Which table belongs to which resource type is the :data:`GOVERNED` table. Knows
nothing about what the objects do.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from atelier.api.access import Access
from atelier.api.references import body_reference
from atelier.errors import Forbidden
from atelier.principal import Principal
from atelier.security.policy import Operation
from atelier.store import identity
from atelier.store.db import Database
from atelier.store.tables import Cluster, CustomModel, Endpoint, File, Job, KnowledgeBase

Row = TypeVar("Row")


@dataclass(frozen=True)
class Governed:
    """How the rows of one table are decided on: their resource type, noun and name."""

    resource_type: str
    noun: str
    name: Callable[[Any], str | None]


GOVERNED: dict[type, Governed] = {
    Cluster: Governed("clusters", "cluster", lambda row: row.name),
    Endpoint: Governed("endpoints", "endpoint", lambda row: row.name),
    CustomModel: Governed("custom-models", "custom model", lambda row: row.name),
    Job: Governed("fine-tuning-jobs", "fine-tuning job", lambda row: None),
    KnowledgeBase: Governed("knowledge-bases", "knowledge base", lambda row: row.name),
    File: Governed("files", "file", lambda row: row.filename),
}
"""Table → how policies see its rows (every object a policy governs is one of these)."""

Loader = Callable[[Principal, str], Any]
"""``load(principal, id)`` → the caller's row, or NotFound (a service's ``get``)."""


class Guard:
    """One request's object-level authorization (see the module docstring).

    Args:
        access: The request's authenticated caller and policy statements.
        db: The metadata database (compartment paths).
        loaders: Resource type → loader of its rows.
    """

    def __init__(self, access: Access, db: Database, loaders: dict[str, Loader]):
        self.access = access
        self._db = db
        self._loaders = loaders
        self._paths: dict[str | None, tuple[str, ...]] | None = None

    @property
    def principal(self) -> Principal:
        """The caller."""
        return self.access.principal

    def path(self, compartment_id: str | None) -> tuple[str, ...]:
        """The compartment's path from the tenancy root (``()`` for the root), cached per request."""
        if self._paths is None or compartment_id not in self._paths:
            with self._db.session() as session:
                self._paths = identity.compartment_paths(session, self.principal)
        return self._paths.get(compartment_id, ())

    def _target(self, row: Any) -> tuple[Governed, dict[str, Any]]:
        governed = GOVERNED[type(row)]
        return governed, {"target_id": row.id, "target_name": governed.name(row),
                          "compartment_path": self.path(row.compartment_id)}

    def require(self, row: Row, operation: Operation) -> Row:
        """``row`` once ``operation`` on it is allowed.

        Raises:
            NotFound: The caller may not even inspect it (the message of a missing one).
            Forbidden: Visible, but the caller's verb is too weak.
        """
        governed, target = self._target(row)
        self.access.require(operation, governed.resource_type, what=f"{governed.noun} {row.id!r}", **target)
        return row

    def allows(self, row: Any, operation: Operation) -> bool:
        """Whether ``operation`` on ``row`` is allowed (nothing raised, nothing recorded)."""
        governed, target = self._target(row)
        return self.access.decide(operation, governed.resource_type, **target).allowed

    def visible(self, rows: Iterable[Row]) -> list[Row]:
        """The rows a listing shows: those the caller may inspect, which GET answers with 200 or 403."""
        return [row for row in rows if self.allows(row, "list")]

    def load(self, resource_type: str, object_id: str, operation: Operation) -> Any:
        """The caller's object ``object_id`` of ``resource_type``, once ``operation`` on it is allowed.

        Raises:
            NotFound: Missing, another tenancy's, or invisible to the caller.
            Forbidden: Visible, but the caller's verb is too weak.
        """
        return self.require(self._loaders[resource_type](self.principal, object_id), operation)

    def reference(self, resource_type: str, object_id: str, operation: Operation, param: str) -> Any:
        """An object named in a request body (field ``param``), once ``operation`` on it is allowed.

        Raises:
            InvalidInput: It names nothing the caller may see ("not found or not authorized", ``param``).
            Forbidden: Visible, but the caller's verb is too weak.
        """
        with body_reference(param):
            return self.load(resource_type, object_id, operation)

    def creation_compartment(self, resource_type: str, ref: str | None, name: str | None) -> str | None:
        """The compartment a new object goes into (a body's ``compartment``: id or path), once creating there
        is allowed; None for the tenancy root.

        Raises:
            InvalidInput: No such compartment in the caller's tenancy (``param="compartment"``).
            Forbidden: The caller's policies do not allow creating there.
        """
        compartment_id, path = None, ()
        if ref:
            with self._db.session() as session, body_reference("compartment"):
                compartment_id = identity.resolve_compartment(session, self.principal, ref).id
            path = self.path(compartment_id)
        decision = self.access.decide("create", resource_type, target_name=name, compartment_path=path)
        if not decision.allowed:  # the type-level check passed: the compartment or a condition refused it
            raise Forbidden(f"not authorized: {decision.reason}")
        return compartment_id

