"""Endpoints: a base model, or a custom model of the same base, served on a hosting cluster.

An endpoint takes one of its hosting cluster's places (``ModelSpec.sizing.max_custom_models``,
50 by default): the cluster refuses one more with a ``Conflict``. Creating an endpoint of a
custom model loads its adapter into the engine once (:class:`AdapterHost`); every endpoint
of that custom model shares the loaded adapter, and deleting the last of them frees it
(``EngineClient.remove_adapter``). Chat and completions then address the endpoint id
(``ep_…``) or the hosted custom model id as ``model``.

States: ``creating`` → ``active`` (instant locally, once the adapter is loaded; ``failed``
if it cannot be), ``active`` → ``updating`` → ``active`` on a rename, ``deleting`` →
``deleted`` (the row stays). Every method takes the caller's ``Principal`` first; another
tenancy's endpoint is ``NotFound`` exactly like a missing one. Knows nothing about HTTP or
policies (the routes check those, and hand ids in bodies over already checked).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from atelier.catalog import Catalog, ModelSpec
from atelier.cloud.adapter_host import AdapterHost
from atelier.cloud.clusters import NAME_PATTERN
from atelier.cloud.custom_models import CustomModelService, is_custom_model_ref
from atelier.cloud.states import ENDPOINT_MOVES, move
from atelier.errors import AtelierError, Conflict, InvalidInput, NotFound
from atelier.principal import Principal
from atelier.store import clusters as repo
from atelier.store import custom_models as custom_models_repo
from atelier.store.db import Database
from atelier.store.tables import NAME_LENGTH, CustomModel, Endpoint, utcnow

ENDPOINT_PREFIX = "ep_"


class EndpointRequest(BaseModel):
    """The body of ``POST /v1/endpoints``."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN, description="Unique among your endpoints: letters, digits, `. _ -`.")
    cluster_id: str = Field(min_length=1, max_length=100, description="An active hosting cluster of yours.")
    model: str = Field(
        min_length=1, max_length=NAME_LENGTH,
        description="The cluster's base model, or the id of a custom model (`cm_…`) of that base.",
    )  # fmt: skip
    compartment: str | None = Field(
        None, min_length=1, max_length=400, description="Compartment id or path (`eng:ml`); default the root."
    )
    description: str = Field("", max_length=400, description="Free text.")


class EndpointUpdate(BaseModel):
    """The body of ``PATCH /v1/endpoints/{id}``: what to change (absent fields stay)."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, pattern=NAME_PATTERN, description="A new name.")
    description: str | None = Field(None, max_length=400, description="A new description.")


class EndpointService:
    """The endpoints of every tenancy, each method scoped to the caller's.

    Args:
        db: The metadata database.
        catalog: The base models (their sizing gives a cluster's places).
        custom_models: The custom models (and their sealed adapters).
        host: The adapters loaded in the engine.
    """

    def __init__(self, db: Database, catalog: Catalog, custom_models: CustomModelService, host: AdapterHost):
        self._db = db
        self._catalog = catalog
        self._custom_models = custom_models
        self.host = host

    def _chat_spec(self, name: str) -> ModelSpec:
        try:
            return self._catalog.get(name, kind="chat")
        except NotFound:
            raise InvalidInput(f"endpoints serve chat models; {name!r} is not one (embedding models are called "
                               "by name on /v1/embeddings)", param="cluster_id") from None

    def create(self, principal: Principal, body: EndpointRequest, *, compartment_id: str | None = None) -> Endpoint:
        """Take a place on the hosting cluster, load the custom model's adapter, go ``active``.

        Returns:
            The endpoint, ``active``.

        Raises:
            InvalidInput: ``cluster_id`` is not a hosting cluster of the caller ("not found or
                not authorized" for a missing or foreign one); ``model`` is neither the
                cluster's base model nor an active custom model of it.
            Conflict: The cluster is not active, or has no place left (code
                ``capacity_exceeded``); the name is taken.
            Unavailable: The adapter cannot be loaded (the endpoint is left ``failed``).
        """
        with repo.locked(self._db, principal.tenancy_id) as session:
            try:
                cluster = repo.get_cluster(session, principal, body.cluster_id)
            except NotFound:
                raise InvalidInput(f"cluster {body.cluster_id!r} not found or not authorized",
                                   param="cluster_id") from None
            if cluster.type != "hosting":
                raise InvalidInput(f"cluster {cluster.id!r} is a {cluster.type} cluster; endpoints need a hosting one",
                                   param="cluster_id")
            if cluster.state != "active":
                raise Conflict(f"cluster {cluster.id!r} is {cluster.state}; endpoints are created on active clusters",
                               param="cluster_id")
            spec = self._chat_spec(cluster.base_model)
            custom = self._model(session, principal, body.model, spec)
            repo.require_free_name(session, principal, Endpoint, body.name)
            total, used = spec.sizing.max_custom_models, repo.endpoints_on(session, cluster.id)
            if used >= total:
                raise Conflict(f"cluster {cluster.id!r} hosts {used} of its {total} endpoints: delete one, or create "
                               "another hosting cluster", param="cluster_id", code="capacity_exceeded")
            now = utcnow()
            row = Endpoint(
                tenancy_id=principal.tenancy_id, compartment_id=compartment_id, cluster_id=cluster.id, name=body.name,
                description=body.description, base_model=spec.name, custom_model_id=custom.id if custom else None,
                state="creating", state_details="", created_at=now, updated_at=now,
            )  # fmt: skip
            session.add(row)
            session.flush()
        if custom is not None:
            try:
                self.host.slot(principal, custom)
            except AtelierError as exc:
                self._settle(principal, row.id, "failed", f"the adapter could not be loaded: {exc.message}")
                raise
        return self._settle(principal, row.id, "active")

    def _model(self, session: Session, principal: Principal, model: str, spec: ModelSpec) -> CustomModel | None:
        """None for the base model, else the caller's active custom model of the same base."""
        if model == spec.name:
            return None
        if not is_custom_model_ref(model):
            raise InvalidInput(f"model must be the cluster's base model {spec.name!r} or a custom model of it (cm_…)",
                               param="model")
        try:
            row = custom_models_repo.get(session, principal, model)
        except NotFound:
            raise InvalidInput(f"custom model {model!r} not found or not authorized", param="model") from None
        if row.base_model != spec.name:
            raise InvalidInput(f"custom model {model!r} is tuned from {row.base_model!r}; this cluster hosts "
                               f"{spec.name!r}", param="model")
        if row.state != "active":
            raise Conflict(f"custom model {model!r} is {row.state}", param="model")
        return row

    def _settle(self, principal: Principal, endpoint_id: str, state: str, details: str = "") -> Endpoint:
        with self._db.session() as session:
            row = repo.get_endpoint(session, principal, endpoint_id)
            row.state = move(ENDPOINT_MOVES, f"endpoint {row.id!r}", row.state, state)
            row.state_details = details[:400]
            row.updated_at = utcnow()
            if state == "deleted":
                row.deleted_at = row.updated_at
            session.flush()
            return row

    def list(self, principal: Principal, *, include_deleted: bool = False, cluster_id: str | None = None
             ) -> list[Endpoint]:
        """The tenancy's endpoints, oldest first (deleted ones only when asked)."""
        with self._db.session() as session:
            return repo.list_endpoints(session, principal, include_deleted=include_deleted, cluster_id=cluster_id)

    def get(self, principal: Principal, endpoint_id: str) -> Endpoint:
        """The caller's endpoint (a deleted one too, in state ``deleted``).

        Raises:
            NotFound: No such endpoint in the caller's tenancy.
        """
        with self._db.session() as session:
            return repo.get_endpoint(session, principal, endpoint_id)

    def update(self, principal: Principal, endpoint_id: str, body: EndpointUpdate) -> Endpoint:
        """Rename or describe an active endpoint (``active`` → ``updating`` → ``active``).

        Raises:
            NotFound: No such endpoint in the caller's tenancy.
            InvalidInput: Nothing to change.
            Conflict: Not active, or the name is taken.
        """
        if body.name is None and body.description is None:
            raise InvalidInput("give at least one of name, description", param="name")
        with repo.locked(self._db, principal.tenancy_id) as session:
            row = repo.get_endpoint(session, principal, endpoint_id)
            what = f"endpoint {row.id!r}"
            row.state = move(ENDPOINT_MOVES, what, row.state, "updating")
            if body.name is not None and body.name != row.name:
                repo.require_free_name(session, principal, Endpoint, body.name, other_than=row.id)
                row.name = body.name
            if body.description is not None:
                row.description = body.description
            row.state = move(ENDPOINT_MOVES, what, row.state, "active")
            row.updated_at = utcnow()
            session.flush()
            return row

    def delete(self, principal: Principal, endpoint_id: str) -> Endpoint:
        """Stop serving (``deleting`` → ``deleted``); the last endpoint of a custom model frees its adapter.

        Raises:
            NotFound: No such endpoint in the caller's tenancy.
            Conflict: Already deleted (or being deleted).
        """
        with repo.locked(self._db, principal.tenancy_id) as session:
            row = repo.get_endpoint(session, principal, endpoint_id)
            row.state = move(ENDPOINT_MOVES, f"endpoint {row.id!r}", row.state, "deleting")
            row.updated_at = utcnow()
            session.flush()
            others = 0
            if row.custom_model_id:
                others = len([e for e in repo.endpoints_of(session, principal, row.custom_model_id,
                                                           states=repo.ENDPOINTS_HOLDING_CAPACITY) if e.id != row.id])
        if row.custom_model_id and not others:
            self.host.release(row.custom_model_id)
        return self._settle(principal, row.id, "deleted")

    def serving_slot(self, principal: Principal, row: Endpoint) -> int | None:
        """The adapter slot an active endpoint generates with (None: the base model).

        Raises:
            Conflict: The endpoint is not active.
            NotFound: Its custom model is gone.
            Unavailable: The adapter cannot be loaded.
        """
        if row.state != "active":
            raise Conflict(f"endpoint {row.id!r} is {row.state}; it serves only when active", param="model")
        if row.custom_model_id is None:
            return None
        return self.host.slot(principal, self._custom_models.get(principal, row.custom_model_id))

    def hosted(self, principal: Principal, custom_model_id: str) -> Endpoint | None:
        """An active endpoint of the custom model, if it has one."""
        with self._db.session() as session:
            found = repo.endpoints_of(session, principal, custom_model_id)
        return found[0] if found else None

    def hosted_models(self, principal: Principal) -> set[str]:
        """Ids of the tenancy's custom models with an active endpoint."""
        with self._db.session() as session:
            return repo.hosted_custom_models(session, principal)

