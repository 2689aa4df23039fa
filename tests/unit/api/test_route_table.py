"""Every route of the app is in the one route table, and the table names no dead route."""

from __future__ import annotations

import pytest

from atelier.api.route_table import ROUTES, Rule, rule_for
from atelier.security.policy import OPERATIONS, RESOURCE_TYPES

HTTP_METHODS = {"get", "post", "put", "patch", "delete"}
OUTSIDE_SCHEMA = {("GET", "/metrics")}
"""Routes kept out of the OpenAPI document on purpose (scraped by Prometheus, not clients)."""


def app_routes(app) -> set[tuple[str, str]]:
    """(METHOD, path template) of every operation the app serves, from its OpenAPI document."""
    paths = app.openapi()["paths"]
    return {(m.upper(), path) for path, ops in paths.items() for m in ops if m in HTTP_METHODS}


def test_every_route_is_in_the_table(app):
    missing = sorted(app_routes(app) - set(ROUTES))
    assert not missing, f"add these routes to atelier.api.route_table.ROUTES: {missing}"


def test_the_table_names_only_routes_that_exist(app):
    stale = sorted(set(ROUTES) - app_routes(app) - OUTSIDE_SCHEMA)
    assert not stale, f"ROUTES names routes the app does not serve: {stale}"


def test_policy_rules_name_known_types_and_operations():
    for key, rule in ROUTES.items():
        if rule.who == "policy":
            assert rule.resource_type in RESOURCE_TYPES, key
            assert rule.operation in OPERATIONS, key


def test_rule_for_prefers_literal_segments():
    assert rule_for("get", "/health") == ("/health", ROUTES[("GET", "/health")])
    template, _ = rule_for("GET", "/v1/models/smollm2-135m-instruct")
    assert template == "/v1/models/{model}"
    with pytest.raises(LookupError, match="missing from atelier.api.route_table.ROUTES"):
        rule_for("GET", "/v1/no-such-route")


def test_a_policy_rule_needs_a_type_and_an_operation():
    with pytest.raises(ValueError):
        Rule("policy")
    with pytest.raises(ValueError):
        Rule("admin", "files", "get")
    assert Rule("policy", "files", "delete").verb == "manage"
