"""The one interface through which the service reaches models (vLLM-style).

``EngineClient`` is what the API depends on; ``LocalEngine`` implements it in-process
(PyTorch, a scheduler thread per chat model). A vLLM-backed client would implement the
same protocol. This module knows nothing about HTTP, tenants or policies.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator
from typing import Any, Protocol, runtime_checkable

from atelier.engine.embedding import Embedder
from atelier.engine.loading import load_chat_model, load_tokenizer
from atelier.engine.scheduler import Scheduler
from atelier.engine.types import EmbeddingResult, GenerationRequest, InputType, TokenEvent, TruncateMode
from atelier.errors import Unavailable

log = logging.getLogger(__name__)


@runtime_checkable
class EngineClient(Protocol):
    """What the service may ask of an inference engine."""

    def tokenizer(self, model: str) -> Any:
        """The Hugging Face tokenizer of ``model`` (chat or embedding), loaded lazily."""

    def generate(self, model: str, request: GenerationRequest) -> AsyncIterator[TokenEvent]:
        """Stream the generation of one request; the last event carries finish_reason and usage.

        Raises (on the first ``__anext__``): QuotaExceeded when the queue is full, NotFound
        for an unknown model, Unavailable when the model cannot be loaded. Closing the
        iterator early aborts the request and frees its batch slot at once.
        """

    async def embed(
        self, model: str, texts: list[str], *, truncate: TruncateMode = "END", input_type: InputType | None = None
    ) -> EmbeddingResult:
        """L2-normalised embeddings; InvalidInput(param="input[i]") for an over-long input with NONE."""

    def health(self) -> dict[str, Any]:
        """Loaded models, queue depth, active sequences."""

    def stats(self) -> dict[str, Any]:
        """Load for monitoring: ``{"chat_models": {name: {"running", "waiting", ...}}}``, plus
        ``"adapters"`` (adapters loaded) once the engine serves adapters."""

    def close(self) -> None:
        """Stop background threads and free models."""


class LocalEngine:
    """In-process engine: lazily loads each model once, one scheduler thread per chat model."""

    def __init__(self, catalog, settings, preloaded: dict[str, Any] | None = None):
        """
        Args:
            catalog: the ``Catalog`` of base models.
            settings: ``Settings`` (cache dir, device, threads, batch and queue sizes).
            preloaded: ``LoadedModel``s by catalog name (tests use tiny random ones).
        """
        import torch

        self._catalog = catalog
        self._settings = settings
        self._preloaded = dict(preloaded or {})
        self._schedulers: dict[str, Any] = {}
        self._embedders: dict[str, Any] = {}
        self._tokenizers: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._embed_lock = threading.Lock()
        torch.set_num_threads(settings.threads)

    # ---------------------------------------------------------------- loading

    def _scheduler(self, model: str):
        spec = self._catalog.get(model, kind="chat")
        with self._lock:
            sched = self._schedulers.get(model)
            if sched is None:
                loaded = self._preloaded.get(model)
                if loaded is None:
                    try:
                        loaded = load_chat_model(spec, self._settings.cache_path, self._settings.device)
                    except Exception as exc:  # noqa: BLE001
                        log.exception("loading %s failed", model)
                        raise Unavailable(f"model {model!r} could not be loaded: {exc}") from exc
                sched = Scheduler(
                    loaded, spec.context_length, max_batch=self._settings.max_batch, max_waiting=self._settings.max_waiting
                )
                self._schedulers[model] = sched
                self._tokenizers[model] = loaded.tokenizer
            return sched

    def _embedder(self, model: str):
        spec = self._catalog.get(model, kind="embedding")
        with self._lock:
            emb = self._embedders.get(model)
            if emb is None:
                emb = self._preloaded.get(model)
                if emb is None:
                    try:
                        emb = Embedder.load(spec, self._settings.device)
                    except Exception as exc:  # noqa: BLE001
                        log.exception("loading %s failed", model)
                        raise Unavailable(f"model {model!r} could not be loaded: {exc}") from exc
                self._embedders[model] = emb
            return emb

    def tokenizer(self, model: str) -> Any:
        spec = self._catalog.get(model)
        if spec.kind == "embedding":
            return self._embedder(model).tokenizer
        tok = self._tokenizers.get(model)
        if tok is None:
            if model in self._preloaded:
                tok = self._preloaded[model].tokenizer
            else:
                try:
                    tok = load_tokenizer(spec, self._settings.cache_path)
                except Exception as exc:  # noqa: BLE001
                    raise Unavailable(f"tokenizer of {model!r} could not be loaded: {exc}") from exc
            self._tokenizers.setdefault(model, tok)
        return tok

    # ---------------------------------------------------------------- serving

    async def generate(self, model: str, request: GenerationRequest) -> AsyncIterator[TokenEvent]:
        sched = self._schedulers.get(model) or await asyncio.to_thread(self._scheduler, model)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        def sink(item) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the caller's event loop is gone: nobody is listening
                pass

        sched.submit(request, sink)
        finished = False
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                if item.finish_reason is not None:
                    finished = True
                yield item
                if finished:
                    return
        finally:
            if not finished:
                sched.abort(request.request_id)

    async def embed(
        self, model: str, texts: list[str], *, truncate: TruncateMode = "END", input_type: InputType | None = None
    ) -> EmbeddingResult:
        emb = self._embedders.get(model) or await asyncio.to_thread(self._embedder, model)

        def run() -> EmbeddingResult:
            with self._embed_lock:
                return emb.embed(texts, truncate=truncate, input_type=input_type)

        return await asyncio.to_thread(run)

    def health(self) -> dict[str, Any]:
        return {
            "chat_models": {name: s.stats() for name, s in list(self._schedulers.items())},
            "embedding_models": sorted(self._embedders),
        }

    def stats(self) -> dict[str, Any]:
        return {"chat_models": {name: s.stats() for name, s in list(self._schedulers.items())}}

    def close(self) -> None:
        for sched in list(self._schedulers.values()):
            sched.close()
        self._schedulers.clear()
        self._embedders.clear()
