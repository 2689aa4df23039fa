"""Custom models: fine-tuned adapters over a base model, each kept sealed in its tenancy.

A fine-tuning job's worker records one (:meth:`CustomModelService.record`, the same service
the API reads them through, so ids and names follow one rule: ``store.custom_models``); the
API lists, reads and deletes them and opens their adapter for serving or export. A custom
model is found by its id (``cm_…``) or by the name the service shows (``ft:…``). Every
method takes the caller's ``Principal`` (or, for a worker, the job's tenancy) first; another
tenancy's custom model is ``NotFound`` exactly like a missing one. Knows nothing about HTTP,
policies or how an adapter is applied to a model.
"""

from __future__ import annotations

from contextlib import suppress
from typing import Any, Protocol

from atelier.errors import Conflict, NotFound
from atelier.principal import Principal
from atelier.store import clusters as clusters_repo
from atelier.store import custom_models as repo
from atelier.store.custom_models import custom_model_name, ids_for_job, is_reference
from atelier.store.db import Database
from atelier.store.objects import ObjectStore
from atelier.store.tables import CustomModel, Job, utcnow

__all__ = ["CustomModelService", "custom_model_name", "is_custom_model_ref"]

is_custom_model_ref = is_reference
"""Whether a ``model`` names a custom model (``cm_…`` or ``ft:…``) rather than a catalog model."""


class AdapterReleaser(Protocol):
    """Frees a custom model's adapter from the engine (``AdapterHost``)."""

    def release(self, custom_model_id: str) -> bool:
        """Free it if loaded; whether it was."""


class CustomModelService:
    """The custom models of every tenancy, each method scoped to the caller's.

    Args:
        db: The metadata database (table ``custom_models``).
        objects: The sealed object store holding the packed adapters.
        adapters: Frees a deleted model's adapter from the engine (None where no engine runs:
            a worker).
    """

    def __init__(self, db: Database, objects: ObjectStore, adapters: AdapterReleaser | None = None):
        self._db = db
        self._objects = objects
        self._adapters = adapters

    def list(self, principal: Principal) -> list[CustomModel]:
        """The tenancy's custom models, oldest first."""
        with self._db.session() as session:
            return repo.list_all(session, principal)

    def get(self, principal: Principal | str, ref: str) -> CustomModel:
        """The custom model with this id or name.

        Raises:
            NotFound: No such custom model in the caller's tenancy.
        """
        with self._db.session() as session:
            return repo.get(session, principal, ref)

    def adapter(self, principal: Principal, ref: str) -> bytes:
        """The packed PEFT adapter (``atelier.tuning.export.pack_adapter``), opened from its sealed object.

        Raises:
            NotFound: No such custom model in the caller's tenancy.
            Undecryptable: The object cannot be opened.
        """
        row = self.get(principal, ref)
        return self._objects.get(principal, row.adapter_object_id)

    def delete(self, principal: Principal, ref: str) -> CustomModel:
        """Delete the row, then its sealed adapter, and free the adapter from the engine.

        Returns:
            The deleted row.

        Raises:
            NotFound: No such custom model in the caller's tenancy.
            Conflict: An endpoint still hosts it.
        """
        with self._db.session() as session:
            row = repo.get(session, principal, ref)
            hosted = clusters_repo.endpoints_of(session, principal, row.id,
                                                states=clusters_repo.ENDPOINTS_HOLDING_CAPACITY)
            if hosted:
                raise Conflict(f"custom model {row.id!r} is hosted by {len(hosted)} endpoint(s): delete them first")
            session.delete(row)
        with suppress(NotFound):
            self._objects.delete(principal, row.adapter_object_id)
        if self._adapters is not None:
            self._adapters.release(row.id)
        return row

    def of_job(self, tenancy_id: str, job_id: str) -> CustomModel | None:
        """The custom model a job recorded, if it did."""
        with self._db.session() as session:
            return repo.of_job(session, tenancy_id, job_id)

    def record(self, job: Job, *, base_model: str, method: str, adapter: bytes, trainable_params: int,
               total_params: int, metrics: dict[str, Any], curve: list[dict[str, Any]]) -> CustomModel:
        """Seal a finished job's adapter and record its custom model, in the job's tenancy and compartment.

        Idempotent: the ids derive from the job's, so a worker that died between the two
        steps and runs the job again makes no duplicate.

        Returns:
            The custom model (``cm_<job suffix>``, named ``ft:<base>:[<suffix>:]<job id>``).
        """
        model_id, object_id = ids_for_job(job.id)
        if not self._objects.exists(job.tenancy_id, object_id):
            self._objects.put(job.tenancy_id, "adapter", adapter, object_id=object_id)
        with self._db.session() as session:
            existing = repo.of_job(session, job.tenancy_id, job.id)
            if existing is not None:
                return existing
            return repo.add(session, job.tenancy_id, CustomModel(
                id=model_id, tenancy_id=job.tenancy_id, compartment_id=job.compartment_id,
                name=custom_model_name(base_model, (job.payload or {}).get("suffix"), job.id), base_model=base_model,
                method=method, job_id=job.id, adapter_object_id=object_id, trainable_params=trainable_params,
                total_params=total_params, metrics=metrics, curve=curve, state="active", created_at=utcnow(),
            ))  # fmt: skip
