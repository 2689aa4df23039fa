"""``/v1/compartments``, ``/v1/users`` and ``/v1/groups``: a tenancy's administrators
manage its compartments, users, groups and group members.

Every route is for the tenancy's administrators (``ROUTES``) and reaches the caller's own
tenancy only, through ``store.identity``: another tenancy's id answers 404 exactly as a
missing one. An id inside a body (``parent``, ``user_id``) that is not the caller's answers
400 naming the field. Deleting a user revokes its API keys.
"""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from atelier.api.deps import AccessDep, SessionDep
from atelier.api.envelopes import Deleted, ObjectList
from atelier.api.references import body_reference
from atelier.principal import Principal
from atelier.store import identity
from atelier.store.identity import DESCRIPTION_LENGTH, SIMPLE_NAME_PATTERN, USER_NAME_PATTERN
from atelier.store.tables import NAME_LENGTH, Compartment, Group, User

router = APIRouter(tags=["identity"])

Description = Field("", max_length=DESCRIPTION_LENGTH, description="Free text, up to 400 characters.")


# --- compartments ----------------------------------------------------------------------


class CompartmentCreate(BaseModel):
    """A new compartment."""

    name: str = Field(
        min_length=1, max_length=NAME_LENGTH, pattern=SIMPLE_NAME_PATTERN,
        description="Unique among its siblings; letters, digits, `_ . -`.",
    )
    parent: str | None = Field(
        None, min_length=1, max_length=1000,
        description="Parent compartment: its id (`cmp_…`) or path from the root (`eng:ml`); none for the root.",
    )
    description: str = Description


class CompartmentUpdate(BaseModel):
    """Changes to a compartment; an absent field stays as it is."""

    name: str | None = Field(
        None, min_length=1, max_length=NAME_LENGTH, pattern=SIMPLE_NAME_PATTERN, description="New name."
    )
    description: str | None = Field(None, max_length=DESCRIPTION_LENGTH, description="New description.")


class CompartmentOut(BaseModel):
    """A compartment of the tenancy."""

    object: str = Field("compartment", description="Always `compartment`.")
    id: str = Field(description="The compartment's id (`cmp_…`).")
    name: str = Field(description="Its name.")
    parent_id: str | None = Field(description="The parent compartment's id; null at the tenancy root.")
    path: str = Field(description="Names from the tenancy root, joined by `:` (as policies write it).")
    description: str = Field(description="Free text.")
    created_at: datetime = Field(description="When it was created (UTC).")


def _compartment(row: Compartment, path: tuple[str, ...]) -> CompartmentOut:
    return CompartmentOut(
        id=row.id, name=row.name, parent_id=row.parent_id, path=identity.PATH_SEPARATOR.join(path),
        description=row.description, created_at=row.created_at,
    )


def _compartment_out(session: Session, principal: Principal, row: Compartment) -> CompartmentOut:
    return _compartment(row, identity.compartment_path(session, principal, row.id))


@router.post("/compartments", response_model=CompartmentOut, status_code=201, summary="Create a compartment")
def create_compartment(body: CompartmentCreate, access: AccessDep, session: SessionDep) -> CompartmentOut:
    """A compartment under `parent` (default: the tenancy root). 409 if the parent has one of that name."""
    principal = access.principal
    parent_id = None
    if body.parent is not None:
        with body_reference("parent"):
            parent_id = identity.resolve_compartment(session, principal, body.parent).id
    row = identity.create_compartment(
        session, principal, body.name, parent_id=parent_id, description=body.description
    )
    return _compartment_out(session, principal, row)


@router.get("/compartments", response_model=ObjectList[CompartmentOut], summary="List compartments")
def list_compartments(access: AccessDep, session: SessionDep) -> ObjectList[CompartmentOut]:
    """Every compartment of the tenancy, parents before children."""
    rows = identity.list_compartments(session, access.principal)
    by_id = {row.id: row for row in rows}

    def path(row: Compartment) -> tuple[str, ...]:
        names = [row.name]
        while row.parent_id is not None and row.parent_id in by_id and len(names) <= len(rows):
            row = by_id[row.parent_id]
            names.append(row.name)
        return tuple(reversed(names))

    return ObjectList[CompartmentOut](data=[_compartment(row, path(row)) for row in rows])


@router.get("/compartments/{compartment_id}", response_model=CompartmentOut, summary="Retrieve a compartment")
def retrieve_compartment(compartment_id: str, access: AccessDep, session: SessionDep) -> CompartmentOut:
    """One compartment by id, with its path."""
    row = identity.get_compartment(session, access.principal, compartment_id)
    return _compartment_out(session, access.principal, row)


@router.patch("/compartments/{compartment_id}", response_model=CompartmentOut, summary="Update a compartment")
def update_compartment(
    compartment_id: str, body: CompartmentUpdate, access: AccessDep, session: SessionDep
) -> CompartmentOut:
    """Rename a compartment or change its description."""
    row = identity.update_compartment(
        session, access.principal, compartment_id, name=body.name, description=body.description
    )
    return _compartment_out(session, access.principal, row)


@router.delete("/compartments/{compartment_id}", response_model=Deleted, summary="Delete a compartment")
def delete_compartment(compartment_id: str, access: AccessDep, session: SessionDep) -> Deleted:
    """Delete an empty compartment; 409 while it has sub-compartments."""
    row = identity.delete_compartment(session, access.principal, compartment_id)
    return Deleted(id=row.id, object="compartment")


# --- users -----------------------------------------------------------------------------


class UserCreate(BaseModel):
    """A new user."""

    name: str = Field(
        min_length=1, max_length=NAME_LENGTH, pattern=USER_NAME_PATTERN,
        description="Unique in the tenancy; letters, digits, `_ . - @ +` (an e-mail address fits).",
    )
    description: str = Description


class UserUpdate(BaseModel):
    """Changes to a user; an absent field stays as it is."""

    name: str | None = Field(
        None, min_length=1, max_length=NAME_LENGTH, pattern=USER_NAME_PATTERN, description="New name."
    )
    description: str | None = Field(None, max_length=DESCRIPTION_LENGTH, description="New description.")


class UserOut(BaseModel):
    """A user of the tenancy."""

    object: str = Field("user", description="Always `user`.")
    id: str = Field(description="The user's id (`usr_…`).")
    name: str = Field(description="Unique name.")
    description: str = Field(description="Free text.")
    groups: list[str] = Field(description="Names of the groups the user belongs to.")
    created_at: datetime = Field(description="When it was created (UTC).")


class UserDeleted(Deleted):
    """A deleted user and the API keys its deletion revoked."""

    revoked_keys: list[str] = Field(description="Ids of the user's keys, revoked with it.")


def _user(session: Session, principal: Principal, row: User) -> UserOut:
    groups = [g.name for g in identity.groups_of(session, principal, row.id)]
    return UserOut(id=row.id, name=row.name, description=row.description, groups=groups, created_at=row.created_at)


@router.post("/users", response_model=UserOut, status_code=201, summary="Create a user")
def create_user(body: UserCreate, access: AccessDep, session: SessionDep) -> UserOut:
    """A user without groups or keys (create a key for it with `POST /v1/api-keys`)."""
    row = identity.create_user(session, access.principal, body.name, description=body.description)
    return _user(session, access.principal, row)


@router.get("/users", response_model=ObjectList[UserOut], summary="List users")
def list_users(access: AccessDep, session: SessionDep) -> ObjectList[UserOut]:
    """The tenancy's users, oldest first."""
    rows = identity.list_users(session, access.principal)
    return ObjectList[UserOut](data=[_user(session, access.principal, row) for row in rows])


@router.get("/users/{user_id}", response_model=UserOut, summary="Retrieve a user")
def retrieve_user(user_id: str, access: AccessDep, session: SessionDep) -> UserOut:
    """One user by id, with its groups."""
    return _user(session, access.principal, identity.get_user(session, access.principal, user_id))


@router.patch("/users/{user_id}", response_model=UserOut, summary="Update a user")
def update_user(user_id: str, body: UserUpdate, access: AccessDep, session: SessionDep) -> UserOut:
    """Rename a user or change its description."""
    row = identity.update_user(session, access.principal, user_id, name=body.name, description=body.description)
    return _user(session, access.principal, row)


@router.delete("/users/{user_id}", response_model=UserDeleted, summary="Delete a user")
def delete_user(user_id: str, access: AccessDep, session: SessionDep) -> UserDeleted:
    """Delete a user, its group memberships, and revoke its API keys. 409 for yourself or
    the last administrator."""
    revoked = identity.delete_user(session, access.principal, user_id)
    return UserDeleted(id=user_id, object="user", revoked_keys=revoked)


# --- groups ----------------------------------------------------------------------------


class GroupCreate(BaseModel):
    """A new group."""

    name: str = Field(
        min_length=1, max_length=NAME_LENGTH, pattern=SIMPLE_NAME_PATTERN,
        description="Unique in the tenancy, as policies name it; letters, digits, `_ . -`.",
    )
    description: str = Description


class GroupUpdate(BaseModel):
    """Changes to a group; an absent field stays as it is."""

    name: str | None = Field(
        None, min_length=1, max_length=NAME_LENGTH, pattern=SIMPLE_NAME_PATTERN, description="New name."
    )
    description: str | None = Field(None, max_length=DESCRIPTION_LENGTH, description="New description.")


class MemberAdd(BaseModel):
    """A user to put in a group."""

    user_id: str = Field(min_length=1, max_length=100, description="Id of a user of the tenancy (`usr_…`).")


class Member(BaseModel):
    """A member of a group."""

    id: str = Field(description="The user's id.")
    name: str = Field(description="The user's name.")


class GroupOut(BaseModel):
    """A group of the tenancy."""

    object: str = Field("group", description="Always `group`.")
    id: str = Field(description="The group's id (`grp_…`).")
    name: str = Field(description="Unique name, as policies name it.")
    description: str = Field(description="Free text.")
    members: list[Member] = Field(description="Its users, by name.")
    created_at: datetime = Field(description="When it was created (UTC).")


def _group(session: Session, principal: Principal, row: Group) -> GroupOut:
    members = [Member(id=u.id, name=u.name) for u in identity.members_of(session, principal, row.id)]
    return GroupOut(id=row.id, name=row.name, description=row.description, members=members, created_at=row.created_at)


@router.post("/groups", response_model=GroupOut, status_code=201, summary="Create a group")
def create_group(body: GroupCreate, access: AccessDep, session: SessionDep) -> GroupOut:
    """An empty group; grant it access with a policy (`allow group <name> to ...`)."""
    row = identity.create_group(session, access.principal, body.name, description=body.description)
    return _group(session, access.principal, row)


@router.get("/groups", response_model=ObjectList[GroupOut], summary="List groups")
def list_groups(access: AccessDep, session: SessionDep) -> ObjectList[GroupOut]:
    """The tenancy's groups with their members, oldest first."""
    rows = identity.list_groups(session, access.principal)
    return ObjectList[GroupOut](data=[_group(session, access.principal, row) for row in rows])


@router.get("/groups/{group_id}", response_model=GroupOut, summary="Retrieve a group")
def retrieve_group(group_id: str, access: AccessDep, session: SessionDep) -> GroupOut:
    """One group by id, with its members."""
    return _group(session, access.principal, identity.get_group(session, access.principal, group_id))


@router.patch("/groups/{group_id}", response_model=GroupOut, summary="Update a group")
def update_group(group_id: str, body: GroupUpdate, access: AccessDep, session: SessionDep) -> GroupOut:
    """Rename a group or change its description (Administrators keeps its name)."""
    row = identity.update_group(session, access.principal, group_id, name=body.name, description=body.description)
    return _group(session, access.principal, row)


@router.delete("/groups/{group_id}", response_model=Deleted, summary="Delete a group")
def delete_group(group_id: str, access: AccessDep, session: SessionDep) -> Deleted:
    """Delete a group and its memberships (its users stay). 409 for Administrators."""
    row = identity.delete_group(session, access.principal, group_id)
    return Deleted(id=row.id, object="group")


@router.post("/groups/{group_id}/members", response_model=GroupOut, summary="Add a member to a group")
def add_member(group_id: str, body: MemberAdd, access: AccessDep, session: SessionDep) -> GroupOut:
    """Put a user of the tenancy in the group (adding a member again changes nothing)."""
    principal = access.principal
    group = identity.get_group(session, principal, group_id)
    with body_reference("user_id"):
        user = identity.get_user(session, principal, body.user_id)
    identity.add_member(session, principal, group.id, user.id)
    return _group(session, principal, group)


@router.delete("/groups/{group_id}/members/{user_id}", response_model=GroupOut, summary="Remove a member")
def remove_member(group_id: str, user_id: str, access: AccessDep, session: SessionDep) -> GroupOut:
    """Take a user out of the group; 404 if it is not a member. 409 for the last administrator."""
    identity.remove_member(session, access.principal, group_id, user_id)
    return _group(session, access.principal, identity.get_group(session, access.principal, group_id))
