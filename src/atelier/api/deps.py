"""FastAPI dependencies, as ``Annotated`` types: settings, engine, catalog, session, principal.

Everything comes from ``app.state``, filled by the lifespan in ``app.py``. The principal
comes from the ``Authorization: Bearer <key>`` header, checked by
``security.api_keys.authenticate``; every ``/v1`` route depends on it. Routes hold no
authentication logic of their own.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from atelier.catalog import Catalog
from atelier.engine.client import EngineClient
from atelier.errors import Unauthenticated
from atelier.security.api_keys import authenticate
from atelier.security.principal import Principal
from atelier.settings import Settings

bearer_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    bearerFormat="atl_<key id>_<secret>",
    description="An Atelier API key, sent as `Authorization: Bearer <key>`.",
)


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


def _principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> Principal:
    """The caller, from its bearer key (a short session of its own, not held while streaming).

    Raises:
        Unauthenticated: No key, another scheme than Bearer, or a key that does not authenticate.
    """
    header = request.headers.get("authorization", "").strip()
    if credentials is None and header and header.split()[0].lower() != "bearer":
        raise Unauthenticated("The Authorization header must use the Bearer scheme: Authorization: Bearer <key>.")
    raw = credentials.credentials if credentials is not None else None
    with request.app.state.db.session() as session:
        return authenticate(session, raw)


SettingsDep = Annotated[Settings, Depends(_settings)]
EngineDep = Annotated[EngineClient, Depends(_engine)]
CatalogDep = Annotated[Catalog, Depends(_catalog)]
SessionDep = Annotated[Session, Depends(_session)]
PrincipalDep = Annotated[Principal, Depends(_principal)]

require_principal = Depends(_principal)
"""For ``dependencies=[...]`` on routers whose every route needs an authenticated caller."""
