"""Custom models: fine-tuned adapters over a base model, each kept sealed in its tenancy.

A fine-tuning job's worker creates the row (``atelier.jobs.fine_tune``); this service lists,
reads, deletes them and opens their adapter for serving or export. Every method takes the
caller's ``Principal`` first; another tenancy's custom model is ``NotFound`` exactly like a
missing one. Knows nothing about HTTP, policies or how an adapter is applied to a model.
"""

from __future__ import annotations

from contextlib import suppress

from sqlalchemy import select

from atelier.errors import NotFound
from atelier.principal import Principal
from atelier.store.db import Database
from atelier.store.objects import ObjectStore
from atelier.store.tables import CustomModel


class CustomModelService:
    """The custom models of every tenancy, each method scoped to the caller's.

    Args:
        db: The metadata database (table ``custom_models``).
        objects: The sealed object store holding the packed adapters.
    """

    def __init__(self, db: Database, objects: ObjectStore):
        self._db = db
        self._objects = objects

    def list(self, principal: Principal) -> list[CustomModel]:
        """The tenancy's custom models, oldest first."""
        query = select(CustomModel).where(CustomModel.tenancy_id == principal.tenancy_id)
        with self._db.session() as session:
            return list(session.scalars(query.order_by(CustomModel.created_at, CustomModel.id)))

    def get(self, principal: Principal, model_id: str) -> CustomModel:
        """The custom model with this id.

        Raises:
            NotFound: No such custom model in the caller's tenancy.
        """
        with self._db.session() as session:
            row = session.get(CustomModel, model_id) if isinstance(model_id, str) and model_id else None
            if row is None or row.tenancy_id != principal.tenancy_id:
                raise NotFound(f"custom model {model_id!r} not found", param="model", code="model_not_found")
            return row

    def adapter(self, principal: Principal, model_id: str) -> bytes:
        """The packed PEFT adapter (``atelier.tuning.export.pack_adapter``), opened from its sealed object.

        Raises:
            NotFound: No such custom model in the caller's tenancy.
            Undecryptable: The object cannot be opened.
        """
        row = self.get(principal, model_id)
        return self._objects.get(principal, row.adapter_object_id)

    def delete(self, principal: Principal, model_id: str) -> CustomModel:
        """Delete the row, then its sealed adapter.

        Returns:
            The deleted row.

        Raises:
            NotFound: No such custom model in the caller's tenancy.
        """
        with self._db.session() as session:
            row = session.get(CustomModel, model_id) if isinstance(model_id, str) and model_id else None
            if row is None or row.tenancy_id != principal.tenancy_id:
                raise NotFound(f"custom model {model_id!r} not found")
            session.delete(row)
        with suppress(NotFound):
            self._objects.delete(principal, row.adapter_object_id)
        return row
