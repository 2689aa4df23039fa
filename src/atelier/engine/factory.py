"""The engine the ``engine`` setting names: in-process (``LocalEngine``, the default) or vLLM servers."""

from __future__ import annotations

from atelier.engine.client import EngineClient, LocalEngine


def open_engine(catalog, settings) -> EngineClient:
    """``LocalEngine`` over the catalog, or ``VllmEngine`` (``engine = "vllm"``, imported only then)."""
    if settings.engine == "vllm":
        from atelier.engine.vllm_client import VllmEngine

        return VllmEngine(catalog, settings)
    return LocalEngine(catalog, settings)
