"""Repository of custom models (fine-tuned adapters): the only code that queries ``custom_models``.

Every function takes the owner first (the caller's ``Principal``, or a tenancy id where a
worker acts for the job's tenancy) and a session; another tenancy's custom model is
``NotFound`` exactly like a missing one. Also holds the naming rule of custom models, in one
place: a job ``job_X`` makes the custom model ``cm_X`` (its adapter object ``adp_X``), named
``ft:<base>:[<suffix>:]job_X``; either the id or the name finds it. Knows nothing about
HTTP, policies or adapters' contents.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from atelier.errors import NotFound
from atelier.principal import Principal
from atelier.store.scoping import scoped_get, tenancy_of
from atelier.store.tables import CustomModel

ID_PREFIX = "cm_"
NAME_PREFIX = "ft:"


def custom_model_name(base: str, suffix: str | None, job_id: str) -> str:
    """``ft:<base>:<suffix>:<job id>`` (or ``ft:<base>:<job id>``): the name the service shows."""
    return f"{NAME_PREFIX}{base}:{suffix}:{job_id}" if suffix else f"{NAME_PREFIX}{base}:{job_id}"


def ids_for_job(job_id: str) -> tuple[str, str]:
    """``(custom model id, adapter object id)`` of the job's result: derived, so a retry makes no duplicate."""
    suffix = job_id.removeprefix("job_")
    return f"{ID_PREFIX}{suffix}", f"adp_{suffix}"


def is_reference(text: str) -> bool:
    """Whether ``text`` names a custom model (its id or its name) rather than a catalog model."""
    return text.startswith((ID_PREFIX, NAME_PREFIX))


def get(session: Session, owner: Principal | str, ref: str) -> CustomModel:
    """The owner's custom model with this id (``cm_…``) or name (``ft:…``).

    Raises:
        NotFound: None in the owner's tenancy (``param="model"``, ``code="model_not_found"``).
    """
    row_id = ref
    if isinstance(ref, str) and ref.startswith(NAME_PREFIX):
        row_id = session.scalar(select(CustomModel.id).where(CustomModel.tenancy_id == tenancy_of(owner),
                                                             CustomModel.name == ref))
        if row_id is None:
            raise NotFound(f"custom model {ref!r} not found", param="model", code="model_not_found")
    return scoped_get(session, owner, CustomModel, row_id, "custom model", param="model", code="model_not_found")


def list_all(session: Session, owner: Principal | str) -> list[CustomModel]:
    """The owner's custom models, oldest first."""
    query = select(CustomModel).where(CustomModel.tenancy_id == tenancy_of(owner))
    return list(session.scalars(query.order_by(CustomModel.created_at, CustomModel.id)))


def of_job(session: Session, owner: Principal | str, job_id: str) -> CustomModel | None:
    """The custom model a job made, if it made one."""
    query = select(CustomModel).where(CustomModel.tenancy_id == tenancy_of(owner), CustomModel.job_id == job_id)
    return session.scalar(query)


def add(session: Session, owner: Principal | str, row: CustomModel) -> CustomModel:
    """Record a new custom model of the owner's tenancy (flushed, not committed)."""
    if row.tenancy_id != tenancy_of(owner):
        raise ValueError("a custom model belongs to its owner's tenancy")
    session.add(row)
    session.flush()
    return row
