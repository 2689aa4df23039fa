"""Response envelopes shared by the resource routes: lists, deletions and times.

A list answers ``{"object": "list", "data": [...]}`` and a deletion
``{"id", "object", "deleted": true}``, as OpenAI's API does; times are Unix seconds.
Knows nothing about the objects inside.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Generic, TypeVar

from pydantic import BaseModel, Field

T = TypeVar("T")


class ObjectList(BaseModel, Generic[T]):
    """A list of objects, oldest first."""

    object: str = Field("list", description="Always `list`.")
    data: list[T] = Field(description="The objects.")


class Deleted(BaseModel):
    """What a deletion answers."""

    id: str = Field(description="The deleted object's id.")
    object: str = Field(description="The deleted object's type, e.g. `user`.")
    deleted: bool = Field(True, description="Always true.")


def unix(moment: datetime | None) -> int | None:
    """Unix seconds of a stored time (SQLite returns it naive, in UTC); None stays None."""
    if moment is None:
        return None
    return int((moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp())
