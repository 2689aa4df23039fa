"""Fixtures of the job tests: a migrated SQLite file, a queue, two tenancies' principals."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from atelier.store.jobs import JobQueue
from atelier.principal import Principal
from atelier.store import Database, repos


@pytest.fixture
def db(tmp_path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'data' / 'atelier.db'}")
    database.migrate()
    yield database
    database.dispose()


@pytest.fixture
def queue(db: Database) -> JobQueue:
    return JobQueue(db)


def _principal(db: Database, name: str) -> Principal:
    with db.session() as s:
        return Principal(repos.create_tenancy(s, name).id, f"key_{name}", "admin")


@pytest.fixture
def alice(db: Database) -> Principal:
    return _principal(db, "alice")


@pytest.fixture
def bob(db: Database) -> Principal:
    return _principal(db, "bob")


def _wait_for(condition: Callable[[], object], timeout: float = 10.0, interval: float = 0.02) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"condition not met within {timeout} s")


@pytest.fixture
def wait_for() -> Callable[..., object]:
    """``wait_for(condition, timeout=10)``: poll until ``condition()`` is truthy, return it; fail on timeout."""
    return _wait_for
