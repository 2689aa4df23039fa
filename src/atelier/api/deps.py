"""FastAPI dependencies, as ``Annotated`` types: the services, the caller, its guard, a session.

``ServicesDep`` is the one container of the service's parts (``api/services.py``).
``AccessDep`` comes from ``api.access.authorize``, the gate every ``/v1`` route depends on;
``GuardDep`` is the caller's object-level authorization (``api/authz.py``), one per
request. Routes hold no authentication or authorization logic of their own.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends
from sqlalchemy.orm import Session

from atelier.api.access import Access, authorize
from atelier.api.authz import Guard
from atelier.api.services import Services, ServicesDep
from atelier.principal import Principal

__all__ = ["AccessDep", "GuardDep", "PrincipalDep", "ServicesDep", "SessionDep"]


def _session(services: ServicesDep) -> Iterator[Session]:
    """A database session for one request: committed when the route returns, else rolled back."""
    with services.db.session() as session:
        yield session


def _principal(access: Annotated[Access, Depends(authorize)]) -> Principal:
    return access.principal


def _guard(access: Annotated[Access, Depends(authorize)], services: ServicesDep) -> Guard:
    return guard_for(access, services)


def guard_for(access: Access, services: Services) -> Guard:
    """The guard of one request's caller over the service's objects."""
    return Guard(access, services.db, {
        "clusters": services.clusters.get,
        "endpoints": services.endpoints.get,
        "custom-models": services.custom_models.get,
        "fine-tuning-jobs": services.fine_tuning.get,
        "evaluations": services.evaluations.get,  # jobs too: policies decide on fine-tuning-jobs
        "knowledge-bases": services.knowledge_bases.get,
        "files": services.files.get_file,
    })  # fmt: skip


SessionDep = Annotated[Session, Depends(_session, scope="function")]
"""Committed before the response is sent (``scope="function"``), so a failed commit is an error response."""
PrincipalDep = Annotated[Principal, Depends(_principal)]
AccessDep = Annotated[Access, Depends(authorize)]
GuardDep = Annotated[Guard, Depends(_guard)]
