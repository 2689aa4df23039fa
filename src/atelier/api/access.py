"""Enforcement in one place: key → principal → tenancy → policy decision, before any work.

``ROUTES`` maps every route of the app (method and path template) to who may call it: the
public (``/health``), any authenticated caller, the tenancy's administrators, the service
operator, or a policy decision on a resource type with a minimum verb. A test walks
``app.routes`` and fails if one is missing here, so a new route cannot slip past.

The ``authorize`` dependency runs on every ``/v1`` route: it authenticates the bearer key,
applies the tenancy's request limits, decides the route's rule, appends the decision to the
audit log (a request whose decision cannot be logged is refused), and hands the route an
:class:`Access`. Routes and services call :meth:`Access.require` once they have loaded a
target object (its id, name and compartment path): an object the caller may not even
inspect answers 404 exactly like a missing one; a visible object with too weak a verb, 403.
"""

from __future__ import annotations

import functools
import logging
import re
import uuid
from dataclasses import dataclass, field
from typing import Annotated, Literal

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.routing import compile_path

from atelier.errors import Forbidden, NotFound, Unauthenticated, Unavailable
from atelier.principal import ADMINISTRATORS, Principal
from atelier.security.api_keys import authenticate
from atelier.security.policy import Decision, Operation, Request as PolicyRequest, Statement, evaluate, min_verb
from atelier.security.policy import parse_policy
from atelier.store import repos

log = logging.getLogger(__name__)

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
    # fine-tuning jobs (OpenAI's /v1/fine_tuning/jobs); cancelling one is an update
    ("POST", "/v1/fine_tuning/jobs"): policy("fine-tuning-jobs", "create"),
    ("GET", "/v1/fine_tuning/jobs"): policy("fine-tuning-jobs", "list"),
    ("GET", "/v1/fine_tuning/jobs/{fine_tuning_job_id}"): policy("fine-tuning-jobs", "get"),
    ("POST", "/v1/fine_tuning/jobs/{fine_tuning_job_id}/cancel"): policy("fine-tuning-jobs", "update"),
    ("GET", "/v1/fine_tuning/jobs/{fine_tuning_job_id}/events"): policy("fine-tuning-jobs", "get"),
    ("GET", "/v1/fine_tuning/jobs/{fine_tuning_job_id}/checkpoints"): policy("fine-tuning-jobs", "get"),
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
        raise LookupError(f"route {method} {path} is missing from atelier.api.access.ROUTES")
    template = min(matches, key=lambda t: t.count("{"))
    return template, ROUTES[(method, template)]


_COMPILED: dict[tuple[str, str], re.Pattern[str]] = {}


def _compiled() -> dict[tuple[str, str], re.Pattern[str]]:
    if len(_COMPILED) != len(ROUTES):
        _COMPILED.clear()
        for key in ROUTES:
            _COMPILED[key] = compile_path(key[1])[0]
    return _COMPILED


@dataclass
class Access:
    """What one authenticated request may do; handed to routes by ``AccessDep``."""

    principal: Principal
    statements: list[Statement]
    rule: Rule
    request_id: str
    decision: Decision | None = None
    checks: list[Decision] = field(default_factory=list)

    def decide(
        self,
        operation: Operation,
        resource_type: str,
        *,
        target_id: str | None = None,
        target_name: str | None = None,
        compartment_path: tuple[str, ...] = (),
    ) -> Decision:
        """The policy decision for this caller on one operation (pure; nothing raised)."""
        return evaluate(
            self.statements,
            PolicyRequest(
                principal_id=self.principal.id,
                groups=self.principal.groups,
                operation=operation,
                resource_type=resource_type,
                compartment_path=compartment_path,
                target_id=target_id,
                target_name=target_name,
            ),
        )

    def require(
        self,
        operation: Operation,
        resource_type: str,
        *,
        target_id: str | None = None,
        target_name: str | None = None,
        compartment_path: tuple[str, ...] = (),
        what: str | None = None,
    ) -> Decision:
        """Allow ``operation`` on a loaded object of the caller's tenancy, or raise.

        Raises:
            NotFound: The caller may not even inspect the object: exactly what a missing
                object answers (``what`` names it in the message, e.g. ``"policy 'pol_1'"``).
            Forbidden: The object is visible but the caller's verb is too weak.
        """
        target = {"target_id": target_id, "target_name": target_name, "compartment_path": compartment_path}
        decision = self.decide(operation, resource_type, **target)
        self.checks.append(decision)
        if decision.allowed:
            return decision
        if operation != "list" and not self.decide("list", resource_type, **target).allowed:
            raise NotFound(f"{what or resource_type.rstrip('s') + ' ' + repr(target_id)} not found")
        raise Forbidden(
            f"not authorized: {decision.reason}; ask an administrator for a policy granting "
            f"'{min_verb(operation)}' on {resource_type}"
        )

    def visible(self, resource_type: str, *, target_id: str | None, target_name: str | None,
                compartment_path: tuple[str, ...] = ()) -> bool:
        """Whether a listed object may be shown (``inspect`` on it)."""
        return self.decide(
            "list", resource_type, target_id=target_id, target_name=target_name, compartment_path=compartment_path
        ).allowed


bearer_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    bearerFormat="atl_<key id>_<secret>",
    description="An Atelier API key, sent as `Authorization: Bearer <key>`.",
)


def request_id_of(request: Request) -> str:
    """The request's id (set by the audit middleware; generated here if absent)."""
    rid = getattr(request.state, "request_id", None)
    if rid is None:
        rid = request.state.request_id = f"req_{uuid.uuid4().hex}"
    return rid


def _principal(request: Request, credentials: HTTPAuthorizationCredentials | None) -> Principal:
    header = request.headers.get("authorization", "").strip()
    if credentials is None and header and header.split()[0].lower() != "bearer":
        raise Unauthenticated("The Authorization header must use the Bearer scheme: Authorization: Bearer <key>.")
    raw = credentials.credentials if credentials is not None else None
    with request.app.state.db.session() as session:
        principal = authenticate(session, raw)
        if principal.role in ("operator", "admin"):  # keys made before users existed
            principal = Principal(
                principal.tenancy_id, principal.key_id, principal.role, principal.user_id,
                principal.groups | {ADMINISTRATORS},
            )
        texts = repos.policy_texts(session, principal.tenancy_id)
    request.state.principal = principal
    request.state.policy_texts = texts
    return principal


@functools.lru_cache(maxsize=1024)
def _parsed(text: str) -> tuple[Statement, ...]:
    """One stored policy's statements, parsed once per distinct text (not on every request)."""
    return tuple(parse_policy(text))  # stored policies were validated when written


def _statements(texts: list[str]) -> list[Statement]:
    return [statement for text in texts for statement in _parsed(text)]


def _record(request: Request, access: Access, decision: str, statement: str | None, outcome: str) -> None:
    """Append the decision to the audit log before any work; refuse the request if it fails."""
    audit = getattr(request.app.state, "audit", None)
    if audit is None:
        return
    request.state.audit_decision = {"decision": decision, "statement": statement}
    try:
        audit.record_decision(request, access.principal, decision=decision, statement=statement, outcome=outcome)
    except Exception as exc:  # noqa: BLE001 - any failure to log refuses the request
        log.exception("audit log unavailable")
        raise Unavailable("the audit log cannot be written; the request was refused") from exc


def authorize(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> Access:
    """The one gate of every ``/v1`` route (see the module docstring).

    Raises:
        Unauthenticated: No key, or a wrong, revoked or expired one (401).
        QuotaExceeded: The tenancy is over a request limit (429).
        Forbidden: The route needs an administrator, the operator, or a verb no policy grants (403).
        Unavailable: The audit log cannot be written (503).
    """
    template, rule = rule_for(request.method, request.scope["path"])
    request.state.route_template = template
    principal = _principal(request, credentials)
    limits = getattr(request.app.state, "limits", None)
    if limits is not None:
        limits.check_request(principal)
    access = Access(principal, _statements(request.state.policy_texts), rule, request_id_of(request))
    request.state.access = access
    if rule.who in ("public", "authenticated"):
        _record(request, access, "allow", None, "authenticated")
    elif rule.who == "operator":
        if not principal.is_operator:
            _record(request, access, "deny", None, "not the operator")
            raise Forbidden("this route is for the service operator only")
        _record(request, access, "allow", None, "operator")
    elif rule.who == "admin":
        if not principal.is_admin:
            _record(request, access, "deny", None, f"not in group {ADMINISTRATORS}")
            raise Forbidden(f"this route is for the tenancy's administrators (group {ADMINISTRATORS})")
        _record(request, access, "allow", None, f"group {ADMINISTRATORS}")
    else:
        assert rule.resource_type is not None and rule.operation is not None
        # Type level: may the caller do this operation on this type anywhere? Object-level
        # checks (compartment, target conditions) follow in Access.require once loaded.
        decision = _anywhere(access, rule.operation, rule.resource_type)
        access.decision = decision
        if not decision.allowed:
            _record(request, access, "deny", None, decision.reason)
            raise Forbidden(
                f"not authorized: no policy grants your groups '{rule.verb}' on {rule.resource_type}"
            )
        _record(request, access, "allow", decision.statement.text if decision.statement else None, "policy")
    return access


def _anywhere(access: Access, operation: Operation, resource_type: str) -> Decision:
    """A decision ignoring compartment and conditions: does any statement grant the verb at all?"""
    relaxed = [
        Statement(s.group, s.verb, s.resource_type, (), None, s.line) for s in access.statements
    ]
    return evaluate(
        relaxed,
        PolicyRequest(
            principal_id=access.principal.id,
            groups=access.principal.groups,
            operation=operation,
            resource_type=resource_type,
        ),
    )


AccessDep = Annotated[Access, Depends(authorize)]
require_access = Depends(authorize)
"""For ``dependencies=[...]`` on routers whose every route needs an authorized caller."""
