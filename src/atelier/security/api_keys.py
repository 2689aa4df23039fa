"""API keys: issue, install, rotate and authenticate, storing only hashes of secrets.

An issued key reads ``atl_<key id>_<secret>``, where the secret is 32 random bytes
(``secrets.token_urlsafe``). Only ``sha256(secret)`` is stored: for a high-entropy secret a
fast hash is enough (there is nothing to brute-force), and it keeps authentication cheap.
An administrator may also install a key of their own choosing (``ATELIER_ADMIN_KEY``): any
printable string of at least 16 characters; one that is not in the ``atl_`` format is
stored under the fixed id ``key_admin`` with the hash of the whole string.
This module knows nothing about HTTP: the API layer passes the raw key string in.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from atelier.errors import Conflict, InvalidInput, Unauthenticated
from atelier.principal import Principal
from atelier.store import identity, repos
from atelier.store.tables import ApiKey, utcnow

KEY_PREFIX = "atl_"
ADMIN_KEY_ID = "key_admin"
"""Where an installed key that is not in the ``atl_`` format lives."""
MIN_KEY_LENGTH = 16
MAX_KEY_LENGTH = 512
DEFAULT_EXPIRY_DAYS = 90
MAX_EXPIRY_DAYS = 3650
DEFAULT_GRACE_SECONDS = 24 * 3600
"""After a rotation, the old secret keeps working this long by default."""
MAX_GRACE_SECONDS = 30 * 24 * 3600
LAST_USED_RESOLUTION = timedelta(minutes=1)
"""``last_used_at`` is written at most this often per key (saves a write per request)."""

_KEY_RE = re.compile(r"atl_(key_[0-9a-f]{8,32})_([A-Za-z0-9_-]{16,256})")
_OPAQUE_RE = re.compile(r"[\x21-\x7e]+")  # printable ASCII, no spaces

MISSING = (
    "You didn't provide an API key. Pass it as a Bearer token in the Authorization header "
    "(Authorization: Bearer atl_...)."
)
MALFORMED = "Malformed API key: expected the form atl_<key id>_<secret>."
INCORRECT = "Incorrect API key provided."
REVOKED = "This API key has been revoked."


def hash_secret(secret: str) -> str:
    """The stored form of a secret: ``sha256`` hex digest of its UTF-8 bytes."""
    return hashlib.sha256(secret.encode()).hexdigest()


def split_key(raw: str) -> tuple[str, str] | None:
    """Split a raw key into ``(key_id, secret)``, or None if it is malformed.

    ``atl_<key id>_<secret>`` gives its two parts; any other printable string of 16 to 512
    characters is an installed administrator key: ``(ADMIN_KEY_ID, raw)``. A string that
    starts with ``atl_`` without matching the format is malformed (a truncated copy).
    """
    match = _KEY_RE.fullmatch(raw)
    if match:
        return match[1], match[2]
    if raw.startswith(KEY_PREFIX) or not MIN_KEY_LENGTH <= len(raw) <= MAX_KEY_LENGTH:
        return None
    return (ADMIN_KEY_ID, raw) if _OPAQUE_RE.fullmatch(raw) else None


def issue_key(
    session: Session,
    tenancy_id: str,
    name: str,
    role: str,
    expires_in_days: int | None = DEFAULT_EXPIRY_DAYS,
    *,
    user_id: str | None = None,
) -> tuple[ApiKey, str]:
    """Create a key with a fresh random secret.

    Args:
        session: Open session (the caller's unit of work commits it).
        tenancy_id: Tenancy the key acts in.
        name: Label shown in listings.
        role: ``operator``, ``admin`` or ``user``.
        expires_in_days: Lifetime in days (1 to 3650), or None for a key that never expires.
        user_id: The user the key acts as (its groups are the caller's groups); None for none.

    Returns:
        The stored key and the raw key string. The raw string is shown once and never
        stored: it cannot be recovered later.

    Raises:
        InvalidInput: Bad name, role or lifetime.
        NotFound: No such tenancy, or no such user in it.
    """
    if expires_in_days is not None and not 1 <= expires_in_days <= MAX_EXPIRY_DAYS:
        raise InvalidInput(f"expires_in_days must be between 1 and {MAX_EXPIRY_DAYS}", param="expires_in_days")
    expires_at = None if expires_in_days is None else utcnow() + timedelta(days=expires_in_days)
    secret = secrets.token_urlsafe(32)
    key = repos.create_api_key(
        session, tenancy_id, name=name, role=role, secret_hash=hash_secret(secret), expires_at=expires_at,
        user_id=user_id,
    )
    return key, f"{KEY_PREFIX}{key.id}_{secret}"


def rotate_key(
    session: Session, principal: Principal, key_id: str, grace_seconds: int = DEFAULT_GRACE_SECONDS
) -> tuple[ApiKey, str]:
    """Give a key a fresh secret while its current one keeps working for ``grace_seconds``.

    The new secret goes to slot 1; the current one moves to slot 2 until the grace period
    ends (``authenticate`` accepts either meanwhile); a secret left in slot 2 by an earlier
    rotation stops working now. The key's id, user, role and expiry do not change.

    Args:
        session: Open session (the caller's unit of work commits it).
        principal: The caller; the key must be of its tenancy (who may rotate whose key is
            the caller's decision).
        key_id: The key to rotate.
        grace_seconds: How long the current secret stays valid (0 to 30 days; 0 ends it now).

    Returns:
        The key and its new raw string, shown once.

    Raises:
        InvalidInput: ``grace_seconds`` out of bounds.
        NotFound: No such key in the caller's tenancy.
        Conflict: The key is revoked or expired.
    """
    if not 0 <= grace_seconds <= MAX_GRACE_SECONDS:
        raise InvalidInput(f"grace_seconds must be between 0 and {MAX_GRACE_SECONDS}", param="grace_seconds")
    secret = secrets.token_urlsafe(32)
    key = identity.replace_secret(
        session, principal, key_id, hash_secret(secret), previous_until=utcnow() + timedelta(seconds=grace_seconds)
    )
    return key, f"{KEY_PREFIX}{key.id}_{secret}"


def install_key(session: Session, raw: str, tenancy_id: str, name: str, role: str) -> ApiKey:
    """Install a caller-supplied key (the administrator's ``ATELIER_ADMIN_KEY``); idempotent.

    Installing the same key again changes nothing. Installing a different secret under an
    existing key id (the administrator changed the variable) replaces the stored secret:
    the old one stops working. A revoked key stays revoked. Installed keys never expire.

    Args:
        session: Open session.
        raw: The key: ``atl_<key id>_<secret>``, or any printable ASCII string of 16 to
            512 characters without spaces (stored under ``key_admin``).
        tenancy_id: Tenancy the key acts in.
        name: Label shown in listings.
        role: ``operator``, ``admin`` or ``user``.

    Returns:
        The stored key.

    Raises:
        InvalidInput: The key is too short, has spaces or non-ASCII characters, or starts
            with ``atl_`` without being a complete key.
        Conflict: The key id is taken by a key of another tenancy or role.
        NotFound: No such tenancy.
    """
    parts = split_key(raw)
    if parts is None:
        raise InvalidInput(
            f"an installed key must be {MIN_KEY_LENGTH} to {MAX_KEY_LENGTH} printable ASCII characters "
            "without spaces, and not start with 'atl_' unless it is a complete atl_<key id>_<secret> key",
            param="admin_key",
        )
    key_id, secret = parts
    digest = hash_secret(secret)
    key = repos.find_api_key(session, key_id)
    if key is None:
        return repos.create_api_key(session, tenancy_id, name=name, role=role, secret_hash=digest, key_id=key_id)
    if key.tenancy_id != tenancy_id or key.role != role:
        raise Conflict(f"API key {key_id!r} already exists with another tenancy or role", param="admin_key")
    if not _matches(key, digest):
        key.secret_hash_1, key.secret_hash_2 = digest, None
        session.flush()
    return key


def authenticate(session: Session, raw: str | None, *, now: datetime | None = None) -> Principal:
    """The principal a raw key stands for.

    Args:
        session: Open session; ``last_used_at`` is updated in it (at most once a minute).
        raw: The key as the caller sent it, or None if it sent none.
        now: The current time (tests); default ``utcnow()``.

    Returns:
        The key's principal.

    Raises:
        Unauthenticated: The key is missing, malformed, unknown or wrong (one message for
            both, so key ids cannot be probed), revoked or expired.
    """
    if raw is None or not raw.strip():
        raise Unauthenticated(MISSING)
    parts = split_key(raw)
    if parts is None:
        raise Unauthenticated(MALFORMED)
    key_id, secret = parts
    key = repos.find_api_key(session, key_id)
    digest = hash_secret(secret)
    if key is None:
        hmac.compare_digest(digest, "0" * 64)  # spend the same time as for a wrong secret
        raise Unauthenticated(INCORRECT)
    now = now or utcnow()
    if not _matches(key, digest, now):
        raise Unauthenticated(INCORRECT)
    if key.revoked_at is not None:
        raise Unauthenticated(REVOKED)
    if key.expires_at is not None and key.expires_at <= now:
        raise Unauthenticated(f"This API key expired on {key.expires_at:%Y-%m-%d %H:%M} UTC.")
    if key.last_used_at is None or now - key.last_used_at >= LAST_USED_RESOLUTION:
        key.last_used_at = now
        session.flush()
    groups = repos.group_names_of(session, key.tenancy_id, key.user_id) if key.user_id else frozenset()
    return Principal(tenancy_id=key.tenancy_id, key_id=key.id, role=key.role, user_id=key.user_id, groups=groups)


def _matches(key: ApiKey, digest: str, now: datetime | None = None) -> bool:
    """Whether ``digest`` equals either stored secret hash (constant time, both checked).

    The second secret (the one being rotated out) counts only until ``secret_2_expires_at``.
    """
    first = hmac.compare_digest(digest, key.secret_hash_1)
    second = key.secret_hash_2 is not None and hmac.compare_digest(digest, key.secret_hash_2)
    if second and key.secret_2_expires_at is not None and now is not None and key.secret_2_expires_at <= now:
        second = False
    return first | second
