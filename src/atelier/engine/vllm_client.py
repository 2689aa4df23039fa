"""``EngineClient`` over vLLM's OpenAI-compatible servers (``engine = "vllm"``).

Atelier keeps everything above the engine: policies, tenancy, chat templates, token limits,
metering. vLLM gets what an engine gets: prompt token ids on ``/v1/completions`` (so the
prompt is exactly the one Atelier rendered and counted), every sampling control, the output
constraint as vLLM's ``structured_outputs``, and opaque model names. Each base model of the
catalog is served by the vLLM servers started with ``--served-model-name <catalog name>``;
with several URLs, requests go round-robin over the servers that serve the model.

Adapters use vLLM's runtime LoRA loading (servers started with ``--enable-lora`` and
``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``): the PEFT directory is copied under an opaque
name into ``vllm_adapter_dir`` (which the servers must read at the same path), loaded on
every server of the base, and unloaded and deleted when the adapter is removed or evicted
(least recently used idle adapters past ``adapter_memory_mb``, as in the local engine).
T-Few/IA3 adapters are refused (400): vLLM serves LoRA only. Embeddings and tokenizers stay
in-process (a ``LocalEngine`` that never loads a chat model's weights).

Errors: vLLM's 4xx become ``InvalidInput`` (404: ``NotFound``), an unreachable or overloaded
server (connection error, 429, 5xx) ``Unavailable`` with a Retry-After. Knows nothing about
HTTP routes, tenants or policies.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import logging
import secrets
import shutil
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from atelier.engine.adapter_budget import make_room, take_out
from atelier.engine.constraints import check_constraint
from atelier.engine.types import (
    Constraint,
    EmbeddingResult,
    GenerationRequest,
    InputType,
    LoopGuard,
    TokenEvent,
    TokenLogprob,
    TruncateMode,
    Usage,
)
from atelier.errors import InvalidInput, NotFound, Unavailable

log = logging.getLogger(__name__)

RETRY_AFTER = 5.0
"""Seconds a client is told to wait when vLLM is unreachable or overloaded."""
MODELS_TTL = 30.0
"""How long the list of what each server serves is trusted before it is asked again."""
_FINISH = {"stop": "stop", "length": "length", "abort": "abort"}


@dataclass(eq=False)
class _Adapter:
    """An adapter loaded in the vLLM servers: Atelier's slot, vLLM's opaque name, its copy on disk."""

    slot: int
    key: str
    model: str
    name: str
    directory: Path
    nbytes: int
    in_use: int = 0


def parse_urls(value: str | None) -> list[str]:
    """The vLLM base URLs of the ``vllm_url`` setting (comma separated), without trailing ``/`` or ``/v1``."""
    urls = [u.strip().rstrip("/").removesuffix("/v1") for u in (value or "").split(",") if u.strip()]
    if not urls:
        raise ValueError("engine=vllm needs vllm_url (ATELIER_VLLM_URL): the base URL of at least one vLLM server")
    return urls


def request_body(model: str, request: GenerationRequest) -> dict[str, Any]:
    """The ``/v1/completions`` body of a generation request (token ids in, every sampling control mapped).

    Raises:
        InvalidInput: ``logprobs_mode: processed`` (vLLM chooses the mode per server, not per request).
    """
    p = request.params
    body: dict[str, Any] = {
        "model": model, "prompt": list(request.prompt_ids), "max_tokens": p.max_tokens, "temperature": p.temperature,
        "top_p": p.top_p, "frequency_penalty": p.frequency_penalty, "presence_penalty": p.presence_penalty,
        "repetition_penalty": p.repetition_penalty, "stop": list(p.stop), "ignore_eos": p.ignore_eos,
        "stream": True, "stream_options": {"include_usage": True}, "return_token_ids": True,
        "skip_special_tokens": True,
    }  # fmt: skip
    if p.top_k > 0:
        body["top_k"] = p.top_k
    if p.seed is not None:
        body["seed"] = p.seed
    if p.logit_bias:
        body["logit_bias"] = {str(token): bias for token, bias in p.logit_bias}
    if p.logprobs is not None or p.prompt_logprobs is not None:
        if p.logprobs_mode != "raw":
            raise InvalidInput("logprobs_mode 'processed' is served by the in-process engine only (vLLM sets the "
                               "mode per server)", param="logprobs_mode")
        body["return_tokens_as_token_ids"] = True
    if p.logprobs is not None:
        body["logprobs"] = p.logprobs
    if p.prompt_logprobs is not None:  # vLLM gives prompt log probabilities on unstreamed requests only
        body.update(prompt_logprobs=p.prompt_logprobs, stream=False)
        del body["stream_options"]
    if request.constraint is not None:
        body["structured_outputs"] = structured_outputs(request.constraint)
    if request.cache_scope:  # vLLM shares cached prefixes between requests of one salt only
        body["cache_salt"] = hashlib.sha256(f"atelier-prefix:{request.cache_scope}".encode()).hexdigest()
    return body


def structured_outputs(constraint: Constraint) -> dict[str, Any]:
    """vLLM's ``structured_outputs`` for an Atelier constraint."""
    kind, spec = constraint.kind, constraint.spec
    if kind == "json_schema":
        return {"json": json.loads(spec)}
    if kind == "json_object":
        return {"json_object": True}
    if kind == "choice":
        return {"choice": json.loads(spec)}
    return {kind: spec}  # regex, grammar


def _token_id(text: str) -> int:
    """A token of ``return_tokens_as_token_ids`` (``token_id:123``)."""
    return int(text.rpartition(":")[2])


def token_logprobs(logprobs: dict[str, Any] | None) -> tuple[TokenLogprob, ...]:
    """The legacy completions ``logprobs`` object of a chunk as Atelier's, most likely first."""
    if not logprobs:
        return ()
    out = []
    for token, value, top in zip(logprobs["tokens"], logprobs["token_logprobs"], logprobs["top_logprobs"] or []):
        ranked = sorted(((_token_id(t), float(lp)) for t, lp in (top or {}).items()), key=lambda x: -x[1])
        out.append(TokenLogprob(_token_id(token), float(value), tuple(ranked)))
    return tuple(out)


def prompt_logprobs_of(entries: list[dict[str, Any] | None], prompt_ids: list[int],
                       k: int) -> tuple[TokenLogprob | None, ...]:
    """vLLM's ``prompt_logprobs`` (per position: ``{id: {"logprob", "rank"}}``) as Atelier's."""
    out: list[TokenLogprob | None] = []
    for token, entry in zip(prompt_ids, entries):
        if entry is None:
            out.append(None)
            continue
        values = {int(t): float(v["logprob"]) for t, v in entry.items()}
        ranked = sorted(((int(t), float(v["logprob"])) for t, v in entry.items() if v.get("rank", k + 1) <= k),
                        key=lambda x: -x[1])
        out.append(TokenLogprob(token, values.get(token, float("-inf")), tuple(ranked[:k])))
    return tuple(out)


def error_of(status: int, body: bytes, url: str) -> Exception:
    """Atelier's error for a vLLM error response."""
    try:
        error = json.loads(body).get("error") or {}
        message, param = str(error.get("message") or body[:500]), error.get("param")
    except (ValueError, AttributeError):
        message, param = body[:500].decode(errors="replace"), None
    if status == 404:
        return NotFound(f"vLLM: {message}", param=param or "model", code="model_not_found")
    if status == 429 or status >= 500:
        return Unavailable(f"the vLLM server at {url} cannot serve now ({status}): {message}", retry_after=RETRY_AFTER)
    return InvalidInput(f"vLLM refused the request: {message}", param=param)


class VllmEngine:
    """``EngineClient`` whose chat models are served by vLLM (see the module docstring).

    Args:
        catalog: The ``Catalog`` (tokenizers and embedding models).
        settings: ``Settings``: ``vllm_url``, ``vllm_adapter_dir``, ``adapter_memory_mb``.
        local: The in-process engine for tokenizers and embeddings (default: a new ``LocalEngine``).
        transport, async_transport: httpx transports for the servers (tests; default: the network).
    """

    def __init__(self, catalog, settings, local=None, transport: httpx.BaseTransport | None = None,
                 async_transport: httpx.AsyncBaseTransport | None = None):
        from atelier.engine.client import LocalEngine

        self._urls = parse_urls(settings.vllm_url)
        self._settings = settings
        self._local = local or LocalEngine(catalog, settings)
        self._adapter_dir = Path(settings.vllm_adapter_dir or settings.data_path / "vllm-adapters").expanduser()
        self._http = httpx.Client(timeout=httpx.Timeout(60.0, connect=5.0), transport=transport)
        self._async_transport = async_transport
        self._served: dict[str, list[str]] = {}
        self._served_at = 0.0
        self._turn = itertools.count()
        self._lock = threading.Lock()
        self._adapters: OrderedDict[str, _Adapter] = OrderedDict()  # key → adapter, least recently used first
        self._slots: dict[int, _Adapter] = {}
        self._next_slot = itertools.count(1)
        self._running: dict[str, int] = {}

    # ---------------------------------------------------------------- servers

    def _call(self, url: str, method: str, path: str, **kwargs) -> httpx.Response:
        try:
            response = self._http.request(method, url + path, **kwargs)
        except httpx.HTTPError as exc:
            raise Unavailable(f"the vLLM server at {url} is unreachable: {exc}", retry_after=RETRY_AFTER) from exc
        if response.status_code >= 400:
            raise error_of(response.status_code, response.content, url)
        return response

    def _servers(self, model: str, *, refresh: bool = False) -> list[str]:
        """The URLs of the servers that serve ``model`` (asked again every ``MODELS_TTL`` seconds)."""
        with self._lock:
            stale = refresh or time.monotonic() - self._served_at > MODELS_TTL
        if stale:
            served: dict[str, list[str]] = {}
            for url in self._urls:
                try:
                    names = [m["id"] for m in self._call(url, "GET", "/v1/models").json()["data"]]
                except Unavailable:
                    continue  # a server down serves nothing until it is back
                for name in names:
                    served.setdefault(name, []).append(url)
            with self._lock:
                self._served, self._served_at = served, time.monotonic()
        with self._lock:
            urls = self._served.get(model, [])
        if not urls:
            if not stale:
                return self._servers(model, refresh=True)
            raise Unavailable(f"no vLLM server serves {model!r} (started with --served-model-name {model}?)",
                              retry_after=RETRY_AFTER)
        return urls

    def _pick(self, model: str) -> str:
        urls = self._servers(model)
        return urls[next(self._turn) % len(urls)]

    # ---------------------------------------------------------------- EngineClient

    def tokenizer(self, model: str) -> Any:
        return self._local.tokenizer(model)

    def validate_constraint(self, model: str, constraint: Constraint, param: str = "response_format") -> None:
        check_constraint(self.tokenizer(model), constraint, param)  # llguidance, the library vLLM's guidance uses

    async def generate(self, model: str, request: GenerationRequest) -> AsyncIterator[TokenEvent]:
        name = model
        adapter = None
        if request.adapter_slot is not None:
            with self._lock:
                adapter = self._slots.get(request.adapter_slot)
                if adapter is None or adapter.model != model:
                    raise NotFound("the adapter is not loaded", param="model", code="model_not_found")
                adapter.in_use += 1  # pinned: never evicted while this request runs
                self._adapters.move_to_end(adapter.key)
            name = adapter.name
        self._running[model] = self._running.get(model, 0) + 1
        try:
            body = request_body(name, request)
            url = await asyncio.to_thread(self._pick, model)
            if body["stream"]:
                async for event in self._stream(url, body, request):
                    yield event
            else:
                yield await self._whole(url, body, request)
        finally:
            self._running[model] -= 1
            if adapter is not None:
                with self._lock:
                    adapter.in_use -= 1

    async def _stream(self, url: str, body: dict[str, Any], request: GenerationRequest) -> AsyncIterator[TokenEvent]:
        """The events of one streamed completion; the finish event waits for the usage chunk."""
        guard = LoopGuard() if request.params.loop_guard else None
        ending: TokenEvent | None = None
        produced = 0
        first = True
        try:
            async with httpx.AsyncClient(timeout=httpx.Timeout(None, connect=5.0), transport=self._async_transport) as client, \
                    client.stream("POST", url + "/v1/completions", json=body) as response:
                if response.status_code >= 400:
                    raise error_of(response.status_code, await response.aread(), url)
                async for line in response.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[len("data: "):])
                    if chunk.get("usage") and not chunk.get("choices"):
                        usage = Usage(chunk["usage"]["prompt_tokens"], chunk["usage"]["completion_tokens"])
                        if ending is not None:
                            yield TokenEvent(ending.text, ending.token_ids, ending.finish_reason, usage,
                                             ending.logprobs, ending.prompt_logprobs)
                            return
                        continue
                    if "error" in chunk:  # an error after the stream started
                        error = chunk["error"]
                        raise error_of(int(error.get("code") or 500), json.dumps(chunk).encode(), url)
                    choice = chunk["choices"][0]
                    event = TokenEvent(
                        text=choice.get("text") or "", token_ids=tuple(choice.get("token_ids") or ()),
                        finish_reason=_FINISH.get(choice.get("finish_reason"), "stop") if choice.get("finish_reason")
                        else None,
                        logprobs=token_logprobs(choice.get("logprobs")),
                        prompt_logprobs=self._prompt_logprobs(choice, request) if first else None,
                    )  # fmt: skip
                    first = False
                    produced += len(event.token_ids)
                    if guard is not None and event.finish_reason is None and any(
                            guard.repeating(t) for t in event.token_ids):
                        usage = Usage(len(request.prompt_ids), produced)
                        yield TokenEvent(event.text, event.token_ids, "stop", usage, event.logprobs,
                                         event.prompt_logprobs, stopped_by="repetition")
                        return  # leaving the stream closes the connection: vLLM aborts the request
                    if event.finish_reason is not None:
                        ending = event
                        continue
                    if event.text or event.token_ids:
                        yield event
        except httpx.HTTPError as exc:
            raise Unavailable(f"the vLLM server at {url} is unreachable: {exc}", retry_after=RETRY_AFTER) from exc
        if ending is not None:  # a server that sent no usage chunk
            yield TokenEvent(ending.text, ending.token_ids, ending.finish_reason,
                             Usage(len(request.prompt_ids), produced), ending.logprobs, ending.prompt_logprobs)
        else:
            raise Unavailable(f"the vLLM server at {url} ended the stream early", retry_after=RETRY_AFTER)

    async def _whole(self, url: str, body: dict[str, Any], request: GenerationRequest) -> TokenEvent:
        """One unstreamed completion as a single finishing event."""
        try:
            async with httpx.AsyncClient(timeout=httpx.Timeout(None, connect=5.0),
                                         transport=self._async_transport) as client:
                response = await client.post(url + "/v1/completions", json=body)
        except httpx.HTTPError as exc:
            raise Unavailable(f"the vLLM server at {url} is unreachable: {exc}", retry_after=RETRY_AFTER) from exc
        if response.status_code >= 400:
            raise error_of(response.status_code, response.content, url)
        data = response.json()
        choice = data["choices"][0]
        return TokenEvent(choice.get("text") or "", tuple(choice.get("token_ids") or ()),
                          _FINISH.get(choice.get("finish_reason"), "stop"),
                          Usage(data["usage"]["prompt_tokens"], data["usage"]["completion_tokens"]),
                          token_logprobs(choice.get("logprobs")), self._prompt_logprobs(choice, request))

    @staticmethod
    def _prompt_logprobs(choice: dict[str, Any], request: GenerationRequest) -> tuple[TokenLogprob | None, ...] | None:
        k = request.params.prompt_logprobs
        entries = choice.get("prompt_logprobs")
        if k is None or entries is None:
            return None
        return prompt_logprobs_of(entries, request.prompt_ids, k)

    async def embed(
        self, model: str, texts: list[str], *, truncate: TruncateMode = "END", input_type: InputType | None = None
    ) -> EmbeddingResult:
        return await self._local.embed(model, texts, truncate=truncate, input_type=input_type)

    # ---------------------------------------------------------------- adapters

    def add_adapter(self, model: str, key: str, directory: Path) -> int:
        """Copy the PEFT LoRA directory under an opaque name and load it in every server of ``model``.

        Raises:
            InvalidInput: Not a PEFT LoRA adapter (T-Few/IA3 included), or vLLM refuses it
                (e.g. a rank above the servers' ``--max-lora-rank``).
            Unavailable: A server is unreachable, or the adapter budget is held by adapters in use.
        """
        with self._lock:
            found = self._adapters.get(key)
            if found is not None and found.model == model:
                self._adapters.move_to_end(key)
                return found.slot
        directory = Path(directory)
        if not (directory / "adapter_config.json").exists() and (directory / "config.json").exists():
            raise InvalidInput("a full fine-tune is a whole model: vLLM's servers serve the base they were started "
                               "with (full fine-tunes are served by the in-process engine: engine=local)",
                               param="model")
        try:
            config = json.loads((directory / "adapter_config.json").read_text())
        except (OSError, ValueError) as exc:
            raise InvalidInput(f"not a PEFT adapter directory: {exc}", param="model") from None
        if config.get("peft_type") != "LORA":
            raise InvalidInput(f"vLLM serves LoRA adapters only; this one is {config.get('peft_type')!r} (T-Few/IA3 "
                               "adapters are served by the in-process engine: engine=local)", param="model")
        urls = self._servers(model)
        nbytes = sum(f.stat().st_size for f in directory.iterdir() if f.is_file())
        with self._lock:
            evicted = make_room(self._adapters, self._slots, nbytes, self._settings.adapter_memory_mb)
        for old in evicted:
            self._unload(old)
        name = f"atl-{secrets.token_hex(12)}"
        copy = self._adapter_dir / name
        self._adapter_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        shutil.copytree(directory, copy)
        loaded: list[str] = []
        try:
            for url in urls:
                self._call(url, "POST", "/v1/load_lora_adapter", json={"lora_name": name, "lora_path": str(copy)})
                loaded.append(url)
        except BaseException:
            self._unload_from(name, loaded)
            shutil.rmtree(copy, ignore_errors=True)
            raise
        with self._lock:
            adapter = _Adapter(next(self._next_slot), key, model, name, copy, nbytes)
            self._slots[adapter.slot] = adapter
            self._adapters[key] = adapter
        log.info("adapter %s loaded in vLLM over %s as %s (slot %d)", key, model, name, adapter.slot)
        return adapter.slot

    def _unload_from(self, name: str, urls: list[str]) -> None:
        for url in urls:
            try:
                self._call(url, "POST", "/v1/unload_lora_adapter", json={"lora_name": name})
            except (Unavailable, InvalidInput, NotFound) as exc:  # a restarted server no longer has it
                log.warning("unloading %s from %s: %s", name, url, exc)

    def _unload(self, adapter: _Adapter) -> None:
        with self._lock:
            urls = list(self._served.get(adapter.model, self._urls))
        self._unload_from(adapter.name, urls)
        shutil.rmtree(adapter.directory, ignore_errors=True)
        log.info("adapter %s unloaded from vLLM (%s)", adapter.key, adapter.name)

    def adapter_slot(self, key: str) -> int | None:
        with self._lock:
            found = self._adapters.get(key)
            if found is None:
                return None
            self._adapters.move_to_end(key)
            return found.slot

    def remove_adapter(self, slot: int) -> None:
        with self._lock:
            adapter = take_out(self._adapters, self._slots, slot)
        if adapter is not None:
            self._unload(adapter)

    # ---------------------------------------------------------------- monitoring

    def health(self) -> dict[str, Any]:
        servers, problems = [], []
        for url in self._urls:
            try:
                self._call(url, "GET", "/health", timeout=5.0)
                models = [m["id"] for m in self._call(url, "GET", "/v1/models", timeout=5.0).json()["data"]]
                servers.append({"url": url, "ok": True, "models": models})
            except (Unavailable, InvalidInput, NotFound) as exc:
                servers.append({"url": url, "ok": False, "error": str(exc)})
                problems.append(f"vLLM server {url} is not healthy: {exc}")
        local = self._local.health()
        return {"engine": "vllm", "vllm_servers": servers, "problems": problems,
                "chat_models": {m: {"running": n} for m, n in self._running.items()},
                "embedding_models": local.get("embedding_models", [])}

    def stats(self) -> dict[str, Any]:
        return {"chat_models": {m: {"running": n, "waiting": 0} for m, n in self._running.items()},
                "adapters": len(self._slots)}

    def close(self) -> None:
        with self._lock:
            adapters = list(self._slots.values())
            self._slots.clear()
            self._adapters.clear()
        for adapter in adapters:
            self._unload(adapter)
        self._http.close()
        self._local.close()
