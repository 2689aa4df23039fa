"""Fixtures for the API tests: the real app and LocalEngine on a tiny random chat model.

One app per test module (migrating the database and building the model take a moment);
``client`` sends the administrator key, ``anon`` sends no key. The embedding model is the
real all-MiniLM-L6-v2, loaded lazily by the engine on the first embedding request.
Helpers are fixtures (``check_error``, ``make_app``) so that no test imports this file.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from atelier.api.app import create_app
from atelier.catalog import BUILTIN, Catalog, ModelSource, ModelSpec
from atelier.engine.client import LocalEngine
from atelier.engine.loading import tiny_loaded
from atelier.settings import Settings

ADMIN_KEY = "test-admin-key-123456"
AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}
TINY = ModelSpec(
    name="tiny", kind="chat", source=ModelSource(path="/nonexistent"), context_length=256, max_output_tokens=64
)
EMBEDDING_MODEL = "all-minilm-l6-v2"


def make_settings(path, **overrides) -> Settings:
    values = {"data_dir": path, "cache_dir": path / "cache", "admin_key": ADMIN_KEY, "threads": 1}
    return Settings(**{**values, **overrides})


def make_catalog() -> Catalog:
    return Catalog(list(BUILTIN) + [TINY])


@pytest.fixture(scope="module")
def api_settings(tmp_path_factory) -> Settings:
    return make_settings(tmp_path_factory.mktemp("atelier"))


@pytest.fixture(scope="module")
def make_settings_for_module():
    """``make_settings(path, **overrides)``, for modules that override ``api_settings``."""
    return make_settings


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return make_catalog()


@pytest.fixture(scope="module")
def engine(catalog, api_settings) -> Iterator[LocalEngine]:
    eng = LocalEngine(catalog, api_settings, preloaded={"tiny": tiny_loaded("tiny")})
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def app(api_settings, engine, catalog) -> FastAPI:
    return create_app(api_settings, engine=engine, catalog=catalog)


@pytest.fixture(scope="module")
def client(app) -> Iterator[TestClient]:
    with TestClient(app, headers=AUTH) as c:
        yield c


@pytest.fixture(scope="module")
def anon(app, client) -> TestClient:
    """A client without a key (the app's lifespan is already running through ``client``)."""
    return TestClient(app)


@pytest.fixture(scope="module")
def provision(client):
    """``provision(http, tenancy_id=None, fine_tuning=2, hosting=0, model="tiny")`` → ``{type: cluster id}``.

    Creates a fine-tuning cluster of ``fine_tuning`` small units and/or a hosting cluster of
    ``hosting`` units on ``model`` through the API, as ``http``'s tenancy; for a tenancy other
    than the operator's (``tenancy_id`` given), the operator first raises its small-unit limit
    by what the clusters need (a new tenancy's limit is 0).
    """
    counter = iter(range(1_000_000))

    def make(http, tenancy_id=None, fine_tuning=2, hosting=0, model="tiny") -> dict[str, str]:
        if tenancy_id is not None:
            limits = client.get(f"/v1/tenancies/{tenancy_id}/limits").json()
            granted = limits["units"]["small"] + fine_tuning + hosting
            raised = client.put(f"/v1/tenancies/{tenancy_id}/limits", json={"units": {"small": granted}})
            assert raised.status_code == 200, raised.text
        made = {}
        for kind, units in (("fine-tuning", fine_tuning), ("hosting", hosting)):
            if units:
                body = {"name": f"{kind}-{next(counter)}", "type": kind, "unit_type": "small", "unit_count": units,
                        "base_model": model}
                created = http.post("/v1/clusters", json=body)
                assert created.status_code == 201, created.text
                made[kind] = created.json()["id"]
        return made

    return make


@pytest.fixture
def check_error():
    """``check_error(response, status, param=..., type_=...)`` → the ``error`` object, checked."""
    return assert_error


@pytest.fixture
def make_app(tmp_path):
    """``make_app(engine=None, **settings)``: a separate app on a fresh data dir (its own lifespan)."""

    def build(engine=None, catalog=None, **overrides) -> FastAPI:
        return create_app(make_settings(tmp_path, **overrides), engine=engine, catalog=catalog or make_catalog())

    return build


def assert_error(response, status: int, param: str | None = None, type_: str | None = None) -> dict:
    """Check an OpenAI error object and return its ``error`` member."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert {"message", "type", "param", "code"} <= set(error), error
    assert isinstance(error["message"], str) and error["message"]
    if param is not None:
        assert error["param"] == param, error
    if type_ is not None:
        assert error["type"] == type_, error
    return error
