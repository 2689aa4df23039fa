"""Security: who is calling (principal, API keys), and later what they may do.

Knows nothing about HTTP: the API layer extracts the key from a header and calls in here.
"""

from atelier.principal import Principal

__all__ = ["Principal"]
