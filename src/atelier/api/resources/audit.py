"""``GET /v1/audit`` (a tenancy's entries, filtered) and ``GET /v1/audit/verify`` (the operator).

Administrators read their own tenancy's entries; the operator may name another tenancy
(``tenancy_id``) or read every entry (``all=true``, entries of unauthenticated requests
included). Another tenancy's id from an administrator answers 404, like a missing one.
The log itself is ``atelier.security.audit``.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from atelier.api.deps import AccessDep, ServicesDep
from atelier.errors import Forbidden, InvalidInput, NotFound

router = APIRouter(tags=["audit"])

MAX_LIMIT = 1000


class AuditEntryOut(BaseModel):
    """One audit entry, as stored (hashes included, so a client can check the chain)."""

    seq: int = Field(description="Position in the log, from 1.")
    time: datetime = Field(description="When it was appended (UTC).")
    request_id: str = Field(description="Id of the request (its X-Request-Id header).")
    tenancy_id: str | None = Field(description="The caller's tenancy; null before authentication.")
    principal_id: str | None = Field(description="The user (else the API key) that acted.")
    key_id: str | None = Field(description="The API key used.")
    action: str = Field(description='"METHOD /route/{template}", or an event name such as "alert.raised".')
    resource_type: str | None = Field(description="Policy resource type of the route, if any.")
    resource_id: str | None = Field(description="Id or name of the target object, if the route names one.")
    decision: Literal["allow", "deny", "none"] = Field(description="The authorization decision; none for outcomes.")
    statement: str | None = Field(description="The policy statement that allowed the request.")
    outcome: str = Field(description="Why it was allowed or denied, or ok/error for an outcome entry.")
    status: int | None = Field(description="HTTP status of the response (outcome entries).")
    source: str | None = Field(description="Client address.")
    prev_hash: str = Field(description="Hash of the previous entry.")
    hash: str = Field(description="SHA-256 of prev_hash and this entry's fields.")


class AuditPage(BaseModel):
    object: Literal["list"] = "list"
    data: list[AuditEntryOut]
    next_after_seq: int | None = Field(
        description="Pass as after_seq to read the next page; null when this page is the last."
    )


class AuditReportOut(BaseModel):
    ok: bool = Field(description="No tampering found.")
    entries: int = Field(description="Entries checked.")
    checkpoints: int = Field(description="Signed checkpoints checked.")
    problems: list[str] = Field(description="One line per problem, naming the sequence numbers concerned.")


def _utc(value: datetime | None, param: str) -> datetime | None:
    """A query time in UTC; one without a zone is taken as UTC.

    Raises:
        InvalidInput: The time is out of range once moved to UTC (e.g. year 1 at +05:00).
    """
    if value is None:
        return None
    try:
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except OverflowError:
        raise InvalidInput("the time is out of range", param=param) from None


class AuditQuery(BaseModel):
    """Filters of ``GET /v1/audit`` (query parameters); every given one must match."""

    since: datetime | None = Field(None, description="Entries at or after this time (ISO 8601; UTC if no zone).")
    until: datetime | None = Field(None, description="Entries before this time.")
    request_id: str | None = Field(None, max_length=64, description="One request's entries (its X-Request-Id).")
    action: str | None = Field(None, max_length=200, description='Exact action, e.g. "POST /v1/key-ring/rotate".')
    decision: Literal["allow", "deny", "none"] | None = Field(None, description="Authorization decision.")
    principal_id: str | None = Field(None, max_length=200, description="Acting user or key.")
    key_id: str | None = Field(None, max_length=200, description="API key used.")
    resource_type: str | None = Field(None, max_length=200, description="Resource type.")
    resource_id: str | None = Field(None, max_length=200, description="Target id.")
    status: int | None = Field(None, ge=100, le=599, description="HTTP status.")
    after_seq: int | None = Field(None, ge=0, le=2**62, description="Only entries after this sequence number.")
    limit: int = Field(100, ge=1, le=MAX_LIMIT, description="Most entries to return.")
    tenancy_id: str | None = Field(None, max_length=200, description="Operator only: another tenancy's entries.")
    all_tenancies: bool = Field(
        False, alias="all", description="Operator only: every entry, of every tenancy and of none."
    )


@router.get("/audit", response_model=AuditPage, summary="List audit entries")
def list_audit_entries(services: ServicesDep, access: AccessDep, query: Annotated[AuditQuery, Query()]) -> AuditPage:
    """The caller's tenancy's audit entries matching every filter, oldest first, one page.

    Raises:
        InvalidInput: Both ``tenancy_id`` and ``all``.
        Forbidden: ``all`` from someone other than the operator.
        NotFound: ``tenancy_id`` of another tenancy from someone other than the operator.
    """
    principal = access.principal
    if query.all_tenancies and query.tenancy_id is not None:
        raise InvalidInput("give tenancy_id or all=true, not both", param="all")
    if principal.is_operator:
        scope = None if query.all_tenancies else (query.tenancy_id or principal.tenancy_id)
    elif query.all_tenancies:
        raise Forbidden("only the service operator may read every tenancy's audit entries")
    elif query.tenancy_id is not None and query.tenancy_id != principal.tenancy_id:
        raise NotFound(f"tenancy {query.tenancy_id!r} not found", param="tenancy_id")
    else:
        scope = principal.tenancy_id
    filters = query.model_dump(exclude={"tenancy_id", "all_tenancies", "since", "until"})
    entries = services.audit.log.query(scope, since=_utc(query.since, "since"), until=_utc(query.until, "until"), **filters)
    data = [AuditEntryOut(**entry.to_dict()) for entry in entries]
    return AuditPage(data=data, next_after_seq=entries[-1].seq if len(entries) == query.limit else None)


@router.get("/audit/verify", response_model=AuditReportOut, summary="Verify the audit log")
def verify_audit_log(services: ServicesDep, access: AccessDep) -> AuditReportOut:
    """Check the whole hash chain, its signed checkpoints and the head file (operator only)."""
    report = services.audit.log.verify()
    return AuditReportOut(**asdict(report))
