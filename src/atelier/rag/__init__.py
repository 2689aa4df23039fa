"""Retrieval-augmented generation: load, chunk, retrieve, build grounded prompts, cite.

This package knows nothing about HTTP, databases or tenants: it works on bytes, text,
numpy vectors and a ``VectorStore`` it is handed (declared in ``rag/indexing.py``,
implemented in ``atelier.store``). Embedding is a callable it is given, never a model
it loads.
"""
