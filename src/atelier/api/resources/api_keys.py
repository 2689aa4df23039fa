"""``/v1/api-keys``: create, list, rotate and revoke API keys; a raw key is shown once.

Any authenticated caller reaches these routes (``ROUTES``); who may touch which key is
decided here: the tenancy's administrators manage every key of the tenancy, anyone else
only their own (keys bound to their user, and the key they call with). Another user's key
answers 404 to a non-administrator, exactly like a missing one, and an operator key
answers 404 to everyone but the operator. Responses never carry secret hashes.
"""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from atelier.api.deps import AccessDep, SessionDep
from atelier.api.envelopes import ObjectList
from atelier.api.references import body_reference, not_authorized
from atelier.errors import InvalidInput, NotFound
from atelier.principal import Principal
from atelier.security.api_keys import (
    DEFAULT_EXPIRY_DAYS,
    DEFAULT_GRACE_SECONDS,
    MAX_EXPIRY_DAYS,
    MAX_GRACE_SECONDS,
    issue_key,
    rotate_key,
)
from atelier.store import identity
from atelier.store.tables import NAME_LENGTH, ApiKey

router = APIRouter(tags=["api-keys"])


class ApiKeyCreate(BaseModel):
    """A new key for a user."""

    name: str = Field(min_length=1, max_length=NAME_LENGTH, description="Label shown in listings.")
    user_id: str | None = Field(
        None, min_length=1, max_length=100,
        description="The user the key acts as (its groups decide what it may do); default: your own user. "
        "Only administrators create keys for other users.",
    )
    expires_in_days: int = Field(
        DEFAULT_EXPIRY_DAYS, ge=1, le=MAX_EXPIRY_DAYS, description="Lifetime in days (1 to 3650; default 90)."
    )


class ApiKeyRotate(BaseModel):
    """How long the current secret keeps working after the rotation."""

    grace_seconds: int = Field(
        DEFAULT_GRACE_SECONDS, ge=0, le=MAX_GRACE_SECONDS,
        description="Seconds the current secret stays valid beside the new one (default 24 h; 0 ends it now).",
    )


class ApiKeyOut(BaseModel):
    """An API key's metadata (never its secrets or their hashes)."""

    object: str = Field("api_key", description="Always `api_key`.")
    id: str = Field(description="The key's id (`key_…`), the middle part of the raw key.")
    name: str = Field(description="Label.")
    user_id: str | None = Field(description="The user the key acts as; null for installed keys.")
    role: str = Field(description="`operator`, `admin` or `user`; a user key's rights come from its groups.")
    created_at: datetime = Field(description="When it was created (UTC).")
    expires_at: datetime | None = Field(description="When it stops working; null for never.")
    revoked_at: datetime | None = Field(description="When it was revoked; null while it is not.")
    last_used_at: datetime | None = Field(description="Last authentication (to the minute).")
    previous_secret_expires_at: datetime | None = Field(
        description="After a rotation: when the previous secret stops working."
    )


class ApiKeyCreated(ApiKeyOut):
    """A key with its raw value, shown this once."""

    key: str = Field(description="The raw key `atl_<id>_<secret>`. Store it now: it is never shown again.")


def _out(key: ApiKey) -> ApiKeyOut:
    return ApiKeyOut(
        id=key.id, name=key.name, user_id=key.user_id, role=key.role, created_at=key.created_at,
        expires_at=key.expires_at, revoked_at=key.revoked_at, last_used_at=key.last_used_at,
        previous_secret_expires_at=key.secret_2_expires_at if key.secret_hash_2 else None,
    )


def _created(key: ApiKey, raw: str) -> ApiKeyCreated:
    return ApiKeyCreated(**_out(key).model_dump(), key=raw)


def may_manage(principal: Principal, key: ApiKey) -> bool:
    """Whether ``principal`` may see and manage ``key`` (both of the same tenancy)."""
    if key.role == "operator" and not principal.is_operator:
        return False
    if principal.is_admin or key.id == principal.key_id:
        return True
    return principal.user_id is not None and key.user_id == principal.user_id


def _managed_key(session: Session, principal: Principal, key_id: str) -> ApiKey:
    """A key the caller may manage; NotFound (same message as a missing one) otherwise."""
    key = identity.get_api_key(session, principal, key_id)
    if not may_manage(principal, key):
        raise NotFound(f"API key {key_id!r} not found")
    return key


@router.post("/api-keys", response_model=ApiKeyCreated, status_code=201, summary="Create an API key")
def create_key(body: ApiKeyCreate, access: AccessDep, session: SessionDep) -> ApiKeyCreated:
    """A key for yourself, or (administrators) for any user of the tenancy; returned once."""
    principal = access.principal
    user_id = body.user_id or principal.user_id
    if user_id is None:
        raise InvalidInput("your key is not bound to a user: name the user the new key is for", param="user_id")
    if user_id != principal.user_id and not principal.is_admin:
        raise not_authorized(f"user {user_id!r}", "user_id")
    with body_reference("user_id"):
        user = identity.get_user(session, principal, user_id)
    key, raw = issue_key(
        session, principal.tenancy_id, body.name, "user", body.expires_in_days, user_id=user.id
    )
    return _created(key, raw)


@router.get("/api-keys", response_model=ObjectList[ApiKeyOut], summary="List API keys")
def list_keys(
    access: AccessDep, session: SessionDep, user_id: str | None = None, include_revoked: bool = False
) -> ObjectList[ApiKeyOut]:
    """The keys you may manage (administrators: the tenancy's; others: their own), oldest
    first; `user_id` narrows to one user, `include_revoked` adds revoked keys."""
    principal = access.principal
    keys = identity.list_api_keys(session, principal, user_id=user_id, include_revoked=include_revoked)
    return ObjectList[ApiKeyOut](data=[_out(k) for k in keys if may_manage(principal, k)])


@router.get("/api-keys/{key_id}", response_model=ApiKeyOut, summary="Retrieve an API key")
def retrieve_key(key_id: str, access: AccessDep, session: SessionDep) -> ApiKeyOut:
    """One key's metadata."""
    return _out(_managed_key(session, access.principal, key_id))


@router.post("/api-keys/{key_id}/rotate", response_model=ApiKeyCreated, summary="Rotate an API key")
def rotate(key_id: str, access: AccessDep, session: SessionDep, body: ApiKeyRotate | None = None) -> ApiKeyCreated:
    """A fresh secret, returned once; the current one keeps working for `grace_seconds`.
    409 for a revoked or expired key."""
    key = _managed_key(session, access.principal, key_id)
    grace = (body or ApiKeyRotate()).grace_seconds
    key, raw = rotate_key(session, access.principal, key.id, grace)
    return _created(key, raw)


@router.delete("/api-keys/{key_id}", response_model=ApiKeyOut, summary="Revoke an API key")
def revoke(key_id: str, access: AccessDep, session: SessionDep) -> ApiKeyOut:
    """Revoke a key for good (both its secrets); it answers 401 from now on."""
    key = _managed_key(session, access.principal, key_id)
    return _out(identity.revoke_api_key(session, access.principal, key.id))
