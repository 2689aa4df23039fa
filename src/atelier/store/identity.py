"""Repositories for a tenancy's identity: compartments, users, groups, policies, API keys.

Every function takes the caller's ``Principal`` first and reads or writes rows of
``principal.tenancy_id`` only: another tenancy's row raises ``NotFound`` with exactly the
message a missing one gets. Rows are flushed, never committed (the caller's unit of work
commits). This module knows nothing about HTTP, how secrets are hashed (callers pass
hashes in) or what policy statements mean (callers validate the text before storing it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from atelier.errors import Conflict, InvalidInput, NotFound
from atelier.principal import ADMINISTRATORS, Principal
from atelier.store.scoping import scoped_get
from atelier.store.tables import (
    NAME_LENGTH,
    ApiKey,
    Compartment,
    Group,
    GroupMember,
    Policy,
    User,
    new_id,
    utcnow,
)

DESCRIPTION_LENGTH = 400
PATH_SEPARATOR = ":"
"""Separates compartment names in a path from the tenancy root: ``eng:ml``."""
SIMPLE_NAME_PATTERN = r"^[A-Za-z0-9_.-]+$"
"""Compartment and group names: usable unquoted in policy statements and paths."""
USER_NAME_PATTERN = r"^[A-Za-z0-9_.@+-]+$"
"""User names: also e-mail addresses."""
_SIMPLE_NAME = re.compile(SIMPLE_NAME_PATTERN)
_USER_NAME = re.compile(USER_NAME_PATTERN)

T = TypeVar("T", Compartment, User, Group, Policy, ApiKey)


def _name(name: str, pattern: re.Pattern[str] | None = None, what: str = "name") -> str:
    if not isinstance(name, str) or not 1 <= len(name) <= NAME_LENGTH or not name.strip():
        raise InvalidInput(f"{what} must be 1 to {NAME_LENGTH} characters", param="name")
    if pattern is not None and not pattern.fullmatch(name):
        allowed = "letters, digits, '_', '.', '-'" + (", '@', '+'" if pattern is _USER_NAME else "")
        raise InvalidInput(f"{what} {name!r} may hold only {allowed}", param="name")
    return name


def _description(text: str) -> str:
    if len(text) > DESCRIPTION_LENGTH:
        raise InvalidInput(f"description must be at most {DESCRIPTION_LENGTH} characters", param="description")
    return text


@dataclass(frozen=True)
class _Named:
    """The rows of one table named uniquely in their tenancy: users, groups, policies.

    Create, read, find by name, list and rename are the same for each; what differs (ids,
    name rules, what protects a row) stays in the functions below that use this.
    """

    table: type
    noun: str
    prefix: str
    pattern: re.Pattern[str] | None

    def new(self, session: Session, principal: Principal, name: str, description: str = "", **fields):
        """Create a row of the caller's tenancy.

        Raises:
            InvalidInput: Bad name or description.
            Conflict: The tenancy already has one of this name.
        """
        _name(name, self.pattern, f"{self.noun} name")
        _description(description)
        self.require_free(session, principal, name)
        now = utcnow()
        extra = {"updated_at": now} if hasattr(self.table, "updated_at") else {}
        row = self.table(id=new_id(self.prefix), tenancy_id=principal.tenancy_id, name=name,
                         description=description, created_at=now, **extra, **fields)
        session.add(row)
        session.flush()
        return row

    def get(self, session: Session, principal: Principal, row_id: str):
        """The row with this id.

        Raises:
            NotFound: None in the caller's tenancy.
        """
        return scoped_get(session, principal, self.table, row_id, self.noun)

    def find(self, session: Session, principal: Principal, name: str):
        """The caller's tenancy's row of this name, or None."""
        table = self.table
        return session.scalar(select(table).where(table.tenancy_id == principal.tenancy_id, table.name == name))

    def all(self, session: Session, principal: Principal) -> list:
        """The caller's tenancy's rows, oldest first."""
        table = self.table
        query = select(table).where(table.tenancy_id == principal.tenancy_id)
        return list(session.scalars(query.order_by(table.created_at, table.id)))

    def require_free(self, session: Session, principal: Principal, name: str) -> None:
        if self.find(session, principal, name) is not None:
            raise Conflict(f"a {self.noun} named {name!r} already exists", param="name")

    def edit(self, session: Session, principal: Principal, row, name: str | None, description: str | None) -> None:
        """Rename ``row`` and change its description (None leaves a field as it is)."""
        if name is not None and name != row.name:
            _name(name, self.pattern, f"{self.noun} name")
            self.require_free(session, principal, name)
            row.name = name
        if description is not None:
            row.description = _description(description)


_USERS = _Named(User, "user", "usr", _USER_NAME)
_GROUPS = _Named(Group, "group", "grp", _SIMPLE_NAME)
_POLICIES = _Named(Policy, "policy", "pol", None)


# --- compartments ----------------------------------------------------------------------


def _sibling(session: Session, principal: Principal, parent_id: str | None, name: str) -> Compartment | None:
    parent = Compartment.parent_id.is_(None) if parent_id is None else Compartment.parent_id == parent_id
    query = select(Compartment).where(Compartment.tenancy_id == principal.tenancy_id, parent, Compartment.name == name)
    return session.scalar(query)


def create_compartment(
    session: Session, principal: Principal, name: str, *, parent_id: str | None = None, description: str = ""
) -> Compartment:
    """Create a compartment under ``parent_id`` (None: the tenancy root).

    Raises:
        InvalidInput: Bad name (letters, digits, ``_ . -``; 1 to 100) or description.
        NotFound: No such parent in the caller's tenancy.
        Conflict: The parent already has a compartment of this name.
    """
    _name(name, _SIMPLE_NAME, "compartment name")
    _description(description)
    if parent_id is not None:
        get_compartment(session, principal, parent_id)
    if _sibling(session, principal, parent_id, name) is not None:
        raise Conflict(f"a compartment named {name!r} already exists there", param="name")
    row = Compartment(
        id=new_id("cmp"), tenancy_id=principal.tenancy_id, parent_id=parent_id, name=name,
        description=description, created_at=utcnow(),
    )
    session.add(row)
    session.flush()
    return row


def get_compartment(session: Session, principal: Principal, compartment_id: str) -> Compartment:
    """The compartment with this id.

    Raises:
        NotFound: No such compartment in the caller's tenancy.
    """
    return scoped_get(session, principal, Compartment, compartment_id, "compartment")


def list_compartments(session: Session, principal: Principal) -> list[Compartment]:
    """Every compartment of the caller's tenancy, oldest first (parents before children)."""
    query = select(Compartment).where(Compartment.tenancy_id == principal.tenancy_id)
    return list(session.scalars(query.order_by(Compartment.created_at, Compartment.id)))


def update_compartment(
    session: Session, principal: Principal, compartment_id: str, *, name: str | None = None,
    description: str | None = None,
) -> Compartment:
    """Rename a compartment or change its description (None leaves a field as it is).

    Raises:
        InvalidInput: Bad name or description.
        NotFound: No such compartment in the caller's tenancy.
        Conflict: A sibling already has the new name.
    """
    row = get_compartment(session, principal, compartment_id)
    if name is not None and name != row.name:
        _name(name, _SIMPLE_NAME, "compartment name")
        if _sibling(session, principal, row.parent_id, name) is not None:
            raise Conflict(f"a compartment named {name!r} already exists there", param="name")
        row.name = name
    if description is not None:
        row.description = _description(description)
    session.flush()
    return row


def delete_compartment(session: Session, principal: Principal, compartment_id: str) -> Compartment:
    """Delete an empty compartment.

    Raises:
        NotFound: No such compartment in the caller's tenancy.
        Conflict: It still has sub-compartments.
    """
    row = get_compartment(session, principal, compartment_id)
    children = session.scalar(select(func.count()).select_from(Compartment).where(Compartment.parent_id == row.id))
    if children:
        raise Conflict(f"compartment {row.name!r} has {children} sub-compartment(s): delete them first")
    session.delete(row)
    session.flush()
    return row


def compartment_path(session: Session, principal: Principal, compartment_id: str) -> tuple[str, ...]:
    """The names from the tenancy root down to the compartment, e.g. ``("eng", "ml")``.

    Raises:
        NotFound: No such compartment in the caller's tenancy.
    """
    names: list[str] = []
    seen: set[str] = set()
    current: str | None = compartment_id
    while current is not None and current not in seen:
        seen.add(current)
        row = get_compartment(session, principal, current)
        names.append(row.name)
        current = row.parent_id
    return tuple(reversed(names))


def compartment_paths(session: Session, principal: Principal) -> dict[str | None, tuple[str, ...]]:
    """Every compartment's path from the tenancy root, by id (``None``: the root itself), in one query."""
    rows = {row.id: row for row in list_compartments(session, principal)}
    paths: dict[str | None, tuple[str, ...]] = {None: ()}
    for row in rows.values():
        names, current, seen = [], row, set()
        while current is not None and current.id not in seen:
            seen.add(current.id)
            names.append(current.name)
            current = rows.get(current.parent_id) if current.parent_id else None
        paths[row.id] = tuple(reversed(names))
    return paths


def resolve_compartment(session: Session, principal: Principal, ref: str) -> Compartment:
    """The compartment named by an id (``cmp_…``) or a path from the root (``eng:ml``).

    Raises:
        NotFound: No such compartment in the caller's tenancy.
    """
    if ref.startswith("cmp_"):
        return get_compartment(session, principal, ref)
    row: Compartment | None = None
    for name in ref.strip().split(PATH_SEPARATOR):
        row = _sibling(session, principal, row.id if row else None, name.strip())
        if row is None:
            break
    if row is None:
        raise NotFound(f"compartment {ref!r} not found")
    return row


# --- users -----------------------------------------------------------------------------


create_user, get_user, find_user, list_users = _USERS.new, _USERS.get, _USERS.find, _USERS.all
"""A user of the caller's tenancy: create (``name``, ``description``), by id, by name, all (see ``_Named``)."""


def update_user(
    session: Session, principal: Principal, user_id: str, *, name: str | None = None, description: str | None = None
) -> User:
    """Rename a user or change the description (None leaves a field as it is).

    Raises:
        InvalidInput: Bad name or description.
        NotFound: No such user in the caller's tenancy.
        Conflict: Another user has the new name.
    """
    row = get_user(session, principal, user_id)
    _USERS.edit(session, principal, row, name, description)
    session.flush()
    return row


def delete_user(session: Session, principal: Principal, user_id: str) -> list[str]:
    """Delete a user: revoke its API keys, drop its group memberships, remove the row.

    The revoked keys stay (unbound from the user) so that the audit log's key ids keep
    meaning something.

    Returns:
        The ids of the keys this revoked.

    Raises:
        NotFound: No such user in the caller's tenancy.
        Conflict: The caller's own user, or the last member of the Administrators group.
    """
    row = get_user(session, principal, user_id)
    if row.id == principal.user_id:
        raise Conflict("you cannot delete your own user")
    _keep_an_administrator(session, principal, row.id)
    now = utcnow()
    keys = list(session.scalars(select(ApiKey).where(ApiKey.user_id == row.id)))
    revoked = []
    for key in keys:
        if key.revoked_at is None:
            key.revoked_at = now
            revoked.append(key.id)
        key.user_id = None
    session.execute(delete(GroupMember).where(GroupMember.user_id == row.id))
    session.flush()
    session.delete(row)
    session.flush()
    return revoked


def groups_of(session: Session, principal: Principal, user_id: str) -> list[Group]:
    """The groups the user belongs to, by name.

    Raises:
        NotFound: No such user in the caller's tenancy.
    """
    get_user(session, principal, user_id)
    return _memberships(session, principal, Group, GroupMember.group_id, GroupMember.user_id == user_id)


def _memberships(session: Session, principal: Principal, table: type[T], key, condition) -> list[T]:
    """The rows of ``table`` joined to the memberships matching ``condition`` on ``key``, by name."""
    query = select(table).join(GroupMember, key == table.id).where(condition, table.tenancy_id == principal.tenancy_id)
    return list(session.scalars(query.order_by(table.name)))


# --- groups ----------------------------------------------------------------------------


create_group, get_group, find_group, list_groups = _GROUPS.new, _GROUPS.get, _GROUPS.find, _GROUPS.all
"""A group of the caller's tenancy: create (``name``, ``description``), by id, by name, all (see ``_Named``)."""


def update_group(
    session: Session, principal: Principal, group_id: str, *, name: str | None = None, description: str | None = None
) -> Group:
    """Rename a group or change its description (None leaves a field as it is).

    Raises:
        InvalidInput: Bad name or description.
        NotFound: No such group in the caller's tenancy.
        Conflict: Another group has the new name, or this is the Administrators group
            (the protected policy names it).
    """
    row = get_group(session, principal, group_id)
    if name is not None and name != row.name and row.name == ADMINISTRATORS:
        raise Conflict(f"the {ADMINISTRATORS} group cannot be renamed", param="name")
    _GROUPS.edit(session, principal, row, name, description)
    session.flush()
    return row


def delete_group(session: Session, principal: Principal, group_id: str) -> Group:
    """Delete a group and its memberships (its users stay).

    Raises:
        NotFound: No such group in the caller's tenancy.
        Conflict: The Administrators group.
    """
    row = get_group(session, principal, group_id)
    if row.name == ADMINISTRATORS:
        raise Conflict(f"the {ADMINISTRATORS} group cannot be deleted")
    session.execute(delete(GroupMember).where(GroupMember.group_id == row.id))
    session.delete(row)
    session.flush()
    return row


def members_of(session: Session, principal: Principal, group_id: str) -> list[User]:
    """The group's users, by name.

    Raises:
        NotFound: No such group in the caller's tenancy.
    """
    get_group(session, principal, group_id)
    return _memberships(session, principal, User, GroupMember.user_id, GroupMember.group_id == group_id)


def add_member(session: Session, principal: Principal, group_id: str, user_id: str) -> GroupMember:
    """Put a user in a group; adding a member again changes nothing.

    Raises:
        NotFound: No such group, or no such user, in the caller's tenancy.
    """
    group = get_group(session, principal, group_id)
    user = get_user(session, principal, user_id)
    member = session.get(GroupMember, (group.id, user.id))
    if member is None:
        member = GroupMember(group_id=group.id, user_id=user.id, tenancy_id=principal.tenancy_id, created_at=utcnow())
        session.add(member)
        session.flush()
    return member


def remove_member(session: Session, principal: Principal, group_id: str, user_id: str) -> None:
    """Take a user out of a group.

    Raises:
        NotFound: No such group in the caller's tenancy, or the user is not in it.
        Conflict: The user is the last member of the Administrators group.
    """
    group = get_group(session, principal, group_id)
    member = session.get(GroupMember, (group.id, user_id)) if isinstance(user_id, str) else None
    if member is None or member.tenancy_id != principal.tenancy_id:
        raise NotFound(f"user {user_id!r} is not a member of group {group.name!r}")
    if group.name == ADMINISTRATORS:
        _keep_an_administrator(session, principal, user_id)
    session.delete(member)
    session.flush()


def _keep_an_administrator(session: Session, principal: Principal, user_id: str) -> None:
    """Refuse to take away the tenancy's last administrator (nobody could manage it again)."""
    admins = find_group(session, principal, ADMINISTRATORS)
    if admins is None or session.get(GroupMember, (admins.id, user_id)) is None:
        return
    count = session.scalar(select(func.count()).select_from(GroupMember).where(GroupMember.group_id == admins.id))
    if count <= 1:
        raise Conflict(f"the last member of the {ADMINISTRATORS} group cannot be removed")


# --- policies --------------------------------------------------------------------------


def create_policy(
    session: Session, principal: Principal, name: str, statements: str, *, description: str = "",
    protected: bool = False,
) -> Policy:
    """Store a policy. ``statements`` must already be valid (see ``security.policy``).

    Raises:
        InvalidInput: Bad name or description.
        Conflict: The tenancy already has a policy of this name.
    """
    return _POLICIES.new(session, principal, name, description, statements=statements, protected=protected)


get_policy, find_policy, list_policies = _POLICIES.get, _POLICIES.find, _POLICIES.all

def update_policy(
    session: Session, principal: Principal, policy_id: str, *, name: str | None = None,
    description: str | None = None, statements: str | None = None,
) -> Policy:
    """Change a policy (None leaves a field as it is); ``statements`` must be valid.

    Raises:
        InvalidInput: Bad name or description.
        NotFound: No such policy in the caller's tenancy.
        Conflict: The policy is protected, or another policy has the new name.
    """
    row = get_policy(session, principal, policy_id)
    if row.protected:
        raise Conflict(f"policy {row.name!r} is protected: it cannot be edited")
    _POLICIES.edit(session, principal, row, name, description)
    if statements is not None:
        row.statements = statements
    row.updated_at = utcnow()
    session.flush()
    return row


def delete_policy(session: Session, principal: Principal, policy_id: str) -> Policy:
    """Delete a policy.

    Raises:
        NotFound: No such policy in the caller's tenancy.
        Conflict: The policy is protected.
    """
    row = get_policy(session, principal, policy_id)
    if row.protected:
        raise Conflict(f"policy {row.name!r} is protected: it cannot be deleted")
    session.delete(row)
    session.flush()
    return row


# --- API keys --------------------------------------------------------------------------


def get_api_key(session: Session, principal: Principal, key_id: str) -> ApiKey:
    """The key with this id.

    Raises:
        NotFound: No such key in the caller's tenancy.
    """
    return scoped_get(session, principal, ApiKey, key_id, "API key")


def list_api_keys(
    session: Session, principal: Principal, *, user_id: str | None = None, include_revoked: bool = False
) -> list[ApiKey]:
    """The keys of the caller's tenancy (of one user if given), oldest first."""
    query = select(ApiKey).where(ApiKey.tenancy_id == principal.tenancy_id)
    if user_id is not None:
        query = query.where(ApiKey.user_id == user_id)
    if not include_revoked:
        query = query.where(ApiKey.revoked_at.is_(None))
    return list(session.scalars(query.order_by(ApiKey.created_at, ApiKey.id)))


def revoke_api_key(session: Session, principal: Principal, key_id: str) -> ApiKey:
    """Revoke a key for good; revoking it again keeps the first revocation time.

    Raises:
        NotFound: No such key in the caller's tenancy.
    """
    key = get_api_key(session, principal, key_id)
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        session.flush()
    return key


def replace_secret(
    session: Session, principal: Principal, key_id: str, secret_hash: str, *, previous_until: datetime
) -> ApiKey:
    """Put a new secret hash in slot 1; the old one moves to slot 2 until ``previous_until``.

    A secret still in slot 2 from an earlier rotation is dropped.

    Raises:
        NotFound: No such key in the caller's tenancy.
        Conflict: The key is revoked or expired.
    """
    key = get_api_key(session, principal, key_id)
    now = utcnow()
    if key.revoked_at is not None:
        raise Conflict(f"API key {key_id!r} is revoked: create a new key instead")
    if key.expires_at is not None and key.expires_at <= now:
        raise Conflict(f"API key {key_id!r} has expired: create a new key instead")
    key.secret_hash_2, key.secret_2_expires_at = key.secret_hash_1, previous_until
    key.secret_hash_1 = secret_hash
    session.flush()
    return key
