"""Which sealed object store the settings name: the local directory, or an S3-compatible bucket.

A module of its own so that ``store/objects.py`` (the protocol, the shared base and the
local backend) does not import ``store/s3_objects.py``, which builds on it; boto3 is
imported only when a bucket is configured (the optional ``[s3]`` extra).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from atelier.store.db import Database
from atelier.store.objects import LocalObjectStore, ObjectStore, Sealer

if TYPE_CHECKING:
    from atelier.settings import Settings


def open_object_store(settings: Settings, key_manager: Sealer, db: Database) -> ObjectStore:
    """The object store named by ``settings.object_store``.

    Args:
        settings: ``object_store`` (``s3://bucket/prefix``, or None for the local directory
            ``<data_dir>/objects``) and ``s3_endpoint_url`` (default: boto3's resolution,
            ``AWS_ENDPOINT_URL`` or AWS itself).
        key_manager: Seals and opens payloads; must use the same database as ``db``.
        db: The metadata database (table ``objects``).

    Returns:
        An ``S3ObjectStore`` or a ``LocalObjectStore``. Neither talks to its backend yet.
    """
    if settings.object_store:
        from atelier.store.s3_objects import S3ObjectStore  # boto3: the optional [s3] extra

        return S3ObjectStore(settings.object_store, key_manager, db, endpoint_url=settings.s3_endpoint_url)
    return LocalObjectStore(settings.data_path / "objects", key_manager, db)
