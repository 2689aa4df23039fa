"""The caller's tenancy's key ring (resource type ``keys``): show, rotate, rewrap, retire.

``GET /v1/key-ring`` shows versions and their states, never key material. ``rotate`` adds
a version that new writes use; ``rewrap`` re-wraps every stored object's data key under the
newest version (payloads untouched, no plaintext); ``retire`` stops versions below
``below`` from opening anything (rewrap first). The key ring is a tenancy-level object:
a policy grants it only ``in tenancy``. The keys themselves live in ``security.crypto``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field

from atelier.api.access import Access
from atelier.api.deps import AccessDep, ServicesDep
from atelier.errors import InvalidInput
from atelier.security.crypto import RingState
from atelier.security.policy import Operation

router = APIRouter(tags=["keys"])

RESOURCE_TYPE = "keys"
RING_NAME = "key-ring"
"""``target.name`` of every tenancy's key ring in policy conditions."""


class KeyVersionOut(BaseModel):
    version: int = Field(description="Version number, from 1.")
    state: Literal["enabled", "retired"] = Field(description="retired: below the minimum decryption version.")
    created_at: datetime


class KeyRingOut(BaseModel):
    object: Literal["key_ring"] = "key_ring"
    tenancy_id: str
    current_version: int | None = Field(description="Version new writes use; null before the first object or rotation.")
    min_decrypt_version: int | None = Field(description="Objects under older versions do not open until rewrapped.")
    versions: list[KeyVersionOut] = Field(description="Every version, oldest first (no key material).")


class RewrapOut(BaseModel):
    rewrapped: int = Field(description="How many objects' data keys moved to the current version.")
    current_version: int | None


class RetireIn(BaseModel):
    below: int = Field(ge=1, le=1_000_000, description="Retire every version below this one.")


def _allow(access: Access, operation: Operation) -> str:
    """Check ``operation`` on the caller's key ring; returns its tenancy id."""
    tenancy_id = access.principal.tenancy_id
    access.require(operation, RESOURCE_TYPE, target_id=tenancy_id, target_name=RING_NAME, what="key ring")
    return tenancy_id


def _out(tenancy_id: str, ring: RingState | None) -> KeyRingOut:
    if ring is None:
        return KeyRingOut(tenancy_id=tenancy_id, current_version=None, min_decrypt_version=None, versions=[])
    versions = [KeyVersionOut(version=v.version, state=v.state, created_at=v.created_at) for v in ring.versions]
    return KeyRingOut(
        tenancy_id=tenancy_id,
        current_version=ring.current_version,
        min_decrypt_version=ring.min_decrypt_version,
        versions=versions,
    )


@router.get("/key-ring", response_model=KeyRingOut, summary="Show the key ring")
def show_key_ring(services: ServicesDep, access: AccessDep) -> KeyRingOut:
    """The tenancy's key versions: current, minimum for decryption, each one's state."""
    tenancy_id = _allow(access, "get")
    return _out(tenancy_id, services.keys.describe(tenancy_id))


@router.post("/key-ring/rotate", response_model=KeyRingOut, summary="Rotate the key ring")
def rotate_key_ring(services: ServicesDep, access: AccessDep) -> KeyRingOut:
    """Add a key version; new objects use it, existing ones still open under theirs."""
    tenancy_id = _allow(access, "create")
    keys = services.keys
    keys.rotate(tenancy_id)
    return _out(tenancy_id, keys.describe(tenancy_id))


@router.post("/key-ring/rewrap", response_model=RewrapOut, summary="Rewrap every object")
def rewrap_objects(services: ServicesDep, access: AccessDep) -> RewrapOut:
    """Move every object's data key to the current version (payloads are not touched).

    Raises:
        Undecryptable: A data key does not unwrap (altered row, shredded ring).
    """
    tenancy_id = _allow(access, "create")
    count = services.objects.rewrap_all(access.principal)
    return RewrapOut(rewrapped=count, current_version=services.keys.current_version(tenancy_id))


@router.post("/key-ring/retire", response_model=KeyRingOut, summary="Retire old key versions")
def retire_key_versions(body: RetireIn, services: ServicesDep, access: AccessDep) -> KeyRingOut:
    """Refuse to open objects under versions below ``below`` (rewrap them first); cannot be undone.

    Raises:
        InvalidInput: ``below`` is under the current minimum or above the current version.
        NotFound: The tenancy has no key ring yet.
    """
    tenancy_id = _allow(access, "create")
    keys = services.keys
    try:
        keys.retire_below(tenancy_id, body.below)
    except InvalidInput as exc:
        raise InvalidInput(exc.message, param="below") from None
    return _out(tenancy_id, keys.describe(tenancy_id))
