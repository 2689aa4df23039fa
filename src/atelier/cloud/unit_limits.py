"""Per-tenancy service limits on units: how many units of each type a tenancy's clusters may hold.

As in OCI, a tenancy may hold **0** units of every type until the operator raises its
limits (``PUT /v1/tenancies/{id}/limits`` with ``units``, or ``atelier admin limits set
--units small=8``); only the ``default`` tenancy gets some on the very first start
(``Settings.default_tenancy_units``). Units in use are the unit counts of the tenancy's
clusters that are neither deleted nor failed. Creating or growing a cluster past the limit
is a ``Conflict`` (409, code ``limit_exceeded``) that says how many units it needs, how
many are used and what the limit is. Knows nothing about HTTP.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from atelier.cloud.units import UnitTable
from atelier.errors import Conflict, InvalidInput
from atelier.store import clusters as repo
from atelier.store.clusters import units_in_use


def unit_limits(session: Session, tenancy_id: str, table: UnitTable) -> dict[str, int]:
    """The tenancy's limit for every unit type of the table (0 where none was set)."""
    stored = repo.stored_unit_limits(session, tenancy_id)
    return {name: stored.get(name, 0) for name in table.names()}


def set_unit_limits(session: Session, tenancy_id: str, units: dict[str, int], table: UnitTable) -> dict[str, int]:
    """Set the limits of the unit types named in ``units`` (the others keep theirs).

    A limit may be set below the units in use: existing clusters keep running, but none
    may be created or grown until the tenancy is back under it.

    Returns:
        Every unit type's limit after the change.

    Raises:
        InvalidInput: An unknown unit type, or a count that is not an integer from 0 to 1000
            (``param="units.<type>"``).
    """
    for name, count in units.items():
        table.get(name, param=f"units.{name}")
        if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= 1000:
            raise InvalidInput("a unit limit is an integer from 0 to 1000", param=f"units.{name}")
    for name, count in units.items():
        repo.store_unit_limit(session, tenancy_id, name, count)
    session.flush()
    return unit_limits(session, tenancy_id, table)


def require_units(session: Session, tenancy_id: str, table: UnitTable, unit_type: str, more: int,
                  *, what: str) -> None:
    """Refuse ``more`` units of ``unit_type`` that would take the tenancy past its limit.

    Args:
        session: The transaction that will add the units (it should hold the write lock).
        tenancy_id: The tenancy.
        table: The unit table.
        unit_type: The unit type asked for.
        more: Units to add (a new cluster's count, or a growth).
        what: What asks, for the message (``"the cluster"``, ``"growing to 8 units"``).

    Raises:
        Conflict: Past the limit (code ``limit_exceeded``, ``param="unit_count"``).
    """
    if more <= 0:
        return
    limit = unit_limits(session, tenancy_id, table).get(unit_type, 0)
    used = units_in_use(session, tenancy_id).get(unit_type, 0)
    if used + more > limit:
        raise Conflict(
            f"{what} needs {more} {unit_type} units; your tenancy uses {used} of its limit of {limit} "
            f"{unit_type} units. Ask the operator to raise it (atelier admin limits set <tenancy> "
            f"--units {unit_type}={used + more}), or delete or shrink a cluster.",
            param="unit_count", code="limit_exceeded",
        )  # fmt: skip
