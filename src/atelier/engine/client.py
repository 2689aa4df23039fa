"""The one interface through which the service reaches models (vLLM-style).

``EngineClient`` is what the API depends on; ``LocalEngine`` implements it in-process
(PyTorch, a scheduler thread per chat model); ``engine.vllm_client.VllmEngine`` implements it
over vLLM servers; ``engine.factory.open_engine`` picks one by the ``engine`` setting. This module knows nothing about HTTP, tenants or policies.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from atelier.engine.adapter_budget import make_room, take_out
from atelier.engine.adapters import read_peft_adapter
from atelier.engine.constraints import check_constraint
from atelier.engine.embedding import Embedder
from atelier.engine.loading import load_chat_model, load_full_model, load_tokenizer
from atelier.engine.scheduler import Scheduler
from atelier.engine.threads import in_fresh_thread
from atelier.engine.types import Constraint, EmbeddingResult, GenerationRequest, InputType, TokenEvent, TruncateMode
from atelier.errors import InvalidInput, NotFound, Unavailable

log = logging.getLogger(__name__)

WHOLE_MODEL_QUANTIZATION = "none"
"""A full fine-tune is served in float whatever its base's quantization: full fine-tuning moves each weight by
about the learning rate times the steps (1e-4 x 6 = 6e-4 in tests/integration/test_finetune_full.py), below an
int4 group's rounding step (~1e-2), so int4 rounds the fine-tune back onto the base's grid. Measured there: the
fine-tuned SmolLM2-135M answers "Q" in float and int8, the base's "I" in int4."""


@runtime_checkable
class EngineClient(Protocol):
    """What the service may ask of an inference engine."""

    def tokenizer(self, model: str) -> Any:
        """The Hugging Face tokenizer of ``model`` (chat or embedding), loaded lazily."""

    def generate(self, model: str, request: GenerationRequest) -> AsyncIterator[TokenEvent]:
        """Stream the generation of one request; the last event carries finish_reason and usage.

        Raises (on the first ``__anext__``): QuotaExceeded when the queue is full, NotFound
        for an unknown model, Unavailable when the model cannot be loaded, InvalidInput for
        an invalid constraint (param ``response_format``: call ``validate_constraint`` first
        to name another) or a logit bias outside the vocabulary. Closing the iterator early
        aborts the request and frees its batch slot at once.
        """

    def validate_constraint(self, model: str, constraint: Constraint, param: str = "response_format") -> None:
        """Check that ``model`` can follow ``constraint``; compiles it once (cached for ``generate``).

        Blocking (the first use of a model's tokenizer takes about 0.3 s, a new large schema up
        to hundreds of ms): call it from a worker thread.

        Raises:
            InvalidInput: An invalid or unsupported constraint, naming ``param``; the message
                names the offending keyword or problem.
            NotFound: An unknown model. Unavailable: its tokenizer cannot be loaded.
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


@dataclass(eq=False)
class _Adapter:
    """An adapter served by a ``LocalEngine``: its opaque slot and where its weights are."""

    slot: int
    key: str
    model: str
    scheduler: Scheduler
    index: int  # stack index in the scheduler's AdapterBank
    nbytes: int
    in_use: int = 0
    ready: bool = False
    whole: bool = False  # a full fine-tune: a model of its own with its own scheduler (index 0 = its weights)


class LocalEngine:
    """In-process engine: lazily loads each model once, one scheduler thread per chat model.

    Adapters (``add_adapter``) share their base model's weights and its scheduler: each is
    parsed into an adapter slot of the base model's ``AdapterBank`` (stacked LoRA matrices
    and IA3 vectors, nothing merged or copied), so one forward pass serves rows of the base
    and of many adapters at once. Slots are opaque ids never reused, so a stale slot can
    never reach another adapter. While the adapters' memory is over
    ``settings.adapter_memory_mb``, the least recently used adapters with no request under
    way are evicted (``adapter_slot`` then answers None and the caller loads it again).

    A full fine-tune (a directory with a model's ``config.json`` and ``model.safetensors``
    instead of an adapter) takes a slot the same way, but it is a whole model: it gets its own
    scheduler (its own thread and KV cache), the base's tokenizer, float weights
    (``WHOLE_MODEL_QUANTIZATION``), and its bytes count against the same budget.
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
        self._adapters: OrderedDict[str, _Adapter] = OrderedDict()  # key → adapter, least recently used first
        self._slots: dict[int, _Adapter] = {}
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
                        loaded = in_fresh_thread(lambda: load_chat_model(
                            spec, self._settings.cache_path, self._settings.device,
                            self._settings.quantization_of(model, spec.quantization)))
                    except Exception as exc:  # noqa: BLE001
                        log.exception("loading %s failed", model)
                        raise Unavailable(f"model {model!r} could not be loaded: {exc}") from exc
                sched = Scheduler(
                    loaded, spec.context_length, max_batch=self._settings.max_batch, max_waiting=self._settings.max_waiting,
                    prefix_cache_bytes=int(self._settings.prefix_cache_mb * 2**20),
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
                        emb = in_fresh_thread(lambda: Embedder.load(spec, self._settings.device))
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
        """Load the PEFT adapter in ``directory`` into a slot over ``model``'s shared weights.

        The files are read during the call only; the weights are installed between two
        engine steps, so requests under way on other adapters keep flowing.

        Raises:
            NotFound: ``model`` is not a chat model of the catalog.
            InvalidInput: The directory is not an adapter this engine serves over ``model``.
            Unavailable: The base model cannot be loaded, or the adapter memory budget is
                held by adapters all in use.
        """
        sched = self._scheduler(model)
        with self._lock:
            found = self._adapters.get(key)
            if found is not None and found.model == model:
                self._adapters.move_to_end(key)
                return found.slot
        directory = Path(directory)
        if not (directory / "adapter_config.json").exists() and (directory / "config.json").exists():
            return self._add_whole(model, key, directory, sched)
        weights = read_peft_adapter(directory, sched.adapters.linears)  # any thread: parse and check
        self._make_room(weights.nbytes)
        with self._lock:
            found = self._adapters.get(key)
            if found is not None and found.model == model:  # added meanwhile by another request
                return found.slot
            index = sched.adapters.free_index(taken={a.index for a in self._slots.values() if a.model == model})
            adapter = _Adapter(next(self._next_slot), key, model, sched, index, weights.nbytes)
            self._slots[adapter.slot] = adapter
            self._adapters[key] = adapter
        try:
            sched.call(lambda: sched.adapters.install(index, weights)).result()
        except BaseException:
            with self._lock:
                self._slots.pop(adapter.slot, None)
                self._adapters.pop(key, None)
            raise
        adapter.ready = True
        log.info("adapter %s loaded over %s (slot %d, %.1f MB)", key, model, adapter.slot, weights.nbytes / 2**20)
        return adapter.slot

    def _make_room(self, nbytes: int) -> None:
        with self._lock:
            evicted = make_room(self._adapters, self._slots, nbytes, self._settings.adapter_memory_mb,
                                lambda a: a.in_use == 0 and a.ready)
        for old in evicted:
            self._unload(old, Unavailable("the adapter was unloaded"))

    def _add_whole(self, model: str, key: str, directory: Path, base: Scheduler) -> int:
        """A full fine-tune of ``model`` in a slot of its own, on a scheduler of its own (see the class docstring)."""
        spec = self._catalog.get(model, kind="chat")
        try:  # float weights: see WHOLE_MODEL_QUANTIZATION
            loaded = in_fresh_thread(lambda: load_full_model(
                spec, directory, base.loaded, self._settings.device, WHOLE_MODEL_QUANTIZATION))
        except InvalidInput:
            raise
        except Exception as exc:  # noqa: BLE001
            log.exception("loading the full fine-tune %s failed", key)
            raise Unavailable(f"the fine-tuned model could not be loaded: {exc}") from exc
        nbytes = sum(t.numel() * t.element_size()
                     for t in itertools.chain(loaded.model.parameters(), loaded.model.buffers()))
        self._make_room(nbytes)
        sched = Scheduler(
            loaded, spec.context_length, max_batch=self._settings.max_batch, max_waiting=self._settings.max_waiting,
            prefix_cache_bytes=int(self._settings.prefix_cache_mb * 2**20),
        )
        with self._lock:
            found = self._adapters.get(key)
            if found is None or found.model != model:
                adapter = _Adapter(next(self._next_slot), key, model, sched, 0, nbytes, ready=True, whole=True)
                self._slots[adapter.slot] = adapter
                self._adapters[key] = adapter
        if found is not None and found.model == model:  # added meanwhile by another request
            sched.close()
            return found.slot
        log.info("full fine-tune %s loaded over %s's shape (slot %d, %.1f MB)", key, model, adapter.slot,
                 nbytes / 2**20)
        return adapter.slot

    def _unload(self, adapter: "_Adapter", exc: BaseException) -> None:
        if adapter.whole:
            try:
                adapter.scheduler.call(lambda: adapter.scheduler.fail_adapter(0, exc)).result()
            except Unavailable:  # the engine is shutting down
                pass
            adapter.scheduler.close()
            log.info("full fine-tune %s unloaded (slot %d)", adapter.key, adapter.slot)
            return

        def run() -> None:
            adapter.scheduler.fail_adapter(adapter.index, exc)
            adapter.scheduler.adapters.clear(adapter.index)
            adapter.scheduler.prefix_cache.drop(lambda scope: scope[1] == adapter.index)

        try:
            adapter.scheduler.call(run).result()
        except Unavailable:  # the engine is shutting down
            pass
        log.info("adapter %s unloaded (slot %d)", adapter.key, adapter.slot)

    def adapter_slot(self, key: str) -> int | None:
        with self._lock:
            found = self._adapters.get(key)
            if found is None or not found.ready:
                return None
            self._adapters.move_to_end(key)
            return found.slot

    def remove_adapter(self, slot: int) -> None:
        with self._lock:
            adapter = take_out(self._adapters, self._slots, slot)
        if adapter is not None:
            self._unload(adapter, Unavailable("the adapter was removed"))

    def adapter_stats(self) -> dict[str, Any]:
        """Adapters loaded, their bytes, and the bytes the banks' stacks hold (padding included)."""
        with self._lock:
            adapters = list(self._slots.values())
        return {
            "loaded": len(adapters),
            "bytes": sum(a.nbytes for a in adapters),
            "stacked_bytes": sum(s.adapters.stacked_bytes() for s in list(self._schedulers.values())),
        }

    # ---------------------------------------------------------------- serving

    def validate_constraint(self, model: str, constraint: Constraint, param: str = "response_format") -> None:
        check_constraint(self.tokenizer(model), constraint, param)

    async def generate(self, model: str, request: GenerationRequest) -> AsyncIterator[TokenEvent]:
        adapter = None
        if request.adapter_slot is not None:
            with self._lock:
                adapter = self._slots.get(request.adapter_slot)
                if adapter is None or not adapter.ready or adapter.model != model:
                    raise NotFound("the adapter is not loaded", param="model", code="model_not_found")
                adapter.in_use += 1  # pinned: never evicted while this request runs
                self._adapters.move_to_end(adapter.key)
            sched = adapter.scheduler
        else:
            sched = self._schedulers.get(model) or await asyncio.to_thread(self._scheduler, model)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        def sink(item) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the caller's event loop is gone: nobody is listening
                pass

        finished = False
        try:
            if request.constraint is not None:  # compiled off the event loop (a no-op once cached)
                await asyncio.to_thread(sched.check_constraint, request.constraint)
            sched.submit(request, sink, adapter.index if adapter is not None else 0)
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
            if adapter is not None:
                with self._lock:
                    adapter.in_use -= 1

    async def embed(
        self, model: str, texts: list[str], *, truncate: TruncateMode = "END", input_type: InputType | None = None
    ) -> EmbeddingResult:
        emb = self._embedders.get(model) or await asyncio.to_thread(self._embedder, model)

        def run() -> EmbeddingResult:  # in a thread of its own (see threads.py), one batch at a time
            with self._embed_lock:
                return in_fresh_thread(lambda: emb.embed(texts, truncate=truncate, input_type=input_type))

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
        for adapter in list(self._slots.values()):
            if adapter.whole:
                adapter.scheduler.close()
        for sched in list(self._schedulers.values()):
            sched.close()
        self._schedulers.clear()
        self._adapters.clear()
        self._slots.clear()
        self._embedders.clear()

