"""The OpenAI-compatible routes (``/v1/...``) and their schemas: one module per resource."""
