"""The HTTP API: FastAPI app, dependencies, error mapping, SSE, OpenAI-compatible routes.

Holds no model math and no database queries of its own: it validates requests, asks the
security, store and engine layers, and shapes their answers (and their errors) as HTTP.
"""
