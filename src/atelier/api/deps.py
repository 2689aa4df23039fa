"""FastAPI dependencies, as ``Annotated`` types: settings, engine, catalog, session, principal.

Everything comes from ``app.state``, filled by the lifespan in ``app.py``. The principal
and what it may do come from ``api.access.authorize``, which every ``/v1`` route depends on.
Routes hold no authentication or authorization logic of their own.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from atelier.api.access import Access, authorize
from atelier.catalog import Catalog
from atelier.engine.client import EngineClient
from atelier.principal import Principal
from atelier.settings import Settings


def _settings(request: Request) -> Settings:
    return request.app.state.settings


def _engine(request: Request) -> EngineClient:
    return request.app.state.engine


def _catalog(request: Request) -> Catalog:
    return request.app.state.catalog


def _session(request: Request) -> Iterator[Session]:
    """A database session for one request: committed when the route returns, else rolled back."""
    with request.app.state.db.session() as session:
        yield session


def _principal(access: Annotated[Access, Depends(authorize)]) -> Principal:
    return access.principal


SettingsDep = Annotated[Settings, Depends(_settings)]
EngineDep = Annotated[EngineClient, Depends(_engine)]
CatalogDep = Annotated[Catalog, Depends(_catalog)]
SessionDep = Annotated[Session, Depends(_session, scope="function")]
"""Committed before the response is sent (``scope="function"``), so a failed commit is an error response."""
PrincipalDep = Annotated[Principal, Depends(_principal)]

AccessDep = Annotated[Access, Depends(authorize)]
