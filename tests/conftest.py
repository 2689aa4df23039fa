"""Fixtures shared by every test directory: a local Ray for the tests that run jobs on it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture(scope="module")
def local_ray() -> Iterator[Any]:
    """A Ray started by the test, on this machine only: 2 CPUs, no dashboard, no usage statistics.

    Its processes inherit the environment of ``ray.init``: no ``ATELIER_*`` variable of the
    shell that runs the tests leaks into the actors.
    """
    import ray

    with pytest.MonkeyPatch.context() as mp:
        for name in [k for k in os.environ if k.startswith("ATELIER_")]:
            mp.delenv(name)
        mp.setenv("RAY_USAGE_STATS_ENABLED", "0")
        ray.init(address="local", num_cpus=2, include_dashboard=False)  # a new one, never a cluster found here
    try:
        yield ray
    finally:
        ray.shutdown()
