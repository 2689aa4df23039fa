"""A Python client of Atelier's HTTP API, used by the CLI and the console.

It speaks the OpenAI-compatible routes under ``/v1`` over ``httpx`` and knows nothing
about models, the store or the server's internals: everything it learns comes from HTTP
responses. Server errors (``{"error": {"message", "type", "param", "code"}}``) become
``ApiError``; a server that cannot be reached becomes ``ServerUnreachable``.

``base`` is the HTTP core; one module per noun holds its routes (``inference``, ``files``,
``fine_tuning``, ``knowledge_bases``, ``clusters``, ``identity``, ``admin``); ``client``
assembles them into ``AtelierClient``. Import from here.
"""

from atelier.client.base import ApiError, ServerUnreachable, error_from_response, iter_sse_data
from atelier.client.client import DEFAULT_TIMEOUT, AtelierClient, resolve_api_key
from atelier.client.inference import Embeddings, Generation, TextStream, Tokens, Usage

__all__ = [
    "DEFAULT_TIMEOUT",
    "ApiError",
    "AtelierClient",
    "Embeddings",
    "Generation",
    "ServerUnreachable",
    "TextStream",
    "Tokens",
    "Usage",
    "error_from_response",
    "iter_sse_data",
    "resolve_api_key",
]
