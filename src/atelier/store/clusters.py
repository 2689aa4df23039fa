"""Repository of dedicated AI clusters, their endpoints and the tenancy unit limits.

The only code that queries ``clusters``, ``endpoints`` and ``tenancy_unit_limits``. Every
function takes the caller's ``Principal`` (or, for counts that span a cluster, the cluster
id it already checked) and a session; another tenancy's row is ``NotFound`` exactly like a
missing one. ``locked`` opens the write transaction in which capacity and unit checks stay
true until commit. Knows nothing about sizing rules, prices or HTTP.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from atelier.errors import Conflict
from atelier.principal import Principal
from atelier.store.db import Database
from atelier.store.scoping import scoped_get
from atelier.store.tables import Cluster, Endpoint, Job, Tenancy, TenancyUnitLimit, utcnow

JOBS_HOLDING_UNITS = ("validating_files", "queued", "running")
"""Job states in which a fine-tuning job holds its units of its cluster."""
ENDPOINTS_HOLDING_CAPACITY = ("creating", "active", "updating", "deleting")
"""Endpoint states that take one of a hosting cluster's places."""
CLUSTERS_HOLDING_UNITS = ("creating", "active", "updating", "needs_attention", "deleting")
"""Cluster states whose units count against the tenancy's limit."""


@contextmanager
def locked(db: Database, tenancy_id: str) -> Iterator[Session]:
    """A write transaction holding the tenancy's lock: checks of free units or capacity made in it
    stay true until it commits (``BEGIN IMMEDIATE`` on SQLite, ``SELECT … FOR UPDATE`` elsewhere)."""
    with db.session() as session:
        if db.engine.dialect.name == "sqlite":
            session.connection().exec_driver_sql("BEGIN IMMEDIATE")
        else:
            session.execute(select(Tenancy.id).where(Tenancy.id == tenancy_id).with_for_update())
        yield session


# --- clusters -------------------------------------------------------------------------------


def get_cluster(session: Session, principal: Principal, cluster_id: str) -> Cluster:
    """The caller's cluster (a deleted one too).

    Raises:
        NotFound: No such cluster in the caller's tenancy.
    """
    return scoped_get(session, principal, Cluster, cluster_id, "cluster")


def list_clusters(session: Session, principal: Principal, *, include_deleted: bool = False,
                  type: str | None = None, base_model: str | None = None,
                  state: str | None = None) -> list[Cluster]:
    """The caller's clusters, oldest first, optionally of one type, base model or state."""
    query = select(Cluster).where(Cluster.tenancy_id == principal.tenancy_id)
    if not include_deleted:
        query = query.where(Cluster.state != "deleted")
    for column, value in ((Cluster.type, type), (Cluster.base_model, base_model), (Cluster.state, state)):
        if value is not None:
            query = query.where(column == value)
    return list(session.scalars(query.order_by(Cluster.created_at, Cluster.id)))


def require_free_name(session: Session, principal: Principal, table: type[Cluster] | type[Endpoint], name: str,
                      *, other_than: str | None = None) -> None:
    """Refuse a cluster or endpoint name another live one of the tenancy has.

    Raises:
        Conflict: The name is taken (``param="name"``).
    """
    query = select(table.id).where(table.tenancy_id == principal.tenancy_id, table.name == name,
                                   table.state != "deleted")
    if any(found != other_than for found in session.scalars(query)):
        noun = "cluster" if table is Cluster else "endpoint"
        raise Conflict(f"a {noun} named {name!r} already exists", param="name")


def endpoints_on(session: Session, cluster_id: str) -> int:
    """Endpoints that take a place on the cluster (every one not deleted or failed)."""
    query = select(func.count()).select_from(Endpoint).where(
        Endpoint.cluster_id == cluster_id, Endpoint.state.in_(ENDPOINTS_HOLDING_CAPACITY)
    )
    return int(session.scalar(query) or 0)


def jobs_on(session: Session, cluster_id: str) -> int:
    """Jobs under way on the cluster (validating files, queued or running)."""
    query = select(func.count()).select_from(Job).where(
        Job.cluster_id == cluster_id, Job.state.in_(JOBS_HOLDING_UNITS)
    )
    return int(session.scalar(query) or 0)


def started_jobs_on(session: Session, principal: Principal, cluster_ids: list[str]) -> list[Job]:
    """The caller's jobs that started on these clusters, oldest first (what metering bills)."""
    query = select(Job).where(Job.tenancy_id == principal.tenancy_id, Job.cluster_id.in_(cluster_ids),
                              Job.started_at.is_not(None))
    return list(session.scalars(query.order_by(Job.created_at, Job.id)))


# --- unit limits ----------------------------------------------------------------------------


def stored_unit_limits(session: Session, tenancy_id: str) -> dict[str, int]:
    """The unit limits set for the tenancy, by unit type (types never set are absent)."""
    query = select(TenancyUnitLimit).where(TenancyUnitLimit.tenancy_id == tenancy_id)
    return {row.unit_type: row.units for row in session.scalars(query)}


def store_unit_limit(session: Session, tenancy_id: str, unit_type: str, units: int) -> None:
    """Set one unit type's limit for the tenancy (flushed by the caller)."""
    row = session.get(TenancyUnitLimit, (tenancy_id, unit_type))
    if row is None:
        session.add(TenancyUnitLimit(tenancy_id=tenancy_id, unit_type=unit_type, units=units, updated_at=utcnow()))
    else:
        row.units, row.updated_at = units, utcnow()


def units_in_use(session: Session, tenancy_id: str) -> dict[str, int]:
    """Units held by the tenancy's clusters, by unit type (types with none are absent)."""
    query = (
        select(Cluster.unit_type, func.sum(Cluster.unit_count))
        .where(Cluster.tenancy_id == tenancy_id, Cluster.state.in_(CLUSTERS_HOLDING_UNITS))
        .group_by(Cluster.unit_type)
    )
    return {name: int(total or 0) for name, total in session.execute(query)}


# --- endpoints ------------------------------------------------------------------------------


def get_endpoint(session: Session, principal: Principal, endpoint_id: str) -> Endpoint:
    """The caller's endpoint (a deleted one too).

    Raises:
        NotFound: No such endpoint in the caller's tenancy.
    """
    return scoped_get(session, principal, Endpoint, endpoint_id, "endpoint")


def list_endpoints(session: Session, principal: Principal, *, include_deleted: bool = False,
                   cluster_id: str | None = None) -> list[Endpoint]:
    """The caller's endpoints, oldest first (deleted ones only when asked)."""
    query = select(Endpoint).where(Endpoint.tenancy_id == principal.tenancy_id)
    if not include_deleted:
        query = query.where(Endpoint.state != "deleted")
    if cluster_id is not None:
        query = query.where(Endpoint.cluster_id == cluster_id)
    return list(session.scalars(query.order_by(Endpoint.created_at, Endpoint.id)))


def endpoints_of(session: Session, principal: Principal, custom_model_id: str, *,
                 states: tuple[str, ...] = ("active",)) -> list[Endpoint]:
    """The caller's endpoints of a custom model in ``states``, oldest first."""
    query = select(Endpoint).where(
        Endpoint.tenancy_id == principal.tenancy_id, Endpoint.custom_model_id == custom_model_id,
        Endpoint.state.in_(states),
    )  # fmt: skip
    return list(session.scalars(query.order_by(Endpoint.created_at, Endpoint.id)))


def hosted_custom_models(session: Session, principal: Principal) -> set[str]:
    """Ids of the caller's custom models with an active endpoint."""
    query = select(Endpoint.custom_model_id).where(
        Endpoint.tenancy_id == principal.tenancy_id, Endpoint.state == "active",
        Endpoint.custom_model_id.is_not(None),
    ).group_by(Endpoint.custom_model_id)  # fmt: skip
    return set(session.scalars(query))
