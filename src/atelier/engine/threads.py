"""Which threads run parallel torch work: each engine's own thread, and short-lived threads for one-off work.

PyTorch's OpenMP runtime (libgomp) keeps a team of worker threads for every thread that
ever ran a parallel region, for as long as that thread lives. Once the process holds more
such workers than it has CPUs, libgomp "throttles" every team: its workers stop spinning
between parallel regions and sleep at once (a spin count of about 100, whatever
``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT`` say), so each of the ~1,000 small ops of a decode
step pays a futex wake-up. Measured on 2 cores: a 1536x576 matmul takes 35 µs on the only
team and 140 µs once a second team exists; one request's decode runs at half speed.

So one-off work (loading a model, an embedding batch, a benchmark's baseline) runs in a
fresh thread that exits with its team, never in a long-lived pool thread such as
``asyncio.to_thread``'s or the main thread. Each chat model's scheduler thread keeps its own
team for its lifetime: with several chat models loaded on a 2-core machine the teams are
throttled (each model's decode is slower, none is wrong). Knows nothing about models.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def in_fresh_thread(fn: Callable[[], T], name: str = "torch-once") -> T:
    """Run ``fn`` in a new thread, wait for it, return its result or raise its exception."""
    box: dict[str, object] = {}

    def target() -> None:
        try:
            box["result"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            box["error"] = exc

    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["result"]  # type: ignore[return-value]
