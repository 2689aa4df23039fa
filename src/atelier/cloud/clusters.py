"""Dedicated AI clusters: units of one type reserved for fine-tuning or hosting one base model.

A cluster is sized in the units of its base model's sizing (``ModelSpec.sizing``): a
fine-tuning cluster needs at least the units one job holds, a hosting cluster at least the
units to host the model; its unit type must be able to do what the cluster is for (the unit
table, ``atelier.cloud.units``). Its units count against the tenancy's unit limits
(``atelier.cloud.unit_limits``).

Local provisioning is instant: the service's own engine and workers are the capacity, so
a new cluster goes ``creating`` → ``active`` and a resize ``active`` → ``updating`` →
``active`` within the call. The transitions are real all the same (``atelier.cloud.states``
checks every one): a deleted cluster cannot be updated, a cluster still ``creating`` takes
no job. Deleting a hosting cluster that still has endpoints, or a fine-tuning cluster with
jobs under way, is a ``Conflict``; a deleted cluster keeps its row (state ``deleted``) so
its cost so far can still be metered.

Every method takes the caller's ``Principal`` first; another tenancy's cluster is
``NotFound``, exactly like a missing one. Knows nothing about HTTP or policies.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from atelier.catalog import Catalog, ModelSpec
from atelier.cloud.states import CLUSTER_MOVES, move
from atelier.cloud.unit_limits import require_units
from atelier.cloud.units import MAX_UNITS, UnitTable, capability_for
from atelier.errors import Conflict, InvalidInput, NotFound
from atelier.principal import Principal
from atelier.store import clusters as repo
from atelier.store.db import Database
from atelier.store.tables import NAME_LENGTH, Cluster, utcnow

ClusterType = Literal["hosting", "fine-tuning"]
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
ADMISSION = threading.Lock()
"""Held while a fine-tuning job is admitted on a cluster and while a cluster shrinks or is
deleted: the job queue writes in its own transaction, so this keeps "free units" true from
the check to the job's row (within the one API process that admits jobs)."""


class ClusterRequest(BaseModel):
    """The body of ``POST /v1/clusters``."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN, description="Unique among your clusters: letters, digits, `. _ -`.")
    type: ClusterType = Field(description="`fine-tuning` runs fine-tuning jobs; `hosting` serves endpoints.")
    unit_type: str = Field(min_length=1, max_length=32, description="A unit type of the unit table, e.g. `small`.")
    unit_count: int = Field(ge=1, le=MAX_UNITS, description="Units reserved (at least the base model's sizing).")
    base_model: str = Field(min_length=1, max_length=NAME_LENGTH, description="The catalog base model it serves.")
    compartment: str | None = Field(
        None, min_length=1, max_length=400, description="Compartment id or path (`eng:ml`); default the root."
    )
    description: str = Field("", max_length=400, description="Free text.")


class ClusterUpdate(BaseModel):
    """The body of ``PATCH /v1/clusters/{id}``: what to change (absent fields stay)."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, pattern=NAME_PATTERN, description="A new name.")
    unit_count: int | None = Field(None, ge=1, le=MAX_UNITS, description="A new unit count (grow or shrink).")
    description: str | None = Field(None, max_length=400, description="A new description.")


class ClusterService:
    """The clusters of every tenancy, each method scoped to the caller's.

    Args:
        db: The metadata database.
        catalog: The base models (their sizing).
        units: The unit table.
    """

    def __init__(self, db: Database, catalog: Catalog, units: UnitTable):
        self._db = db
        self._catalog = catalog
        self._units = units

    # --- sizing ------------------------------------------------------------------------------

    def spec(self, name: str, param: str = "base_model") -> ModelSpec:
        """The catalog model ``name``.

        Raises:
            InvalidInput: No such model (``param``).
        """
        try:
            return self._catalog.get(name)
        except NotFound:
            raise InvalidInput(f"the base model {name!r} does not exist", param=param, code="model_not_found") from None

    def least_units(self, cluster_type: str, spec: ModelSpec) -> int:
        """Fewest units a cluster of ``cluster_type`` over ``spec`` may have."""
        return spec.sizing.fine_tuning_units if cluster_type == "fine-tuning" else spec.sizing.hosting_units

    def capacity(self, session: Session, row: Cluster) -> tuple[int, int]:
        """``(total, used)`` endpoint places of a hosting cluster; ``(0, 0)`` for fine-tuning."""
        if row.type != "hosting":
            return 0, 0
        spec = self._catalog_spec(row.base_model)
        return (spec.sizing.max_custom_models if spec else 0), repo.endpoints_on(session, row.id)

    def occupancy(self, row: Cluster) -> tuple[int, int, int]:
        """``(total endpoint places, places used, units held by jobs)`` of a cluster."""
        with self._db.session() as session:
            total, used = self.capacity(session, row)
            return total, used, self.held_units(session, row)

    def held_units(self, session: Session, row: Cluster) -> int:
        """Units of a fine-tuning cluster held by its jobs under way."""
        if row.type != "fine-tuning":
            return 0
        spec = self._catalog_spec(row.base_model)
        return repo.jobs_on(session, row.id) * (spec.sizing.fine_tuning_units if spec else 0)

    def _catalog_spec(self, name: str) -> ModelSpec | None:
        try:
            return self._catalog.get(name)
        except NotFound:
            return None

    def _check_sizing(self, body: ClusterRequest) -> ModelSpec:
        spec = self.spec(body.base_model)
        unit = self._units.get(body.unit_type)
        needed = capability_for(body.type, spec)
        if needed not in unit.capabilities:
            raise InvalidInput(f"{body.unit_type} units cannot do {needed} (they do: {', '.join(unit.capabilities)})",
                               param="unit_type")
        if body.unit_type != spec.sizing.unit_type:
            raise InvalidInput(f"{spec.name} is sized in {spec.sizing.unit_type} units, not {body.unit_type}",
                               param="unit_type")
        if body.type == "fine-tuning" and (spec.kind != "chat" or spec.sizing.fine_tuning_units == 0):
            raise InvalidInput(f"{spec.name} cannot be fine-tuned", param="base_model")
        least = self.least_units(body.type, spec)
        if body.unit_count < least:
            raise InvalidInput(f"a {body.type} cluster of {spec.name} needs at least {least} {body.unit_type} units",
                               param="unit_count")
        return spec

    # --- create, read, update, delete ---------------------------------------------------------

    def create(self, principal: Principal, body: ClusterRequest, *, compartment_id: str | None = None) -> Cluster:
        """Reserve the units and bring the cluster up (instantly, locally).

        Returns:
            The cluster, ``active``.

        Raises:
            InvalidInput: Unknown base model or unit type, a unit type that cannot do this
                cluster's work or is not the model's, fewer units than the model needs.
            Conflict: Name taken (``param="name"``), or past the tenancy's unit limit
                (code ``limit_exceeded``).
        """
        self._check_sizing(body)
        with repo.locked(self._db, principal.tenancy_id) as session:
            repo.require_free_name(session, principal, Cluster, body.name)
            require_units(session, principal.tenancy_id, self._units, body.unit_type, body.unit_count,
                          what=f"a {body.type} cluster")
            now = utcnow()
            row = Cluster(
                tenancy_id=principal.tenancy_id, compartment_id=compartment_id, name=body.name,
                description=body.description, type=body.type, unit_type=body.unit_type, unit_count=body.unit_count,
                base_model=body.base_model, state="creating", state_details="", created_at=now, updated_at=now,
            )  # fmt: skip
            session.add(row)
            session.flush()
        return self._provisioned(principal, row.id)

    def _provisioned(self, principal: Principal, cluster_id: str) -> Cluster:
        """``creating`` → ``active``: local capacity is the service's own, ready at once."""
        with self._db.session() as session:
            row = repo.get_cluster(session, principal, cluster_id)
            row.state = move(CLUSTER_MOVES, f"cluster {row.id!r}", row.state, "active")
            row.active_at = row.updated_at = utcnow()
            session.flush()
            return row

    def list(self, principal: Principal, *, include_deleted: bool = False) -> list[Cluster]:
        """The tenancy's clusters, oldest first (deleted ones only when asked)."""
        with self._db.session() as session:
            return repo.list_clusters(session, principal, include_deleted=include_deleted)

    def get(self, principal: Principal, cluster_id: str) -> Cluster:
        """The caller's cluster (a deleted one too, in state ``deleted``).

        Raises:
            NotFound: No such cluster in the caller's tenancy.
        """
        with self._db.session() as session:
            return repo.get_cluster(session, principal, cluster_id)

    def can_host(self, principal: Principal, base_model: str) -> bool:
        """Whether the tenancy has an active hosting cluster of ``base_model`` (capacity for its custom models)."""
        with self._db.session() as session:
            return bool(repo.list_clusters(session, principal, type="hosting", base_model=base_model, state="active"))

    def update(self, principal: Principal, cluster_id: str, body: ClusterUpdate) -> Cluster:
        """Rename, describe, grow or shrink an active cluster (``active`` → ``updating`` → ``active``).

        Raises:
            NotFound: No such cluster in the caller's tenancy.
            InvalidInput: Nothing to change, or fewer units than the model needs.
            Conflict: Not active; name taken; past the unit limit (``limit_exceeded``); or
                fewer units than its jobs under way hold.
        """
        if body.name is None and body.unit_count is None and body.description is None:
            raise InvalidInput("give at least one of name, unit_count, description", param="unit_count")
        with ADMISSION, repo.locked(self._db, principal.tenancy_id) as session:
            row = repo.get_cluster(session, principal, cluster_id)
            what = f"cluster {row.id!r}"
            row.state = move(CLUSTER_MOVES, what, row.state, "updating")
            if body.name is not None and body.name != row.name:
                repo.require_free_name(session, principal, Cluster, body.name, other_than=row.id)
                row.name = body.name
            if body.description is not None:
                row.description = body.description
            if body.unit_count is not None and body.unit_count != row.unit_count:
                self._resize(session, principal, row, body.unit_count)
            row.state = move(CLUSTER_MOVES, what, row.state, "active")
            row.updated_at = utcnow()
            session.flush()
            return row

    def _resize(self, session: Session, principal: Principal, row: Cluster, count: int) -> None:
        spec = self._catalog_spec(row.base_model)
        least = self.least_units(row.type, spec) if spec else 1
        if count < least:
            raise InvalidInput(f"a {row.type} cluster of {row.base_model} needs at least {least} units",
                               param="unit_count")
        held = self.held_units(session, row)
        if count < held:
            raise Conflict(f"its jobs under way hold {held} units: it cannot shrink to {count} until they end",
                           param="unit_count")
        require_units(session, principal.tenancy_id, self._units, row.unit_type, count - row.unit_count,
                      what=f"growing cluster {row.name!r} from {row.unit_count} to {count} units")
        row.unit_count = count

    def delete(self, principal: Principal, cluster_id: str) -> Cluster:
        """Release the units (``deleting`` → ``deleted``); the row stays for metering.

        Raises:
            NotFound: No such cluster in the caller's tenancy.
            Conflict: Already deleted; a hosting cluster with endpoints, or a fine-tuning
                cluster with jobs under way.
        """
        with ADMISSION, repo.locked(self._db, principal.tenancy_id) as session:
            row = repo.get_cluster(session, principal, cluster_id)
            what = f"cluster {row.id!r}"
            target = move(CLUSTER_MOVES, what, row.state, "deleting")
            endpoints, jobs = repo.endpoints_on(session, row.id), repo.jobs_on(session, row.id)
            if endpoints:
                raise Conflict(f"{what} still hosts {endpoints} endpoint(s): delete them first")
            if jobs:
                raise Conflict(f"{what} has {jobs} fine-tuning job(s) under way: wait for them or cancel them first")
            row.state = target
            session.flush()
            row.state = move(CLUSTER_MOVES, what, row.state, "deleted")
            row.deleted_at = row.updated_at = utcnow()
            session.flush()
            return row

    # --- where a fine-tuning job runs -----------------------------------------------------------

    def admit_job(self, session: Session, principal: Principal, spec: ModelSpec, cluster_id: str | None,
                  may_use: Callable[[Cluster], bool] = lambda row: True) -> Cluster:
        """The fine-tuning cluster a new job of ``spec`` runs on: active, the caller's, with free units.

        Call it holding :data:`ADMISSION` until the job's row names the cluster, so two jobs
        cannot take the same free units.

        Args:
            session: The locked transaction.
            principal: The caller.
            spec: The base model to fine-tune.
            cluster_id: The cluster asked for, or None for any eligible one (oldest first).
            may_use: ``may_use(cluster)`` → whether the caller's policies let it use the cluster.

        Raises:
            InvalidInput: ``cluster_id`` is not a cluster the caller may use ("not found or not
                authorized"), not a fine-tuning cluster, or not for this base model.
            Conflict: The cluster is not active or has too few free units; or, with no
                ``cluster_id``, no eligible cluster (the message says what to create).
        """
        need = spec.sizing.fine_tuning_units
        if cluster_id is not None:
            try:
                row = repo.get_cluster(session, principal, cluster_id)
            except NotFound:
                row = None
            if row is None or not may_use(row):
                raise InvalidInput(f"cluster {cluster_id!r} not found or not authorized", param="cluster_id")
            if row.type != "fine-tuning" or row.base_model != spec.name:
                raise InvalidInput(f"cluster {cluster_id!r} is a {row.type} cluster of {row.base_model}, not a "
                                   f"fine-tuning cluster of {spec.name}", param="cluster_id")
            if row.state != "active":
                raise Conflict(f"cluster {cluster_id!r} is {row.state}; jobs run only on an active cluster",
                               param="cluster_id")
            free = row.unit_count - self.held_units(session, row)
            if free < need:
                raise Conflict(f"cluster {cluster_id!r} has {free} free units and a job of {spec.name} needs {need}: "
                               "wait for its jobs to end, grow it, or use another cluster",
                               param="cluster_id", code="no_free_units")
            return row
        eligible = repo.list_clusters(session, principal, type="fine-tuning", base_model=spec.name, state="active")
        candidates = [row for row in eligible if may_use(row)]
        for row in candidates:
            if row.unit_count - self.held_units(session, row) >= need:
                return row
        if candidates:
            raise Conflict(
                f"every fine-tuning cluster of {spec.name} you may use is busy (a job needs {need} free "
                f"{spec.sizing.unit_type} units): wait for a job to end, grow a cluster, or create another",
                param="cluster_id", code="no_free_units",
            )  # fmt: skip
        raise Conflict(
            f"no active fine-tuning cluster of {spec.name} in your tenancy: create one first, e.g. "
            f"POST /v1/clusters {{\"name\": \"ft\", \"type\": \"fine-tuning\", \"unit_type\": "
            f"\"{spec.sizing.unit_type}\", \"unit_count\": {need}, \"base_model\": \"{spec.name}\"}} "
            f"(atelier cluster create ft --type fine-tuning --units {need} --model {spec.name})",
            param="cluster_id", code="no_cluster",
        )  # fmt: skip
