"""The custom models' adapters loaded in the engine: loaded on demand, freed with their last user.

Endpoints keep a custom model's adapter loaded (``cloud.endpoints``); deleting the last
endpoint, or the custom model, frees it. The engine is reached only through its client
interface, with an opaque slot, never a path or a name from a request. Knows nothing about
HTTP or policies.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
from pathlib import Path

from atelier.engine.client import EngineClient
from atelier.errors import Unavailable
from atelier.principal import Principal
from atelier.store.objects import ObjectStore
from atelier.store.tables import CustomModel
from atelier.tuning.export import unpack_weights


class AdapterHost:
    """The custom models' adapters loaded in the engine, one slot per custom model.

    An adapter is opened from its sealed object into a private temporary directory only for
    the ``add_adapter`` call (the engine reads it once), which is deleted at once: the
    plaintext is never kept on disk nor copied into the base weights. A slot the engine
    evicted under its memory budget (``adapter_slot`` answers None) is loaded again on the
    next request. Loads are serialized (one lock); traffic on loaded adapters never waits
    for them.

    Args:
        engine: The inference engine.
        objects: The sealed object store holding the packed adapters.
        scratch: Parent of the private temporary directories (created 0700).
    """

    def __init__(self, engine: EngineClient, objects: ObjectStore, scratch: Path):
        self._engine = engine
        self._objects = objects
        self._scratch = scratch
        self._lock = threading.Lock()

    def _find(self, key: str) -> int | None:
        find = getattr(self._engine, "adapter_slot", None)
        if find is None:
            raise Unavailable("this engine does not serve custom models")
        return find(key)

    def slot(self, principal: Principal, row: CustomModel) -> int:
        """The engine slot of the custom model's adapter, loading it if it is not loaded.

        Raises:
            Unavailable: The engine cannot serve adapters, or this one cannot be loaded.
            Undecryptable: The sealed adapter cannot be opened.
        """
        slot = self._find(row.id)
        if slot is not None:
            return slot
        with self._lock:
            slot = self._find(row.id)
            if slot is None:
                slot = self._load(principal, row)
        return slot

    def _load(self, principal: Principal, row: CustomModel) -> int:
        packed = self._objects.get(principal, row.adapter_object_id)
        self._scratch.mkdir(mode=0o700, parents=True, exist_ok=True)
        directory = Path(tempfile.mkdtemp(prefix="adapter-", dir=self._scratch))  # mode 0700
        try:
            unpack_weights(packed, directory, overwrite=True)
            return self._engine.add_adapter(row.base_model, row.id, directory)
        finally:
            shutil.rmtree(directory, ignore_errors=True)

    def release(self, custom_model_id: str) -> bool:
        """Free the custom model's adapter if the engine holds it; whether it did."""
        if getattr(self._engine, "adapter_slot", None) is None:  # an engine without adapters holds none
            return False
        with self._lock:
            slot = self._find(custom_model_id)
            if slot is None:
                return False
            self._engine.remove_adapter(slot)
            return True
