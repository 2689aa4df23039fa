"""What the HTTP layer writes to the audit log: decisions, and the outcome of requests.

``AuditTrail`` (``Services.audit``) turns a request into audit events: the authorize gate
calls :meth:`AuditTrail.record_decision` before any work, and :class:`AuditMiddleware`
gives every request an id (``X-Request-Id``) and, once the response is sent, appends its
outcome when the request changed state, was refused or failed, or never reached a decision
(no key). Events hold the route template, never a body: no prompt, completion or secret
reaches the log. The hash chain itself lives in ``atelier.security.audit``.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from fastapi import Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.types import Message, Receive, Scope, Send

from atelier.api.asgi import HttpMiddleware
from atelier.api.route_table import rule_for
from atelier.principal import Principal
from atelier.security.audit import AuditEntry, AuditEvent, AuditLog

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-Id"
UNAUDITED_PATHS = ("/health", "/metrics", "/docs", "/redoc", "/openapi.json")
"""Paths (and their sub-paths) whose successful requests get no outcome entry: probes,
scrapes and documentation."""
STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def new_request_id() -> str:
    """A fresh request id: ``req_`` and 32 hex digits."""
    return f"req_{uuid.uuid4().hex}"


def _action(scope: Scope) -> str:
    """``"METHOD /path/{template}"``: the route's template (from the route table), else the raw path."""
    method, path = scope.get("method", ""), scope.get("path", "")
    template = (scope.get("state") or {}).get("route_template")
    if template is None:
        try:
            template, _ = rule_for(method, path)
        except LookupError:  # no such route: the path as sent
            template = path
    return f"{method} {template}"


def _resource_id(path_params: dict[str, Any] | None) -> str | None:
    """The first path parameter ending in ``_id``, else the last parameter, else None."""
    if not path_params:
        return None
    for name, value in path_params.items():
        if name.endswith("_id"):
            return str(value)
    return str(list(path_params.values())[-1])


def _resource_type(state: dict[str, Any]) -> str | None:
    access = state.get("access")
    rule = getattr(access, "rule", None)
    return rule.resource_type if rule is not None and rule.who == "policy" else None


def _source(scope: Scope) -> str | None:
    client = scope.get("client")
    return client[0] if client else None


def _principal_of(state: dict[str, Any]) -> Principal | None:
    access = state.get("access")
    return access.principal if access is not None else state.get("principal")


class AuditTrail:
    """The API's writer of audit entries (``Services.audit``).

    Args:
        log: The hash-chained log entries are appended to.
    """

    def __init__(self, log: AuditLog):
        self.log = log

    def record_decision(
        self, request: Request, principal: Principal, *, decision: str, statement: str | None, outcome: str
    ) -> AuditEntry:
        """Append the authorization decision of a request (before the route does any work).

        Args:
            request: The request; its state holds ``request_id``, ``route_template`` and
                ``access`` (set by the authorize gate).
            principal: The authenticated caller.
            decision: ``allow`` or ``deny``.
            statement: The policy statement that allowed it, if one did.
            outcome: Why (``"operator"``, ``"group Administrators"``, a denial reason).

        Returns:
            The stored entry.

        Raises:
            Unavailable: The entry could not be written (the gate then refuses the request).
        """
        scope = request.scope
        state = scope.setdefault("state", {})
        if not state.get("request_id"):
            state["request_id"] = new_request_id()
        event = AuditEvent(
            request_id=state["request_id"],
            tenancy_id=principal.tenancy_id,
            principal_id=principal.id,
            key_id=principal.key_id,
            action=_action(scope),
            resource_type=_resource_type(state),
            resource_id=_resource_id(scope.get("path_params")),
            decision=decision,  # type: ignore[arg-type]
            statement=statement,
            outcome=outcome,
            source=_source(scope),
        )
        entry = self.log.append(event)
        state["audit_decision_seq"] = entry.seq
        return entry

    def record_outcome(self, scope: Scope, status: int) -> AuditEntry:
        """Append the outcome (status, ``ok``/``error``) of a finished request.

        Raises:
            Unavailable: The entry could not be written.
        """
        state = scope.get("state") or {}
        principal = _principal_of(state)
        event = AuditEvent(
            request_id=state.get("request_id") or new_request_id(),
            tenancy_id=principal.tenancy_id if principal else None,
            principal_id=principal.id if principal else None,
            key_id=principal.key_id if principal else None,
            action=_action(scope),
            resource_type=_resource_type(state),
            resource_id=_resource_id(scope.get("path_params")),
            decision="none",
            outcome="ok" if status < 400 else "error",
            status=status,
            source=_source(scope),
        )
        return self.log.append(event)


def needs_outcome(method: str, status: int, decided: bool) -> bool:
    """Whether a finished request gets an outcome entry: it changed state (a write with
    status < 400), was refused or failed (status >= 400), or never got a decision entry."""
    return (method in STATE_CHANGING and status < 400) or status >= 400 or not decided


class AuditMiddleware(HttpMiddleware):
    """Pure ASGI middleware: request ids, and an outcome entry once the response is sent.

    Add it after ``install_error_handlers`` so that it wraps them and sees final statuses
    (a 500 made from an unexpected exception included). Bodies pass through untouched, so
    streams are not buffered. A failure to write the outcome is logged: the response is
    already on its way.
    """

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = scope.setdefault("state", {})
        request_id = state["request_id"] = new_request_id()
        status: int | None = None

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message).append(REQUEST_ID_HEADER, request_id)
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            await self._record(scope, status if status is not None and status >= 400 else 500)
            raise
        await self._record(scope, 500 if status is None else status)

    @staticmethod
    async def _record(scope: Scope, status: int) -> None:
        path = scope.get("path", "")
        if status < 400 and any(path == p or path.startswith(p + "/") for p in UNAUDITED_PATHS):
            return  # a probe, a scrape or the docs; a refused scrape (401, 403) is still logged
        services = getattr(getattr(scope.get("app"), "state", None), "services", None)
        trail = getattr(services, "audit", None)
        if trail is None:
            return
        decided = "audit_decision_seq" in scope.get("state", {})
        if not needs_outcome(scope.get("method", ""), status, decided):
            return
        try:
            await run_in_threadpool(trail.record_outcome, scope, status)
        except Exception:  # noqa: BLE001 - the response is already sent; the log says why
            log.exception("audit outcome of %s %s (status %s) could not be written", scope.get("method"), path, status)
