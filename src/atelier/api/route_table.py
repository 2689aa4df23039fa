"""Who may call each route: the one table of every route of the app and its rule.

``ROUTES`` maps every route (method and path template) to who may call it: the public
(``/health``), any authenticated caller, the tenancy's administrators, the service
operator, or a policy decision on a resource type with a minimum verb. A test walks
``app.routes`` and fails if one is missing here, so a new route cannot slip past. Enforced
by ``api/access.py``; knows nothing about requests.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from starlette.routing import compile_path

from atelier.security.policy import Operation, min_verb

Who = Literal["public", "authenticated", "admin", "operator", "policy"]


@dataclass(frozen=True)
class Rule:
    """Who may call a route. For ``policy``: the resource type and the operation it performs."""

    who: Who
    resource_type: str | None = None
    operation: Operation | None = None

    def __post_init__(self) -> None:
        if (self.who == "policy") != (self.resource_type is not None and self.operation is not None):
            raise ValueError("a policy rule names a resource type and an operation; other rules name neither")

    @property
    def verb(self) -> str | None:
        """The minimum verb the route needs (policy rules only)."""
        return min_verb(self.operation) if self.operation else None


PUBLIC = Rule("public")
AUTHENTICATED = Rule("authenticated")
"""Any valid key of any tenancy: base-model inference and the catalog, shared by all."""
ADMIN = Rule("admin")
"""The tenancy's administrators: identity (users, groups, compartments, API keys), audit, alerts."""
OPERATOR = Rule("operator")
"""The service operator only: tenancies, service limits, metrics."""


def policy(resource_type: str, operation: Operation) -> Rule:
    """A route decided by the tenancy's policies."""
    return Rule("policy", resource_type, operation)


ROUTES: dict[tuple[str, str], Rule] = {
    ("GET", "/health"): PUBLIC,
    # inference on base models and the shared catalog
    ("POST", "/v1/chat/completions"): AUTHENTICATED,
    ("POST", "/v1/completions"): AUTHENTICATED,
    ("POST", "/v1/embeddings"): AUTHENTICATED,
    ("POST", "/v1/tokenize"): AUTHENTICATED,
    ("GET", "/v1/models"): AUTHENTICATED,
    ("GET", "/v1/models/{model}"): AUTHENTICATED,
    # audit log
    ("GET", "/v1/audit"): ADMIN,
    ("GET", "/v1/audit/verify"): OPERATOR,
    # monitoring: anomaly alerts (administrators: their tenancy's; the operator: all), metrics
    ("GET", "/v1/alerts"): ADMIN,
    ("GET", "/metrics"): OPERATOR,
    # a tenancy's request limits (the operator)
    ("GET", "/v1/tenancies/{tenancy_id}/limits"): OPERATOR,
    ("PUT", "/v1/tenancies/{tenancy_id}/limits"): OPERATOR,
    # the tenancy's key ring
    ("GET", "/v1/key-ring"): policy("keys", "get"),
    ("POST", "/v1/key-ring/rotate"): policy("keys", "create"),
    ("POST", "/v1/key-ring/rewrap"): policy("keys", "create"),
    ("POST", "/v1/key-ring/retire"): policy("keys", "create"),
    # tenancies (the operator)
    ("POST", "/v1/tenancies"): OPERATOR,
    ("GET", "/v1/tenancies"): OPERATOR,
    ("GET", "/v1/tenancies/{tenancy_id}"): OPERATOR,
    # identity (the tenancy's administrators)
    ("POST", "/v1/compartments"): ADMIN,
    ("GET", "/v1/compartments"): ADMIN,
    ("GET", "/v1/compartments/{compartment_id}"): ADMIN,
    ("PATCH", "/v1/compartments/{compartment_id}"): ADMIN,
    ("DELETE", "/v1/compartments/{compartment_id}"): ADMIN,
    ("POST", "/v1/users"): ADMIN,
    ("GET", "/v1/users"): ADMIN,
    ("GET", "/v1/users/{user_id}"): ADMIN,
    ("PATCH", "/v1/users/{user_id}"): ADMIN,
    ("DELETE", "/v1/users/{user_id}"): ADMIN,
    ("POST", "/v1/groups"): ADMIN,
    ("GET", "/v1/groups"): ADMIN,
    ("GET", "/v1/groups/{group_id}"): ADMIN,
    ("PATCH", "/v1/groups/{group_id}"): ADMIN,
    ("DELETE", "/v1/groups/{group_id}"): ADMIN,
    ("POST", "/v1/groups/{group_id}/members"): ADMIN,
    ("DELETE", "/v1/groups/{group_id}/members/{user_id}"): ADMIN,
    # API keys: anyone manages their own keys, administrators every key (decided in api/resources/api_keys.py)
    ("POST", "/v1/api-keys"): AUTHENTICATED,
    ("GET", "/v1/api-keys"): AUTHENTICATED,
    ("GET", "/v1/api-keys/{key_id}"): AUTHENTICATED,
    ("POST", "/v1/api-keys/{key_id}/rotate"): AUTHENTICATED,
    ("DELETE", "/v1/api-keys/{key_id}"): AUTHENTICATED,
    # policies, decided by policies; editing one needs manage, as in OCI
    ("POST", "/v1/policies"): policy("policies", "create"),
    ("GET", "/v1/policies"): policy("policies", "list"),
    ("GET", "/v1/policies/{policy_id}"): policy("policies", "get"),
    ("PUT", "/v1/policies/{policy_id}"): policy("policies", "create"),
    ("DELETE", "/v1/policies/{policy_id}"): policy("policies", "delete"),
    # uploaded files (OpenAI's /v1/files), decided by policies on each file's compartment
    ("POST", "/v1/files"): policy("files", "create"),
    ("GET", "/v1/files"): policy("files", "list"),
    ("GET", "/v1/files/{file_id}"): policy("files", "get"),
    ("GET", "/v1/files/{file_id}/content"): policy("files", "get"),
    ("DELETE", "/v1/files/{file_id}"): policy("files", "delete"),
    # evaluations are jobs of the same family; cancelling one is an update
    ("POST", "/v1/evaluations"): policy("fine-tuning-jobs", "create"),
    ("GET", "/v1/evaluations"): policy("fine-tuning-jobs", "list"),
    ("GET", "/v1/evaluations/{evaluation_id}"): policy("fine-tuning-jobs", "get"),
    ("POST", "/v1/evaluations/{evaluation_id}/cancel"): policy("fine-tuning-jobs", "update"),
    ("GET", "/v1/evaluations/{evaluation_id}/events"): policy("fine-tuning-jobs", "get"),
    # fine-tuning jobs (OpenAI's /v1/fine_tuning/jobs); cancelling one is an update
    ("POST", "/v1/fine_tuning/jobs"): policy("fine-tuning-jobs", "create"),
    ("GET", "/v1/fine_tuning/jobs"): policy("fine-tuning-jobs", "list"),
    ("GET", "/v1/fine_tuning/jobs/{fine_tuning_job_id}"): policy("fine-tuning-jobs", "get"),
    ("POST", "/v1/fine_tuning/jobs/{fine_tuning_job_id}/cancel"): policy("fine-tuning-jobs", "update"),
    ("GET", "/v1/fine_tuning/jobs/{fine_tuning_job_id}/events"): policy("fine-tuning-jobs", "get"),
    ("GET", "/v1/fine_tuning/jobs/{fine_tuning_job_id}/checkpoints"): policy("fine-tuning-jobs", "get"),
    ("GET", "/v1/fine_tuning/jobs/{fine_tuning_job_id}/tensorboard"): policy("fine-tuning-jobs", "get"),
    # custom models (fine-tuned adapters); invoking one in chat is checked by the chat route
    ("GET", "/v1/custom-models"): policy("custom-models", "list"),
    ("GET", "/v1/custom-models/{custom_model_id}"): policy("custom-models", "get"),
    ("GET", "/v1/custom-models/{custom_model_id}/adapter"): policy("custom-models", "get"),
    ("DELETE", "/v1/custom-models/{custom_model_id}"): policy("custom-models", "delete"),
    # dedicated AI clusters; running a job or hosting an endpoint on one needs "use" (checked by those routes)
    ("POST", "/v1/clusters"): policy("clusters", "create"),
    ("GET", "/v1/clusters"): policy("clusters", "list"),
    ("GET", "/v1/clusters/{cluster_id}"): policy("clusters", "get"),
    ("PATCH", "/v1/clusters/{cluster_id}"): policy("clusters", "update"),
    ("DELETE", "/v1/clusters/{cluster_id}"): policy("clusters", "delete"),
    # endpoints; invoking one in chat is checked by the chat route
    ("POST", "/v1/endpoints"): policy("endpoints", "create"),
    ("GET", "/v1/endpoints"): policy("endpoints", "list"),
    ("GET", "/v1/endpoints/{endpoint_id}"): policy("endpoints", "get"),
    ("PATCH", "/v1/endpoints/{endpoint_id}"): policy("endpoints", "update"),
    ("DELETE", "/v1/endpoints/{endpoint_id}"): policy("endpoints", "delete"),
    # cost: estimates for anyone, the metered cost of the clusters one may inspect
    ("POST", "/v1/cost-estimate"): AUTHENTICATED,
    ("GET", "/v1/costs"): policy("clusters", "list"),
    # knowledge bases; their documents and searches are decided on the knowledge base itself
    ("POST", "/v1/knowledge-bases"): policy("knowledge-bases", "create"),
    ("GET", "/v1/knowledge-bases"): policy("knowledge-bases", "list"),
    ("GET", "/v1/knowledge-bases/{knowledge_base_id}"): policy("knowledge-bases", "get"),
    ("DELETE", "/v1/knowledge-bases/{knowledge_base_id}"): policy("knowledge-bases", "delete"),
    ("POST", "/v1/knowledge-bases/{knowledge_base_id}/documents"): policy("knowledge-bases", "update"),
    ("POST", "/v1/knowledge-bases/{knowledge_base_id}/documents/batch"): policy("knowledge-bases", "update"),
    ("GET", "/v1/knowledge-bases/{knowledge_base_id}/documents"): policy("knowledge-bases", "get"),
    ("GET", "/v1/knowledge-bases/{knowledge_base_id}/documents/{document_id}"): policy("knowledge-bases", "get"),
    ("DELETE", "/v1/knowledge-bases/{knowledge_base_id}/documents/{document_id}"): policy("knowledge-bases", "update"),
    ("POST", "/v1/knowledge-bases/{knowledge_base_id}/query"): policy("knowledge-bases", "invoke"),
    ("POST", "/v1/knowledge-bases/{knowledge_base_id}/answer"): policy("knowledge-bases", "invoke"),
}
"""(METHOD, path template) → rule. Every route of the app must appear here."""


def rule_for(method: str, path: str) -> tuple[str, Rule]:
    """The template and rule of the route serving ``method`` on a concrete ``path``.

    Matched against the templates of ``ROUTES`` (a literal segment wins over a parameter),
    so the answer does not depend on how routers were nested.

    Raises:
        LookupError: No template matches (a route missing from ``ROUTES``: add it).
    """
    method = method.upper()
    if (method, path) in ROUTES:
        return path, ROUTES[(method, path)]
    matches = [
        template
        for (m, template), regex in _compiled().items()
        if m == method and regex.fullmatch(path)
    ]
    if not matches:
        raise LookupError(f"route {method} {path} is missing from atelier.api.route_table.ROUTES")
    template = min(matches, key=lambda t: t.count("{"))
    return template, ROUTES[(method, template)]


_COMPILED: dict[tuple[str, str], re.Pattern[str]] = {}


def _compiled() -> dict[tuple[str, str], re.Pattern[str]]:
    if len(_COMPILED) != len(ROUTES):
        _COMPILED.clear()
        for key in ROUTES:
            _COMPILED[key] = compile_path(key[1])[0]
    return _COMPILED
