"""The one interface through which the service reaches models (vLLM-style).

``EngineClient`` is what the API depends on; ``LocalEngine`` implements it in-process
(PyTorch, a scheduler thread per chat model). A vLLM-backed client would implement the
same protocol. This module knows nothing about HTTP, tenants or policies.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import logging
import threading
import warnings
from collections import OrderedDict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from atelier.engine.embedding import Embedder
from atelier.engine.loading import LoadedModel, load_chat_model, load_tokenizer
from atelier.engine.scheduler import Scheduler
from atelier.engine.types import EmbeddingResult, GenerationRequest, InputType, TokenEvent, TruncateMode
from atelier.errors import NotFound, Unavailable

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

    def add_adapter(self, model: str, key: str, directory: Path) -> int:
        """Serve a PEFT adapter (LoRA or IA3) over base ``model``; returns its opaque slot.

        ``key`` identifies the adapter (the caller's opaque name for it); ``directory`` is read
        once, during the call, and may be deleted afterwards.
        """

    def adapter_slot(self, key: str) -> int | None:
        """The slot of an adapter added under ``key`` and still loaded, else None."""

    def remove_adapter(self, slot: int) -> None:
        """Stop serving an adapter (its requests under way end with Unavailable)."""

    def health(self) -> dict[str, Any]:
        """Loaded models, queue depth, active sequences."""

    def stats(self) -> dict[str, Any]:
        """Load for monitoring: ``{"chat_models": {name: {"running", "waiting", ...}}}``, plus
        ``"adapters"`` (adapters loaded) once the engine serves adapters."""

    def close(self) -> None:
        """Stop background threads and free models."""


MAX_MERGED_ADAPTERS = 2
"""Adapters a ``LocalEngine`` keeps merged at once (each is a full copy of its base model)."""


class LocalEngine:
    """In-process engine: lazily loads each model once, one scheduler thread per chat model.

    Adapters (``add_adapter``) are served the simplest correct way: each is merged into its
    own copy of the base model (``W₀ + (α/r)·BA`` for LoRA, ``l ⊙ W₀`` for IA3) with a
    scheduler of its own, so requests of one adapter batch together but requests of
    different adapters never share a forward pass, and each adapter costs a base model's
    memory. At most ``MAX_MERGED_ADAPTERS`` stay loaded (least recently added first out;
    requests under way on an evicted adapter end with Unavailable). Many-adapter batching
    on one shared base is the endpoints' work.
    """

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
        self._adapters: OrderedDict[str, tuple[int, Any]] = OrderedDict()  # key → (slot, scheduler)
        self._slots: dict[int, Any] = {}  # slot → scheduler
        self._next_slot = itertools.count(1)
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

    # ---------------------------------------------------------------- adapters

    def add_adapter(self, model: str, key: str, directory: Path) -> int:
        """Merge the PEFT adapter in ``directory`` into a copy of ``model`` and serve it (see the class).

        Raises:
            NotFound: ``model`` is not a chat model of the catalog.
            Unavailable: The base model or the adapter cannot be loaded.
        """
        from peft import PeftModel

        base = self._scheduler(model).loaded
        with self._lock:
            if key in self._adapters:
                return self._adapters[key][0]
        try:
            with warnings.catch_warnings():  # PEFT calls a transformers API deprecated in v5
                warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
                peft_model = PeftModel.from_pretrained(copy.deepcopy(base.model), str(directory))
            merged = peft_model.merge_and_unload().eval()  # every adapted layer: W = W₀ + ΔW, or l ⊙ W₀
            merged.requires_grad_(False)
        except Exception as exc:  # noqa: BLE001
            log.exception("loading adapter %s over %s failed", key, model)
            raise Unavailable(f"the adapter could not be loaded over {model!r}: {exc}") from exc
        loaded = LoadedModel(f"{model}+{key}", merged, base.tokenizer, base.eos_token_ids)
        spec = self._catalog.get(model, kind="chat")
        sched = Scheduler(
            loaded, spec.context_length, max_batch=self._settings.max_batch, max_waiting=self._settings.max_waiting
        )
        evicted = []
        with self._lock:
            if key in self._adapters:  # added meanwhile by another request
                evicted.append(sched)
                slot = self._adapters[key][0]
            else:
                slot = next(self._next_slot)
                self._adapters[key] = (slot, sched)
                self._slots[slot] = sched
                while len(self._adapters) > MAX_MERGED_ADAPTERS:
                    _, (old_slot, old) = self._adapters.popitem(last=False)
                    self._slots.pop(old_slot, None)
                    evicted.append(old)
        for old in evicted:
            old.close()
        return slot

    def adapter_slot(self, key: str) -> int | None:
        with self._lock:
            found = self._adapters.get(key)
            return found[0] if found is not None else None

    def remove_adapter(self, slot: int) -> None:
        with self._lock:
            sched = self._slots.pop(slot, None)
            for key, (s, _) in list(self._adapters.items()):
                if s == slot:
                    del self._adapters[key]
        if sched is not None:
            sched.close()

    # ---------------------------------------------------------------- serving

    async def generate(self, model: str, request: GenerationRequest) -> AsyncIterator[TokenEvent]:
        if request.adapter_slot is not None:
            sched = self._slots.get(request.adapter_slot)
            if sched is None:
                raise NotFound("the adapter is not loaded", param="model", code="model_not_found")
        else:
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
        return {
            "chat_models": {name: s.stats() for name, s in list(self._schedulers.items())},
            "adapters": len(self._slots),
        }

    def close(self) -> None:
        for sched in list(self._schedulers.values()) + list(self._slots.values()):
            sched.close()
        self._schedulers.clear()
        self._adapters.clear()
        self._slots.clear()
        self._embedders.clear()
