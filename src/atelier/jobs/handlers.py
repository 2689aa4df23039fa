"""The job kinds a worker of this service runs, and their handlers.

``build_handlers`` is the registry: kind → handler, built once per worker process (the
handlers share the worker's sealed object store). The kinds are the service's own:
``fine-tune`` (``jobs/fine_tune.py``), ``kb-ingest`` (``jobs/kb_ingest.py``) and ``evaluate``
(``jobs/evaluate.py``); tests register their own kinds with ``run_worker_process(handlers=...)``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from atelier.cloud.evaluations import KIND as EVALUATE
from atelier.cloud.fine_tuning import KIND as FINE_TUNE
from atelier.cloud.knowledge_bases import INGEST_KIND as KB_INGEST
from atelier.jobs.context import Handler

if TYPE_CHECKING:
    from atelier.settings import Settings
    from atelier.store.db import Database


def build_handlers(settings: Settings, db: Database) -> dict[str, Handler]:
    """The handler of every job kind of the service, for one worker process.

    Args:
        settings: Service settings (data dir, root key, model paths…).
        db: The metadata database.

    Returns:
        Kind → handler.
    """
    from atelier.jobs.evaluate import build_evaluate
    from atelier.jobs.fine_tune import build_fine_tune  # torch, PEFT: imported by workers only
    from atelier.jobs.kb_ingest import build_kb_ingest
    from atelier.security.crypto import KeyManager, RootKey
    from atelier.store.object_stores import open_object_store

    objects = open_object_store(settings, KeyManager(db, RootKey.from_settings(settings)), db)
    return {FINE_TUNE: build_fine_tune(settings, db, objects), KB_INGEST: build_kb_ingest(settings, db, objects),
            EVALUATE: build_evaluate(settings, db, objects)}
