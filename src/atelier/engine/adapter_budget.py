"""The adapters' bookkeeping shared by the engines: the memory budget (least recently used idle adapters
make room) and taking an adapter out of the tables.

Both engines keep their adapters in an ``OrderedDict`` by key (least recently used first) and
a dict by slot; an adapter has ``key``, ``slot``, ``nbytes`` and ``in_use`` (requests under
way pin it). Knows nothing about models or servers.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol

from atelier.errors import Unavailable


class Budgeted(Protocol):
    key: str
    slot: int
    nbytes: int
    in_use: int


def make_room(adapters: OrderedDict[str, Any], slots: dict[int, Any], nbytes: int, budget_mb: float,
              evictable: Callable[[Any], bool] = lambda a: a.in_use == 0) -> list[Any]:
    """Take least recently used evictable adapters out of both tables until ``nbytes`` more fit the budget.

    Call it with the engine's lock held. The caller unloads what it returns.

    Raises:
        Unavailable: Even after evicting every idle adapter, ``nbytes`` do not fit (the tables are left as they were).
    """
    budget = int(budget_mb * 2**20)
    evicted = []
    used = sum(a.nbytes for a in slots.values())
    for adapter in list(adapters.values()):
        if used + nbytes <= budget:
            break
        if evictable(adapter):
            used -= adapter.nbytes
            slots.pop(adapter.slot, None)
            adapters.pop(adapter.key, None)
            evicted.append(adapter)
    if used + nbytes > budget:
        for adapter in evicted:  # nothing happened: put them back
            slots[adapter.slot] = adapter
            adapters[adapter.key] = adapter
        raise Unavailable(
            f"the adapter needs {nbytes / 2**20:.1f} MB and the adapter memory budget ({budget_mb} MB) is held by "
            "adapters in use; retry later",
        )
    return evicted


def take_out(adapters: OrderedDict[str, Any], slots: dict[int, Any], slot: int) -> Any | None:
    """Remove the adapter of ``slot`` from both tables (call it with the engine's lock held); it, or None."""
    adapter = slots.pop(slot, None)
    if adapter is not None and adapters.get(adapter.key) is adapter:
        del adapters[adapter.key]
    return adapter
