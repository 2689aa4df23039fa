"""Fixtures shared by the unit tests: a clean environment and a migrated SQLite database."""

from __future__ import annotations

import pytest

from atelier.store.db import Database


@pytest.fixture(autouse=True)
def _no_atelier_env(monkeypatch):
    """No root key or data dir leaks in from the environment of whoever runs the tests."""
    for name in ("ATELIER_ROOT_KEY", "ATELIER_ROOT_KEY_FILE", "ATELIER_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def db(tmp_path):
    """A freshly migrated SQLite database in the test's temporary directory."""
    database = Database(f"sqlite:///{tmp_path / 'atelier.db'}")
    database.migrate()
    yield database
    database.dispose()
