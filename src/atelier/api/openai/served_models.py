"""The ``model`` of a chat or text completion: a catalog base model, or a custom model of the caller's tenancy.

A custom model id (``cm_…``) is resolved after the policy check (``invoke`` on
``custom-models``): another tenancy's id, or one the caller may not see, answers exactly
what an unknown model answers (404 ``model_not_found``). The engine then gets an opaque
adapter slot, never a path or a name from the request. The first request of a custom
model opens its sealed adapter into a private temporary directory, hands it to the engine
(``EngineClient.add_adapter``, which reads it once) and deletes the directory: the
plaintext adapter stays on disk only for that moment. Later requests reuse the slot while
the engine keeps the adapter loaded (see ``LocalEngine`` for what that costs).
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from atelier.catalog import Catalog, ModelSpec
from atelier.cloud.custom_models import CustomModelService
from atelier.engine.client import EngineClient
from atelier.errors import NotFound, Unavailable
from atelier.store import identity
from atelier.tuning.export import unpack_adapter

CUSTOM_MODEL_PREFIX = "cm_"
RESOURCE_TYPE = "custom-models"


@dataclass(frozen=True)
class ServedModel:
    """What to generate with: the base model's spec, the adapter slot (None: the base), the name to show."""

    spec: ModelSpec
    adapter_slot: int | None
    name: str


def custom_models(request: Request) -> CustomModelService:
    """The custom-model service over the app's database and sealed object store."""
    return CustomModelService(request.app.state.db, request.app.state.objects)


async def resolve(request: Request, engine: EngineClient, catalog: Catalog, name: str) -> ServedModel:
    """The served model named ``name`` for this request's caller.

    Raises:
        NotFound: Neither a catalog chat model nor a custom model the caller may invoke
            (the same error either way, ``model_not_found``).
        Forbidden: A custom model the caller may see but not invoke.
        Unavailable: The engine cannot serve adapters, or the adapter cannot be loaded.
    """
    if not name.startswith(CUSTOM_MODEL_PREFIX):
        spec = catalog.get(name, kind="chat")
        return ServedModel(spec, None, spec.name)
    access = request.state.access
    service = custom_models(request)
    try:
        row = await run_in_threadpool(service.get, access.principal, name)
        path: tuple[str, ...] = ()
        if row.compartment_id:
            with request.app.state.db.session() as session:
                path = identity.compartment_path(session, access.principal, row.compartment_id)
        access.require("invoke", RESOURCE_TYPE, target_id=row.id, target_name=row.name, compartment_path=path)
    except NotFound:
        catalog.get(name, kind="chat")  # raises the unknown-model error, word for word
        raise
    spec = catalog.get(row.base_model, kind="chat")
    find = getattr(engine, "adapter_slot", None)
    if find is None:
        raise Unavailable("this engine does not serve custom models")
    slot = find(row.id)
    if slot is None:
        slot = await run_in_threadpool(_load, request, engine, service, access.principal, row.id, spec.name)
    return ServedModel(spec, slot, row.id)


def _load(request: Request, engine: EngineClient, service: CustomModelService, principal, model_id: str,
          base: str) -> int:
    """Open the sealed adapter into a private temporary directory, hand it to the engine, delete it."""
    packed = service.adapter(principal, model_id)
    scratch = request.app.state.settings.data_path / "tmp"
    scratch.mkdir(mode=0o700, parents=True, exist_ok=True)
    directory = Path(tempfile.mkdtemp(prefix="adapter-", dir=scratch))  # mode 0700
    try:
        unpack_adapter(packed, directory, overwrite=True)
        return engine.add_adapter(base, model_id, directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
