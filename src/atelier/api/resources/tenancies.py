"""``/v1/tenancies``: the operator creates tenancies and lists them.

Creating one answers its id and its first administrator's API key, shown once (see
``security.tenancies``). Only the operator key reaches these routes (``ROUTES``).
"""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter
from pydantic import BaseModel, Field

from atelier.api.deps import ServicesDep, SessionDep
from atelier.api.envelopes import ObjectList
from atelier.security.tenancies import create_tenancy
from atelier.store import repos
from atelier.store.tables import NAME_LENGTH, Tenancy

router = APIRouter(tags=["tenancies"])


class TenancyCreate(BaseModel):
    """A new tenancy."""

    name: str = Field(min_length=1, max_length=NAME_LENGTH, description="Unique name of the tenancy.")


class TenancyOut(BaseModel):
    """A tenancy."""

    object: str = Field("tenancy", description="Always `tenancy`.")
    id: str = Field(description="The tenancy's id (`ten_…`).")
    name: str = Field(description="Unique name.")
    created_at: datetime = Field(description="When it was created (UTC).")


class TenancyCreated(TenancyOut):
    """A new tenancy and the key of its first administrator (shown this once)."""

    admin_user_id: str = Field(description="The user `admin`, member of the group Administrators.")
    admin_key: str = Field(
        description="API key of `admin` (expires in 90 days). Store it now: it is never shown again."
    )


def _out(tenancy: Tenancy) -> TenancyOut:
    return TenancyOut(id=tenancy.id, name=tenancy.name, created_at=tenancy.created_at)


@router.post("/tenancies", response_model=TenancyCreated, status_code=201, summary="Create a tenancy")
def create(body: TenancyCreate, services: ServicesDep, session: SessionDep) -> TenancyCreated:
    """A tenancy with its Administrators group, protected admin policy, key ring, and an
    `admin` user whose API key is returned once. 409 if the name is taken."""
    tenancy, admin, raw = create_tenancy(session, services.keys, body.name)
    return TenancyCreated(**_out(tenancy).model_dump(), admin_user_id=admin.id, admin_key=raw)


@router.get("/tenancies", response_model=ObjectList[TenancyOut], summary="List tenancies")
def list_all(session: SessionDep) -> ObjectList[TenancyOut]:
    """Every tenancy of the service, oldest first."""
    return ObjectList[TenancyOut](data=[_out(t) for t in repos.list_tenancies(session)])


@router.get("/tenancies/{tenancy_id}", response_model=TenancyOut, summary="Retrieve a tenancy")
def retrieve(tenancy_id: str, session: SessionDep) -> TenancyOut:
    """One tenancy by id."""
    return _out(repos.get_tenancy(session, tenancy_id))
