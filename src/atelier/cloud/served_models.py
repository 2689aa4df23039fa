"""The ``model`` of a generation: a catalog base model, an endpoint, or a hosted custom model.

- a catalog chat model's name: the shared base model, for any authenticated caller;
- an endpoint id (``ep_…``) of the caller's tenancy: ``invoke`` on it; the endpoint must be
  active; it serves its base model or its custom model's adapter;
- a custom model of the caller's tenancy, by id (``cm_…``) or by the name the service shows
  for it (``ft:<base>:[<suffix>:]<job id>``): ``invoke`` on it. An active endpoint hosting it
  serves it with its adapter pinned (dedicated capacity); otherwise it is served on demand on
  the shared base of the tenancy's hosting capacity (an active hosting cluster of its base
  model): its adapter is loaded on first use and evicted least-recently-used under the
  engine's adapter memory budget. With neither: 400 ``model_not_hosted``, saying what to create.

Another tenancy's id, or one the caller may not see, answers exactly what an unknown model
answers (404 ``model_not_found``). The engine then gets an opaque adapter slot, never a path
or a name from the request. Policies are decided by the ``Authorizer`` the caller hands in
(the API's request guard); this module knows nothing about HTTP.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from atelier.catalog import Catalog, ModelSpec
from atelier.cloud.adapter_host import AdapterHost
from atelier.cloud.clusters import ClusterService
from atelier.cloud.custom_models import CustomModelService, is_custom_model_ref
from atelier.cloud.endpoints import ENDPOINT_PREFIX, EndpointService
from atelier.errors import InvalidInput, NotFound
from atelier.principal import Principal
from atelier.store.tables import CustomModel, Endpoint


class Authorizer(Protocol):
    """What decides whether the caller may use an object (the API's per-request guard)."""

    @property
    def principal(self) -> Principal:
        """The caller."""

    def require(self, row: Any, operation: str) -> Any:
        """``row`` once ``operation`` on it is allowed; NotFound (invisible) or Forbidden otherwise."""

    def visible(self, rows: list[Any]) -> list[Any]:
        """The rows the caller may inspect."""


@dataclass(frozen=True)
class ServedModel:
    """What to generate with: the base model's spec, the adapter slot (None: the base), the name to show."""

    spec: ModelSpec
    adapter_slot: int | None
    name: str


class ServedModels:
    """Resolves a request's ``model`` to what the engine serves (see the module docstring).

    Args:
        catalog: The base models.
        custom_models: The tenancies' custom models.
        endpoints: The tenancies' endpoints (and the adapters they keep loaded).
        clusters: The tenancies' clusters (hosting capacity for custom models served on demand).
        adapters: The adapters loaded in the engine.
    """

    def __init__(self, catalog: Catalog, custom_models: CustomModelService, endpoints: EndpointService,
                 clusters: ClusterService, adapters: AdapterHost):
        self._catalog = catalog
        self._custom_models = custom_models
        self._endpoints = endpoints
        self._clusters = clusters
        self._adapters = adapters

    def resolve(self, guard: Authorizer, name: str) -> ServedModel:
        """The served model named ``name`` for the guard's caller (blocking: may load an adapter).

        Raises:
            NotFound: Not a catalog chat model, nor an endpoint or custom model the caller may
                invoke (the same error either way, ``model_not_found``).
            Forbidden: An endpoint or custom model the caller may see but not invoke.
            InvalidInput: A custom model that no active endpoint hosts (``model_not_hosted``).
            Conflict: An endpoint that is not active.
            Unavailable: The engine cannot serve adapters, or the adapter cannot be loaded.
        """
        if name.startswith(ENDPOINT_PREFIX):
            endpoint = self._visible(guard, lambda: self._endpoints.get(guard.principal, name), name)
            spec = self._catalog.get(endpoint.base_model, kind="chat")
            return ServedModel(spec, self._endpoints.serving_slot(guard.principal, endpoint), name)
        if is_custom_model_ref(name):
            row: CustomModel = self._visible(guard, lambda: self._custom_models.get(guard.principal, name), name)
            spec = self._catalog.get(row.base_model, kind="chat")
            endpoint = self._endpoints.hosted(guard.principal, row.id)
            if endpoint is not None:
                return ServedModel(spec, self._endpoints.serving_slot(guard.principal, endpoint), name)
            if not self._clusters.can_host(guard.principal, row.base_model):
                raise self._not_hosted(row)
            return ServedModel(spec, self._adapters.slot(guard.principal, row), name)
        spec = self._catalog.get(name, kind="chat")
        return ServedModel(spec, None, spec.name)

    def identify(self, guard: Authorizer, name: str) -> tuple[ModelSpec, CustomModel | None]:
        """What ``name`` names for the caller, without serving it: its base model and its custom model (None: the base).

        Raises:
            NotFound, Forbidden: As ``resolve``.
        """
        if name.startswith(ENDPOINT_PREFIX):
            endpoint = self._visible(guard, lambda: self._endpoints.get(guard.principal, name), name)
            custom = (self._custom_models.get(guard.principal, endpoint.custom_model_id)
                      if endpoint.custom_model_id else None)
            return self._catalog.get(endpoint.base_model, kind="chat"), custom
        if is_custom_model_ref(name):
            row = self._visible(guard, lambda: self._custom_models.get(guard.principal, name), name)
            return self._catalog.get(row.base_model, kind="chat"), row
        return self._catalog.get(name, kind="chat"), None

    def _visible(self, guard: Authorizer, load, name: str) -> Endpoint | CustomModel:
        """The object ``load`` finds, once the caller may invoke it; else the unknown-model error."""
        try:
            return guard.require(load(), "invoke")
        except NotFound:
            self._catalog.get(name, kind="chat")  # raises the unknown-model error, word for word
            raise

    @staticmethod
    def _not_hosted(row: CustomModel) -> InvalidInput:
        return InvalidInput(
            f"custom model {row.id!r} is not hosted: your tenancy has no active hosting cluster of "
            f"{row.base_model}. Create one (POST /v1/clusters with type hosting, or atelier cluster create <name> "
            f"--type hosting --model {row.base_model} --units 1); the model is then served on demand, or on an "
            f"endpoint of its own (atelier endpoint create <name> --cluster <cluster id> --model {row.id})",
            param="model", code="model_not_hosted",
        )  # fmt: skip

    def listed(self, guard: Authorizer) -> list[tuple[Endpoint | CustomModel, ModelSpec]]:
        """What the caller may call besides the catalog: its visible active endpoints, then the visible
        custom models that an endpoint hosts or that can be served on demand, each with its base model's spec."""
        base = {spec.name: spec for spec in self._catalog if spec.kind == "chat"}
        principal = guard.principal
        found: list[tuple[Endpoint | CustomModel, ModelSpec]] = []
        for row in guard.visible(self._endpoints.list(principal)):
            if row.state == "active" and row.base_model in base:
                found.append((row, base[row.base_model]))
        hosted = self._endpoints.hosted_models(principal)
        hosting = {model for model in base if self._clusters.can_host(principal, model)}
        for row in guard.visible(self._custom_models.list(principal)):
            if (row.id in hosted or row.base_model in hosting) and row.base_model in base:
                found.append((row, base[row.base_model]))
        return found

