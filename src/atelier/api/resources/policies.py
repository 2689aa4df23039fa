"""``/v1/policies``: a tenancy's policies, decided by its policies (resource type ``policies``).

Statements are parsed before they are stored: a syntax error answers 400 with
``param: "statements"`` and the parser's ``line L, column C: ...`` message, so a stored
policy always parses. Each route checks the loaded policy with ``Access.require`` (target
id and name), so conditions such as ``where target.name = 'team'`` apply; a policy the
caller may not even inspect answers 404 like a missing one. Editing a policy needs
``manage`` (as in OCI: ``use`` would let a user grant itself anything). The protected
``Tenant Admin Policy`` can be neither edited nor deleted (409).
"""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter
from pydantic import BaseModel, Field

from atelier.api.access import Access
from atelier.api.deps import AccessDep, SessionDep
from atelier.api.envelopes import Deleted, ObjectList
from atelier.errors import Forbidden, InvalidInput
from atelier.security.policy import parse_policy
from atelier.store import identity
from atelier.store.identity import DESCRIPTION_LENGTH
from atelier.store.tables import NAME_LENGTH, Policy

router = APIRouter(tags=["policies"])

MAX_STATEMENTS_CHARS = 20_000
TYPE = "policies"


class PolicyIn(BaseModel):
    """A policy: a name and its statements, one per line."""

    name: str = Field(min_length=1, max_length=NAME_LENGTH, description="Unique name in the tenancy.")
    description: str = Field("", max_length=DESCRIPTION_LENGTH, description="Free text, up to 400 characters.")
    statements: str = Field(
        min_length=1, max_length=MAX_STATEMENTS_CHARS,
        description="One statement per line: `allow group <name> to <inspect|read|use|manage> <resource-type> "
        "in <tenancy | compartment <path>> [where <conditions>]`; `#` starts a comment.",
    )


class PolicyOut(BaseModel):
    """A policy of the tenancy."""

    object: str = Field("policy", description="Always `policy`.")
    id: str = Field(description="The policy's id (`pol_…`).")
    name: str = Field(description="Unique name.")
    description: str = Field(description="Free text.")
    statements: str = Field(description="The statements, as written.")
    protected: bool = Field(description="The tenancy's admin policy: cannot be edited or deleted.")
    created_at: datetime = Field(description="When it was created (UTC).")
    updated_at: datetime = Field(description="When it was last changed (UTC).")


def _out(row: Policy) -> PolicyOut:
    return PolicyOut(
        id=row.id, name=row.name, description=row.description, statements=row.statements,
        protected=row.protected, created_at=row.created_at, updated_at=row.updated_at,
    )


def _validated(statements: str) -> str:
    """The statements, if they parse and hold at least one ``allow``.

    Raises:
        InvalidInput: A syntax error (``line L, column C: ...``), or no statement at all.
    """
    if not parse_policy(statements):
        raise InvalidInput("a policy needs at least one allow statement", param="statements")
    return statements


def _require(access: Access, operation: str, row: Policy) -> None:
    access.require(operation, TYPE, target_id=row.id, target_name=row.name, what=f"policy {row.id!r}")


@router.post("/policies", response_model=PolicyOut, status_code=201, summary="Create a policy")
def create_policy(body: PolicyIn, access: AccessDep, session: SessionDep) -> PolicyOut:
    """Store a policy after parsing its statements; it applies from the next request on."""
    decision = access.decide("create", TYPE, target_name=body.name)
    if not decision.allowed:  # the type-level check passed: a condition on the name refused it
        raise Forbidden(f"not authorized: {decision.reason}")
    statements = _validated(body.statements)
    row = identity.create_policy(session, access.principal, body.name, statements, description=body.description)
    return _out(row)


@router.get("/policies", response_model=ObjectList[PolicyOut], summary="List policies")
def list_policies(access: AccessDep, session: SessionDep) -> ObjectList[PolicyOut]:
    """The policies you may inspect, oldest first."""
    rows = identity.list_policies(session, access.principal)
    visible = [r for r in rows if access.decide("list", TYPE, target_id=r.id, target_name=r.name).allowed]
    return ObjectList[PolicyOut](data=[_out(r) for r in visible])


@router.get("/policies/{policy_id}", response_model=PolicyOut, summary="Retrieve a policy")
def retrieve_policy(policy_id: str, access: AccessDep, session: SessionDep) -> PolicyOut:
    """One policy by id."""
    row = identity.get_policy(session, access.principal, policy_id)
    _require(access, "get", row)
    return _out(row)


@router.put("/policies/{policy_id}", response_model=PolicyOut, summary="Replace a policy")
def replace_policy(policy_id: str, body: PolicyIn, access: AccessDep, session: SessionDep) -> PolicyOut:
    """Replace a policy's name, description and statements (parsed first). 409 if protected."""
    row = identity.get_policy(session, access.principal, policy_id)
    _require(access, "create", row)  # editing a policy needs manage (see the module docstring)
    statements = _validated(body.statements)
    row = identity.update_policy(
        session, access.principal, row.id, name=body.name, description=body.description, statements=statements
    )
    return _out(row)


@router.delete("/policies/{policy_id}", response_model=Deleted, summary="Delete a policy")
def delete_policy(policy_id: str, access: AccessDep, session: SessionDep) -> Deleted:
    """Delete a policy; it stops applying from the next request on. 409 if protected."""
    row = identity.get_policy(session, access.principal, policy_id)
    _require(access, "delete", row)
    identity.delete_policy(session, access.principal, row.id)
    return Deleted(id=row.id, object="policy")
