"""Repositories for tenancies and API keys: the only code that queries these tables.

Every lookup of a tenant's row is filtered by ``tenancy_id``: another tenancy's row is
``NotFound``, exactly like a missing one. (A later change makes every function take the
``Principal`` first.) The one unscoped lookup, ``find_api_key``, exists for authentication,
where the tenancy is not known yet. This module knows nothing about HTTP or how secrets
are hashed: callers pass hashes in.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import exists, select
from sqlalchemy.orm import Session

from atelier.errors import Conflict, InvalidInput, NotFound
from atelier.store.tables import NAME_LENGTH, ROLES, ApiKey, Group, GroupMember, Policy, Tenancy, User, new_id, utcnow


def _check_name(name: str) -> str:
    if not name or not name.strip() or len(name) > NAME_LENGTH:
        raise InvalidInput(f"name must be 1 to {NAME_LENGTH} characters", param="name")
    return name


# --- tenancies -----------------------------------------------------------------------


def create_tenancy(session: Session, name: str) -> Tenancy:
    """Create a tenancy.

    Args:
        session: Open session; the row is flushed (so its id is set) but not committed.
        name: Unique name, 1 to 100 characters.

    Returns:
        The new tenancy.

    Raises:
        InvalidInput: The name is empty or too long.
        Conflict: Another tenancy already has this name.
    """
    _check_name(name)
    if get_tenancy_by_name(session, name) is not None:
        raise Conflict(f"a tenancy named {name!r} already exists", param="name")
    tenancy = Tenancy(id=new_id("ten"), name=name, created_at=utcnow())
    session.add(tenancy)
    session.flush()
    return tenancy


def get_tenancy(session: Session, tenancy_id: str) -> Tenancy:
    """The tenancy with this id.

    Raises:
        NotFound: No such tenancy.
    """
    tenancy = session.get(Tenancy, tenancy_id)
    if tenancy is None:
        raise NotFound(f"tenancy {tenancy_id!r} not found", param="tenancy_id")
    return tenancy


def get_tenancy_by_name(session: Session, name: str) -> Tenancy | None:
    """The tenancy with this name, or None."""
    return session.scalar(select(Tenancy).where(Tenancy.name == name))


def list_tenancies(session: Session) -> list[Tenancy]:
    """All tenancies, oldest first (operator use only)."""
    return list(session.scalars(select(Tenancy).order_by(Tenancy.created_at, Tenancy.id)))


def any_tenancy(session: Session) -> bool:
    """Whether the database holds at least one tenancy (False on a fresh install)."""
    return bool(session.scalar(select(exists().select_from(Tenancy))))


# --- API keys ------------------------------------------------------------------------


def create_api_key(
    session: Session,
    tenancy_id: str,
    *,
    name: str,
    role: str,
    secret_hash: str,
    expires_at: datetime | None = None,
    key_id: str | None = None,
    user_id: str | None = None,
) -> ApiKey:
    """Store a new API key (its secret's hash only).

    Args:
        session: Open session; the row is flushed, not committed.
        tenancy_id: Tenancy the key belongs to; must exist.
        name: Label shown in listings, 1 to 100 characters.
        role: One of ``ROLES``.
        secret_hash: Hex digest of the secret (see ``atelier.security.api_keys``).
        expires_at: When the key stops working; None for never.
        key_id: A fixed id (installed keys); default a fresh ``key_…`` id.
        user_id: The user the key acts as; must be of the same tenancy. None for none.

    Returns:
        The new key.

    Raises:
        InvalidInput: Bad name or role.
        NotFound: No such tenancy, or no such user in it.
        Conflict: ``key_id`` is already taken.
    """
    _check_name(name)
    if role not in ROLES:
        raise InvalidInput(f"role must be one of {', '.join(ROLES)}", param="role")
    get_tenancy(session, tenancy_id)
    if user_id is not None:
        user = session.get(User, user_id)
        if user is None or user.tenancy_id != tenancy_id:
            raise NotFound(f"user {user_id!r} not found", param="user_id")
    if key_id is not None and session.get(ApiKey, key_id) is not None:
        raise Conflict(f"API key {key_id!r} already exists", param="key_id")
    key = ApiKey(
        id=key_id or new_id("key"),
        tenancy_id=tenancy_id,
        name=name,
        role=role,
        secret_hash_1=secret_hash,
        created_at=utcnow(),
        expires_at=expires_at,
        user_id=user_id,
    )
    session.add(key)
    session.flush()
    return key


def find_api_key(session: Session, key_id: str) -> ApiKey | None:
    """The key with this id in any tenancy, or None: for authentication only."""
    return session.get(ApiKey, key_id)


def get_api_key(session: Session, tenancy_id: str, key_id: str) -> ApiKey:
    """The key with this id in this tenancy.

    Raises:
        NotFound: No such key in this tenancy (another tenancy's key included).
    """
    key = session.get(ApiKey, key_id)
    if key is None or key.tenancy_id != tenancy_id:
        raise NotFound(f"API key {key_id!r} not found", param="key_id")
    return key


def list_api_keys(session: Session, tenancy_id: str, *, include_revoked: bool = False) -> list[ApiKey]:
    """The tenancy's keys, oldest first; revoked ones only if asked."""
    query = select(ApiKey).where(ApiKey.tenancy_id == tenancy_id)
    if not include_revoked:
        query = query.where(ApiKey.revoked_at.is_(None))
    return list(session.scalars(query.order_by(ApiKey.created_at, ApiKey.id)))


def revoke_api_key(session: Session, tenancy_id: str, key_id: str) -> ApiKey:
    """Revoke a key for good. Revoking it again keeps the first revocation time.

    Raises:
        NotFound: No such key in this tenancy.
    """
    key = get_api_key(session, tenancy_id, key_id)
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        session.flush()
    return key


# --- what authorization reads on every request ----------------------------------------


def group_names_of(session: Session, tenancy_id: str, user_id: str) -> frozenset[str]:
    """Names of the groups of ``user_id`` in ``tenancy_id`` (empty for another tenancy's user)."""
    query = (
        select(Group.name)
        .join(GroupMember, GroupMember.group_id == Group.id)
        .where(GroupMember.user_id == user_id, GroupMember.tenancy_id == tenancy_id, Group.tenancy_id == tenancy_id)
    )
    return frozenset(session.scalars(query))


def policy_texts(session: Session, tenancy_id: str) -> list[str]:
    """The statements text of every policy of the tenancy, oldest policy first."""
    query = select(Policy.statements).where(Policy.tenancy_id == tenancy_id).order_by(Policy.created_at, Policy.id)
    return list(session.scalars(query))
