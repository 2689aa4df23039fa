"""A tenancy's birth: its administrators, their protected policy, key ring and first key.

Every tenancy is created with the group ``Administrators``, the user ``admin`` in it, the
protected policy ``Tenant Admin Policy`` (``allow group Administrators to manage
genai-family in tenancy``, which can be neither edited nor deleted), its key ring, and an
API key for ``admin`` shown once. All of it is one unit of work: the caller's session
commits everything or nothing. Knows nothing about HTTP.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from atelier.principal import ADMINISTRATORS, Principal
from atelier.security.api_keys import DEFAULT_EXPIRY_DAYS, issue_key
from atelier.security.crypto import KeyManager
from atelier.security.policy import parse_policy
from atelier.store import identity, repos
from atelier.store.tables import Tenancy, User

ADMIN_USER = "admin"
ADMIN_POLICY = "Tenant Admin Policy"
ADMIN_STATEMENTS = f"allow group {ADMINISTRATORS} to manage genai-family in tenancy"
parse_policy(ADMIN_STATEMENTS)  # a typo here must fail at import, not on a tenancy's first request


def _setup_principal(tenancy_id: str) -> Principal:
    """Who the setup acts as inside the new tenancy (never authenticates anything)."""
    return Principal(tenancy_id=tenancy_id, key_id="tenancy-setup", role="admin")


def ensure_administration(session: Session, tenancy_id: str) -> bool:
    """Give a tenancy its Administrators group and protected admin policy if it lacks them.

    Idempotent: run on every start for tenancies made before these existed.

    Returns:
        Whether anything was added.

    Raises:
        Conflict: A policy named ``Tenant Admin Policy`` exists but is not the protected one.
    """
    principal = _setup_principal(tenancy_id)
    added = False
    if identity.find_group(session, principal, ADMINISTRATORS) is None:
        identity.create_group(session, principal, ADMINISTRATORS, description="Administer the tenancy.")
        added = True
    policy = identity.find_policy(session, principal, ADMIN_POLICY)
    if policy is None:
        identity.create_policy(
            session, principal, ADMIN_POLICY, ADMIN_STATEMENTS,
            description="Administrators manage every resource of the tenancy.", protected=True,
        )
        added = True
    return added


def create_tenancy(db_session: Session, keys: KeyManager, name: str) -> tuple[Tenancy, User, str]:
    """Create a tenancy ready to use (see the module docstring).

    Args:
        db_session: Open session; nothing is committed here (the caller's unit of work
            commits, so a failure leaves no half-made tenancy).
        keys: The key manager; its ring is created within ``db_session``.
        name: The tenancy's unique name, 1 to 100 characters.

    Returns:
        The tenancy, its ``admin`` user, and the admin's raw API key (role ``admin``,
        expires in 90 days), shown once and never stored.

    Raises:
        InvalidInput: Bad name.
        Conflict: A tenancy of this name exists.
    """
    tenancy = repos.create_tenancy(db_session, name)
    principal = _setup_principal(tenancy.id)
    ensure_administration(db_session, tenancy.id)
    admin = identity.create_user(db_session, principal, ADMIN_USER, description="The tenancy's first administrator.")
    admins = identity.find_group(db_session, principal, ADMINISTRATORS)
    assert admins is not None  # just made
    identity.add_member(db_session, principal, admins.id, admin.id)
    keys.within(db_session).ensure_ring(tenancy.id)
    _, raw = issue_key(
        db_session, tenancy.id, name="admin", role="admin", expires_in_days=DEFAULT_EXPIRY_DAYS, user_id=admin.id
    )
    return tenancy, admin, raw
