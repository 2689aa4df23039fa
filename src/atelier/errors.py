"""Domain errors, raised anywhere and mapped to HTTP in exactly one place (``api/errors.py``).

This module knows nothing about HTTP: each error only says what went wrong and, for bad
input, which parameter (and, for files, which line).
"""

from __future__ import annotations


class AtelierError(Exception):
    """Base of every domain error."""

    code: str = "error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code


class InvalidInput(AtelierError):
    """The caller sent something out of bounds (400). ``line`` is set for file contents."""

    code = "invalid_value"

    def __init__(self, message: str, *, param: str | None = None, line: int | None = None, code: str | None = None):
        super().__init__(message, param=param, code=code)
        self.line = line


class TooLarge(InvalidInput):
    """A request body or upload is over its size limit (413)."""

    code = "payload_too_large"


class Unauthenticated(AtelierError):
    """No key, or a key that is wrong, expired or revoked (401)."""

    code = "invalid_api_key"


class Forbidden(AtelierError):
    """The caller can see the object but its policy does not allow the verb (403)."""

    code = "forbidden"


class NotFound(AtelierError):
    """Missing, or belongs to another tenancy: the two are indistinguishable (404)."""

    code = "not_found"


class Conflict(AtelierError):
    """The object's state does not allow the operation (409)."""

    code = "conflict"


class Undecryptable(Conflict):
    """A sealed object cannot be opened (409): its bytes or wrapped key were altered or
    moved to another tenancy or object, its key version is retired (rewrap it), or its
    tenancy's key ring was shredded. The message says which when that is knowable."""

    code = "undecryptable"


class QuotaExceeded(AtelierError):
    """A limit or a full queue (429). ``retry_after`` is in seconds."""

    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after: float = 1.0, param: str | None = None):
        super().__init__(message, param=param)
        self.retry_after = retry_after


class Unavailable(AtelierError):
    """A dependency (model, store) cannot serve now (503)."""

    code = "unavailable"

    def __init__(self, message: str, *, retry_after: float = 5.0):
        super().__init__(message)
        self.retry_after = retry_after
