"""Proof (f): schemathesis generates requests from the OpenAPI document for every operation,
sent with two tenancies' keys; the service answers none of them with a server error.

Runs in process on the tiny random chat model (the answers' content does not matter here,
only that no input reaches a 5xx). Request limits are raised so that generated traffic is
not merely refused with 429.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

pytestmark = pytest.mark.slow

EXAMPLES = 10


@pytest.fixture(scope="module")
def api_settings(tmp_path_factory, make_settings_for_module):
    """The tiny model is the default chat model here: generated requests never load the real one."""
    return make_settings_for_module(
        tmp_path_factory.mktemp("fuzz"), default_chat_model="tiny", rate_requests_per_minute=1_000_000
    )


@pytest.fixture(scope="module")
def keys(client) -> dict[str, str]:
    created = client.post("/v1/tenancies", json={"name": "fuzz-beta"})
    assert created.status_code == 201, created.text
    return {"alpha": client.headers["Authorization"], "beta": f"Bearer {created.json()['admin_key']}"}


@pytest.fixture(scope="module")
def api_schema(app, client, keys):
    return schemathesis.openapi.from_asgi("/openapi.json", app)


def test_no_server_errors(api_schema, keys):
    """Every operation, ``EXAMPLES`` generated cases each, sent with both tenancies' keys."""
    calls = errors = operations = 0
    failures: list[str] = []
    for result in api_schema.get_all_operations():
        operation = result.ok()
        operations += 1

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def run(case):
            nonlocal calls, errors
            for tenancy, key in keys.items():
                response = case.call(headers={"Authorization": key}, timeout=60)
                calls += 1
                if response.status_code >= 500:
                    errors += 1
                    failures.append(f"{tenancy}: {case.method} {case.formatted_path} -> {response.text[:300]}")

        run()
    print(f"schemathesis operations: {operations}, calls: {calls}, server errors: {errors}")
    assert operations >= 30 and calls > operations
    assert errors == 0, "\n".join(failures[:20])
