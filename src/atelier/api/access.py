"""Enforcement in one place: key → principal → tenancy → policy decision, before any work.

``api/route_table.ROUTES`` says who may call each route of the app. The ``authorize``
dependency runs on every ``/v1`` route: it authenticates the bearer key, applies the
tenancy's request limits, decides the route's rule, appends the decision to the
audit log (a request whose decision cannot be logged is refused), and hands the route an
:class:`Access`. Routes and services call :meth:`Access.require` once they have loaded a
target object (its id, name and compartment path): an object the caller may not even
inspect answers 404 exactly like a missing one; a visible object with too weak a verb, 403.
"""

from __future__ import annotations

import functools
import logging
import uuid
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from atelier.api.route_table import Rule, rule_for
from atelier.api.services import services_of
from atelier.errors import Forbidden, NotFound, Unauthenticated, Unavailable
from atelier.principal import ADMINISTRATORS, Principal
from atelier.security.api_keys import authenticate
from atelier.security.policy import Decision, Operation, Request as PolicyRequest, Statement, evaluate, min_verb
from atelier.security.policy import parse_policy
from atelier.store import repos

log = logging.getLogger(__name__)


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

    def require(self, operation: Operation, resource_type: str, *, what: str | None = None, **target) -> Decision:
        """Allow ``operation`` on a loaded object of the caller's tenancy, or raise.

        Args:
            operation: What the caller does.
            resource_type: The object's resource type.
            what: Names the object in a NotFound message, e.g. ``"policy 'pol_1'"``.
            **target: ``target_id``, ``target_name``, ``compartment_path``, as :meth:`decide` takes them.

        Raises:
            NotFound: The caller may not even inspect the object: exactly what a missing
                object answers.
            Forbidden: The object is visible but the caller's verb is too weak.
        """
        decision = self.decide(operation, resource_type, **target)
        self.checks.append(decision)
        if decision.allowed:
            return decision
        if operation != "list" and not self.decide("list", resource_type, **target).allowed:
            raise NotFound(f"{what or resource_type.rstrip('s') + ' ' + repr(target.get('target_id'))} not found")
        raise Forbidden(
            f"not authorized: {decision.reason}; ask an administrator for a policy granting "
            f"'{min_verb(operation)}' on {resource_type}"
        )


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
    with services_of(request).db.session() as session:
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
    audit = services_of(request).audit
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
    services_of(request).limits.check_request(principal)
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
