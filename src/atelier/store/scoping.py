"""Reading one row of a tenancy: the rule every repository applies, in one place.

A row of another tenancy is ``NotFound`` with exactly the message a missing one gets, so
that ids cannot be probed across tenancies. The owner is the caller's ``Principal``, or a
tenancy id where a worker acts for a job's tenancy. Knows nothing about what the rows are.
"""

from __future__ import annotations

from typing import TypeVar

from sqlalchemy.orm import Session

from atelier.errors import NotFound
from atelier.principal import Principal

T = TypeVar("T")


def tenancy_of(owner: Principal | str) -> str:
    """The tenancy id of an owner (a caller, or a tenancy id)."""
    return owner.tenancy_id if isinstance(owner, Principal) else owner


def scoped_get(session: Session, owner: Principal | str, table: type[T], row_id: object, what: str, *,
               param: str | None = None, code: str | None = None) -> T:
    """The row ``row_id`` of ``table`` in the owner's tenancy.

    Raises:
        NotFound: Missing, or another tenancy's (``"<what> '<id>' not found"``).
    """
    row = session.get(table, row_id) if isinstance(row_id, str) and row_id else None
    if row is None or row.tenancy_id != tenancy_of(owner):
        raise NotFound(f"{what} {row_id!r} not found", param=param, code=code)
    return row
