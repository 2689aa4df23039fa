"""Sealed objects in an S3-compatible bucket (``object_store = "s3://bucket/prefix"``).

``S3ObjectStore`` is ``SealedObjectStore`` (``store/objects.py``: the rows, sealing,
scoping, ordering and key rotation it shares with the local directory) with its payloads
in a bucket, through boto3's public API only. The bucket holds ciphertext only, under
``<prefix>/<tenancy id>/<object id>`` (opaque ids, never a name chosen by a user); the
wrapped data keys stay in the ``objects`` table, so a copy of the bucket alone opens nothing.

Payloads over ``PART_BYTES`` go up as multipart uploads (boto3's managed transfer, which
aborts the upload if a part fails) and come back as ranged GETs of that size; smaller ones
in one request, read in chunks. Either way the object is assembled in memory, because the
``ObjectStore`` protocol returns bytes.

Failures of the bucket (endpoint unreachable, timeouts, 5xx, refused credentials, missing
bucket) are ``Unavailable`` (503): no botocore exception leaves this module. A payload that
cannot be removed after its row was deleted is logged, not raised: without the row its
data key is gone and the ciphertext left in the bucket can never be opened.

Endpoint and credentials: ``endpoint_url`` if given (then path-style addressing, which
S3-compatible servers expect), else boto3's own resolution (``AWS_ENDPOINT_URL``, the AWS
config files, AWS itself); credentials, region and retries from boto3's default chain
(``AWS_ACCESS_KEY_ID``…, ``AWS_MAX_ATTEMPTS``, instance roles). Nothing talks to the bucket
before the first object is stored or read.

Knows nothing about HTTP, nor about keys (the ``Sealer`` does the cryptography).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any
from urllib.parse import urlsplit

import boto3
from boto3.exceptions import Boto3Error
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from s3transfer.exceptions import RetriesExceededError, S3DownloadFailedError, S3UploadFailedError

from atelier.errors import Unavailable
from atelier.store.db import Database
from atelier.store.objects import SealedObjectStore, Sealer

log = logging.getLogger(__name__)

PART_BYTES = 8 * 2**20
"""Payloads over this go up in multipart uploads of parts this size, and come back in ranged GETs."""
CONCURRENCY = 4
"""Parts in flight at once for one object."""
CONNECT_TIMEOUT_SECONDS = 10.0
READ_TIMEOUT_SECONDS = 60.0

_MISSING = frozenset({"404", "NoSuchKey", "NotFound"})
"""Error codes of a key that is not in the bucket (HeadObject says ``404``, GetObject ``NoSuchKey``)."""
_FAILURES = (BotoCoreError, Boto3Error, RetriesExceededError, S3DownloadFailedError, S3UploadFailedError)
"""What boto3's calls raise besides ``ClientError``: connection errors, timeouts, transfer retries exhausted."""


def parse_location(location: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` → ``("bucket", "some/prefix")`` (prefix without outer slashes).

    Raises:
        ValueError: Not an ``s3://`` URL with a bucket.
    """
    parts = urlsplit(location)
    if parts.scheme != "s3" or not parts.netloc:
        raise ValueError(f"an object store location is s3://bucket/prefix, not {location!r}")
    return parts.netloc, parts.path.strip("/")


class S3ObjectStore(SealedObjectStore):
    """``ObjectStore`` over an S3-compatible bucket.

    Args:
        location: ``s3://bucket`` or ``s3://bucket/prefix``.
        key_manager: Seals and opens payloads; must use the same database as ``db``.
        db: The metadata database (table ``objects``).
        endpoint_url: The S3-compatible service; default boto3's resolution.
        client: A boto3 S3 client to use instead of building one (then ``endpoint_url`` is
            ignored).
        part_bytes: Multipart threshold and part size (at least 5 MiB on AWS).
    """

    def __init__(self, location: str, key_manager: Sealer, db: Database, *, endpoint_url: str | None = None,
                 client: Any = None, part_bytes: int = PART_BYTES):
        super().__init__(key_manager, db)
        self.bucket, self.prefix = parse_location(location)
        self._client = client or _client(endpoint_url)
        self._transfer = TransferConfig(
            multipart_threshold=part_bytes, multipart_chunksize=part_bytes, max_concurrency=CONCURRENCY,
            preferred_transfer_client="classic",
        )

    def key(self, tenancy_id: str, object_id: str) -> str:
        """The bucket key of an object's payload: ``<prefix>/<tenancy id>/<object id>``."""
        return "/".join(part for part in (self.prefix, tenancy_id, object_id) if part)

    # --- payload I/O -------------------------------------------------------------------

    def _write_payload(self, tenancy_id: str, object_id: str, ciphertext: bytes) -> None:
        with self._errors("store"):
            self._client.upload_fileobj(
                io.BytesIO(ciphertext), self.bucket, self.key(tenancy_id, object_id), Config=self._transfer
            )

    def _discard_payload(self, tenancy_id: str, object_id: str) -> None:
        with suppress(Unavailable, _Missing):  # logged by _errors; without a row it never opens
            self._remove(tenancy_id, object_id)

    def _read_payload(self, tenancy_id: str, object_id: str) -> bytes | None:
        buffer = io.BytesIO()
        try:
            with self._errors("read", missing_ok=True):
                self._client.download_fileobj(
                    self.bucket, self.key(tenancy_id, object_id), buffer, Config=self._transfer
                )
        except _Missing:
            return None
        return buffer.getvalue()

    def _delete_payload(self, tenancy_id: str, object_id: str) -> None:
        try:
            self._remove(tenancy_id, object_id)
        except (Unavailable, _Missing):
            log.warning("object storage: object %s is deleted (its row and data key) but its ciphertext may "
                        "remain at %s, unreadable", object_id, self.key(tenancy_id, object_id))

    def _remove(self, tenancy_id: str, object_id: str) -> None:
        with self._errors("delete", missing_ok=True):
            self._client.delete_object(Bucket=self.bucket, Key=self.key(tenancy_id, object_id))

    @contextmanager
    def _errors(self, action: str, *, missing_ok: bool = False) -> Iterator[None]:
        """The bucket's failures as ``Unavailable`` (details in the log, not in the message a
        client sees); with ``missing_ok``, a missing key as ``_Missing``."""
        try:
            yield
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", "?"))
            if missing_ok and code in _MISSING:
                raise _Missing from None
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "?")
            log.warning("object storage: could not %s a payload in bucket %s: %s", action, self.bucket, exc)
            raise Unavailable(f"object storage could not {action} a payload: {code} (HTTP {status})") from exc
        except _FAILURES as exc:
            log.warning("object storage: could not %s a payload in bucket %s: %s", action, self.bucket, exc)
            raise Unavailable(f"object storage could not {action} a payload: {type(exc).__name__}") from exc

    def __repr__(self) -> str:
        return f"S3ObjectStore('s3://{self.bucket}/{self.prefix}')"


class _Missing(Exception):
    """The payload's key is not in the bucket."""


def _client(endpoint_url: str | None) -> Any:
    """An S3 client from boto3's default chain; path-style addressing on an explicit endpoint."""
    config = Config(
        connect_timeout=CONNECT_TIMEOUT_SECONDS,
        read_timeout=READ_TIMEOUT_SECONDS,
        s3={"addressing_style": "path"} if endpoint_url else None,
    )
    return boto3.session.Session().client("s3", endpoint_url=endpoint_url, config=config)
