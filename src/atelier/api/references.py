"""Ids named in a request body: one that is not the caller's is bad input, not a 404.

A path id that is missing or another tenancy's answers 404 (the object the route is
about does not exist for this caller). An id inside a body (``user_id``, ``parent``) is a
parameter of the request: if it names nothing the caller may use, the request is
malformed, so it answers 400 naming the field, with one message for missing and foreign
ids ("... not found or not authorized").
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from atelier.errors import InvalidInput, NotFound


def not_authorized(what: str, param: str) -> InvalidInput:
    """The 400 for a body id that names nothing the caller may use (``what``: e.g. ``user 'usr_1'``)."""
    return InvalidInput(f"{what} not found or not authorized", param=param)


@contextmanager
def body_reference(param: str) -> Iterator[None]:
    """Turn a ``NotFound`` raised while resolving body field ``param`` into that 400.

    Wrap only the lookup of the body id: the route's own (path) object must stay 404.
    """
    try:
        yield
    except NotFound as exc:
        what = exc.message.removesuffix(" not found")
        raise not_authorized(what, param) from None
