"""Continuous batching: every active request advances in one shared forward pass per step.

A background thread owns the model. Each loop iteration it (0) runs the calls queued by
other threads (``call``: installing or removing an adapter happens between two steps, so
loading one never pauses the others' traffic), (1) drops aborted and finished
rows, (2) admits waiting requests up to ``max_batch`` (prefilling them together in one
left-padded forward pass and appending their KV cache to the batch; a request whose prompt
starts with a prefix cached for its tenancy and adapter is prefilled alone from that prefix's
keys and values, see ``prefix_cache.py``), (3) runs one decode step for all rows at once and
hands each row's new text to its sink. Requests join and leave between steps; nothing
waits for a whole batch to finish. Rows of different adapters share every forward pass:
before each pass the adapter bank learns each row's stack index (``AdapterBank.set_rows``).

Per-row extras, paid only by the rows that ask: a constrained row (structured outputs) has
its own llguidance matcher; before each sampling its allowed-token mask is filled (all
constrained rows at once) and applied to its logits only, and after it the matcher takes the
sampled token; the row ends with ``stop`` once the grammar is complete (or at an
end-of-sequence token, which the mask allows only then). Rows asking for ``logprobs`` get
``log_softmax`` of their raw or processed logits; a row asking for ``prompt_logprobs`` is
prefilled on its own, in chunks that keep the logits of every prompt position.
Knows nothing about HTTP or tenants.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import torch

from atelier.engine.adapters import AdapterBank
from atelier.engine.constraints import TokenMasks, advance, check_constraint, new_matcher
from atelier.engine.generation import Sequence, TextStream
from atelier.engine.kv_cache import BatchCache
from atelier.engine.loading import LoadedModel
from atelier.engine.prefix_cache import KV, PrefixCache
from atelier.engine.sampling import SamplingTensors, draw, logprobs, process_logits
from atelier.engine.types import Constraint, GenerationRequest, SamplingParams, TokenEvent, TokenLogprob
from atelier.errors import InvalidInput, QuotaExceeded, Unavailable

log = logging.getLogger(__name__)

Sink = Callable[[TokenEvent | BaseException], None]


@dataclass
class _Row:
    seq: Sequence
    sink: Sink
    adapter: int = 0  # stack index in the adapter bank; 0 = the base model
    next_token: int = 0
    matcher: Any = None  # llguidance matcher of the row's constraint; None = free text


def _make_generator(seed: int | None) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed if seed is not None else int.from_bytes(os.urandom(8), "little") & (2**63 - 1))
    return g


class Scheduler:
    """Owns one chat model and batches its requests (see module docstring)."""

    def __init__(
        self,
        loaded: LoadedModel,
        context_length: int,
        max_batch: int = 32,
        max_waiting: int = 64,
        max_prefill_tokens: int = 1024,
        prompt_logprobs_chunk: int = 128,
        prefix_cache_bytes: int = 0,
    ):
        self.loaded = loaded
        self.context_length = context_length
        self.max_batch = max_batch
        self.max_waiting = max_waiting
        self.max_prefill_tokens = max_prefill_tokens
        self.prompt_logprobs_chunk = prompt_logprobs_chunk
        """Prompt positions whose logits a ``prompt_logprobs`` prefill holds at once."""
        self._model = loaded.model
        self._device = next(self._model.parameters()).device
        self._n_layers = self._model.config.num_hidden_layers
        self._vocab = self._model.config.vocab_size
        self._waiting: deque[_Row] = deque()
        self._rows: list[_Row] = []
        self._cache = BatchCache(self._n_layers)
        self._mask = torch.zeros((0, 0), dtype=torch.long)  # (B, L) 1 = real token, 0 = left padding
        self._aborted: set[str] = set()
        self._cond = threading.Condition()
        self._closed = False
        self._admitting = 0  # rows taken from the queue and being prefilled right now
        self._calls: deque[tuple[Callable[[], Any], Future]] = deque()
        self._masks: TokenMasks | None = None  # built with the first constrained row
        self.adapters = AdapterBank(self._model)
        self.prefix_cache = PrefixCache(prefix_cache_bytes)
        """Prompt prefixes' KV by (tenancy, stack index, its version): see ``prefix_cache.py``."""
        self.steps = 0
        self._thread = threading.Thread(target=self._run, name=f"engine-{loaded.name}", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ public, any thread

    def submit(self, request: GenerationRequest, sink: Sink, adapter: int = 0) -> None:
        """Queue a request; its events go to ``sink`` from the engine thread.

        ``adapter`` is the request's stack index in ``self.adapters`` (0: the base model).

        Raises:
            InvalidInput: the prompt leaves no room in the context; a logit bias names a token
                outside the vocabulary; an invalid or unsupported constraint (param
                ``response_format``; compiled here unless cached, see ``check_constraint``).
            QuotaExceeded: the waiting queue is full (retry later).
        """
        if not request.prompt_ids:
            raise InvalidInput("the prompt is empty", param="prompt")
        room = self.context_length - len(request.prompt_ids)
        if room < 1:
            raise InvalidInput(
                f"the prompt has {len(request.prompt_ids)} tokens; this model's context is {self.context_length}",
                param="messages",
            )
        params = request.params
        self._check_params(params)
        matcher = new_matcher(self.loaded.tokenizer, request.constraint) if request.constraint is not None else None
        seen = None
        if params.repetition_penalty != 1.0:
            seen = torch.zeros(self._vocab, dtype=torch.bool)  # (V,)
            seen[torch.tensor([t for t in request.prompt_ids if 0 <= t < self._vocab], dtype=torch.long)] = True
        seq = Sequence(
            request=request,
            stream=TextStream(self.loaded.tokenizer, params.stop),
            eos_ids=self.loaded.eos_token_ids,
            max_new=min(params.max_tokens, room),
            generator=_make_generator(params.seed) if params.temperature > 0 else None,
            counts=torch.zeros(self._vocab) if (params.frequency_penalty or params.presence_penalty) else None,
            seen=seen,
        )
        with self._cond:
            if self._closed:
                raise Unavailable("the engine is shutting down")
            in_flight = len(self._rows) + self._admitting + len(self._waiting)
            if in_flight >= self.max_batch + self.max_waiting:
                raise QuotaExceeded(
                    f"the model is busy: {len(self._rows)} requests running and {len(self._waiting)} queued",
                    retry_after=2.0,
                )
            self._waiting.append(_Row(seq, sink, adapter, matcher=matcher))
            self._cond.notify()

    def _check_params(self, params: SamplingParams) -> None:
        """What the API bounds already; checked again where a bad value would break a step."""
        for token, _ in params.logit_bias:
            if not 0 <= token < self._vocab:
                raise InvalidInput(
                    f"logit_bias names token {token}; this model's token ids are 0 to {self._vocab - 1}",
                    param="logit_bias",
                )
        if params.repetition_penalty <= 0:
            raise InvalidInput("repetition_penalty must be positive", param="repetition_penalty")
        for name in ("logprobs", "prompt_logprobs"):
            k = getattr(params, name)
            if k is not None and k < 0:
                raise InvalidInput(f"{name} must be at least 0", param=name)

    def check_constraint(self, constraint: Constraint, param: str = "response_format") -> None:
        """Compile ``constraint`` for this model's tokenizer (cached) or raise InvalidInput naming ``param``.

        Blocking (see ``constraints.check_constraint``): call it from a worker thread.
        """
        check_constraint(self.loaded.tokenizer, constraint, param)

    def abort(self, request_id: str) -> None:
        """Stop a request; its batch slot is freed before the next decode step."""
        with self._cond:
            self._aborted.add(request_id)
            self._cond.notify()

    def call(self, fn: Callable[[], Any]) -> Future:
        """Run ``fn`` on the engine thread between two steps; its result or error in the future."""
        future: Future = Future()
        with self._cond:
            if self._closed:
                raise Unavailable("the engine is shutting down")
            self._calls.append((fn, future))
            self._cond.notify()
        return future

    def fail_adapter(self, adapter: int, exc: BaseException) -> None:
        """Engine thread: end every request of stack index ``adapter`` with ``exc``."""
        for row in [r for r in self._rows if r.adapter == adapter]:
            row.seq.aborted = True
            row.sink(exc)
        waiting = [r for r in self._waiting if r.adapter == adapter]
        with self._cond:
            self._waiting = deque(r for r in self._waiting if r.adapter != adapter)
        for row in waiting:
            row.sink(exc)
        self._drop_done()

    def stats(self) -> dict[str, int]:
        with self._cond:
            return {"running": len(self._rows), "waiting": len(self._waiting), "steps": self.steps,
                    "prefix_cache_hits": self.prefix_cache.hits, "prefix_cache_bytes": self.prefix_cache.bytes}

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout=10)

    # ------------------------------------------------------------------ engine thread

    def _run(self) -> None:
        with torch.inference_mode():
            while True:
                with self._cond:
                    while (not self._closed and not self._waiting and not self._rows and not self._aborted
                           and not self._calls):
                        self._cond.wait()
                    if self._closed:
                        self._fail_all(Unavailable("the engine was shut down"))
                        for _, future in self._calls:
                            future.set_exception(Unavailable("the engine was shut down"))
                        return
                    calls, self._calls = self._calls, deque()
                for fn, future in calls:
                    try:
                        future.set_result(fn())
                    except BaseException as exc:  # noqa: BLE001 - handed to the caller
                        future.set_exception(exc)
                with self._cond:
                    aborted, self._aborted = self._aborted, set()
                    self._waiting = deque(r for r in self._waiting if r.seq.request.request_id not in aborted)
                    admitted = self._take_waiting()
                    self._admitting = len(admitted)
                for row in self._rows:
                    if row.seq.request.request_id in aborted:
                        row.seq.aborted = True
                try:
                    self._drop_done()
                    if admitted:
                        self._admit(admitted)
                    with self._cond:  # the admitted rows are running now (or done): count them once
                        self._admitting = 0
                    self._drop_done()
                    if self._rows:
                        self._decode_step()
                        self._drop_done()
                except Exception as exc:  # noqa: BLE001 - a failed step must not kill the engine thread
                    log.exception("engine step failed")
                    error = Unavailable(f"generation failed: {exc}")
                    for row in admitted:
                        if row not in self._rows and row.seq.finish_reason is None:
                            row.sink(error)
                    self._fail_all(error)
                finally:
                    with self._cond:
                        self._admitting = 0

    def _take_waiting(self) -> list[_Row]:
        admitted: list[_Row] = []
        budget = self.max_prefill_tokens
        longest = 0
        while self._waiting and len(self._rows) + len(admitted) < self.max_batch:
            longest = max(longest, self._waiting[0].seq.prompt_len)
            if admitted and longest * (len(admitted) + 1) > budget:  # left padding costs too
                break
            admitted.append(self._waiting.popleft())
        return admitted

    def _fail_all(self, exc: BaseException) -> None:
        for row in list(self._rows) + list(self._waiting):
            row.sink(exc)
        self._rows, self._waiting = [], deque()
        self._cache = BatchCache(self._n_layers)
        self._mask = torch.zeros((0, 0), dtype=torch.long)

    def _sample(self, rows: list[_Row], logits: torch.Tensor) -> tuple[list[int], list[TokenLogprob | None]]:
        """Next token of each row from its last-position logits (B, V), and its log probabilities if asked."""
        seqs = [r.seq for r in rows]
        params = [s.request.params for s in seqs]
        st = SamplingTensors.from_params(params, device=logits.device)
        counts = None
        if any(s.counts is not None for s in seqs):
            counts = torch.stack([s.counts if s.counts is not None else torch.zeros(self._vocab) for s in seqs])  # (B, V)
        seen = None
        if st.repetition_penalty is not None:
            none = torch.zeros(self._vocab, dtype=torch.bool)  # (V,)
            seen = torch.stack([s.seen if s.seen is not None else none for s in seqs])  # (B, V)
        processed = process_logits(logits, st, counts, seen, self._allowed(rows))  # (B, V)
        tokens = draw(processed, st, [s.generator for s in seqs])  # (B,)
        entries: list[TokenLogprob | None] = [None] * len(rows)
        for mode, source in (("raw", logits), ("processed", processed)):
            asked = [b for b, p in enumerate(params) if p.logprobs is not None and p.logprobs_mode == mode]
            if asked:
                index = torch.tensor(asked)  # (R,)
                found = _logprob_entries(source[index], tokens[index], [params[b].logprobs for b in asked])
                for b, entry in zip(asked, found):
                    entries[b] = entry
        return tokens.tolist(), entries

    def _allowed(self, rows: list[_Row]) -> torch.Tensor | None:
        """(B, V) bool tokens each row may take next: its grammar's for constrained rows, all for the others."""
        constrained = [i for i, r in enumerate(rows) if r.matcher is not None]
        if not constrained:
            return None
        if self._masks is None:
            self._masks = TokenMasks(self.loaded.tokenizer, self._vocab, sorted(self.loaded.eos_token_ids))
        allowed = torch.ones((len(rows), self._vocab), dtype=torch.bool)  # (B, V)
        allowed[constrained] = self._masks.allowed([rows[i].matcher for i in constrained])  # (R, V)
        return allowed

    def _emit(self, row: _Row, token: int, logprob: TokenLogprob | None = None) -> None:
        complete = False
        if row.matcher is not None and token not in row.seq.eos_ids:
            try:
                complete = advance(row.matcher, token)
            except RuntimeError as exc:
                log.error("request %s: the constraint refused token %d: %s", row.seq.request.request_id, token, exc)
                row.seq.aborted = True
                row.sink(Unavailable(f"generation failed: the output constraint could not be followed ({exc})"))
                return
        event = row.seq.append(token, logprob, complete)
        row.next_token = token
        row.sink(event)

    def _scope(self, row: _Row) -> tuple[str, int, int]:
        """Whose cached prefixes a row may use: its tenancy's, on its adapter as installed now."""
        return row.seq.request.cache_scope, row.adapter, self.adapters.versions.get(row.adapter, 0)

    def _admit(self, rows: list[_Row]) -> None:
        """Prefill admitted rows: together, but a row with a cached prefix or asking for prompt logprobs on its own."""
        plain: list[_Row] = []
        for row in rows:
            if row.seq.request.params.prompt_logprobs is not None:
                continue
            hit = self.prefix_cache.lookup(self._scope(row), row.seq.request.prompt_ids)
            if hit is None:
                plain.append(row)
            else:
                self._prefill_cached(row, *hit)
        if plain:
            self._prefill(plain)
        for row in rows:
            if row.seq.request.params.prompt_logprobs is not None:
                self._prefill_scored(row)

    def _store_prefixes(self, rows: list[_Row], cache: BatchCache, pads: list[int]) -> None:
        """Offer each row's prompt (row ``i`` of ``cache``, after ``pads[i]`` padding columns) to the prefix cache."""
        if self.prefix_cache.max_bytes <= 0:
            return
        for i, row in enumerate(rows):
            def kv(n: int, i: int = i) -> KV:
                start = pads[i]
                return [(layer._k[i, :, start : start + n].clone(), layer._v[i, :, start : start + n].clone())  # type: ignore[attr-defined]
                        for layer in cache.layers]  # (H, n, D) each
            self.prefix_cache.store(self._scope(row), row.seq.request.prompt_ids, kv)

    def _prefill_cached(self, row: _Row, kv: KV, n: int) -> None:
        """Prefill one row whose first ``n`` prompt tokens have cached keys and values: only the rest is computed."""
        prompt = row.seq.request.prompt_ids
        t = len(prompt)
        cache = BatchCache(self._n_layers)
        for layer, (k, v) in zip(cache.layers, kv):
            h, _, d = k.shape
            cap = max(64, 2 * t)
            slab_k = k.new_zeros((1, h, cap, d))  # (1, H, cap, D)
            slab_v = v.new_zeros((1, h, cap, d))  # (1, H, cap, D)
            slab_k[0, :, :n] = k[:, :n]
            slab_v[0, :, :n] = v[:, :n]
            layer.set_rows(slab_k, slab_v, n)  # type: ignore[attr-defined]
        self.adapters.set_rows([row.adapter])
        out = self._model(
            input_ids=torch.tensor([prompt[n:]], device=self._device),  # (1, T - n)
            attention_mask=torch.ones((1, t), dtype=torch.long, device=self._device),
            position_ids=torch.arange(n, t, device=self._device).unsqueeze(0),
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        logits = out.logits[:, -1, :].float()  # (1, V)
        self._store_prefixes([row], cache, [0])
        tokens, found = self._sample([row], logits)
        self._emit(row, tokens[0], found[0])
        self._join([row], cache, torch.ones((1, t), dtype=torch.long))

    def _prefill(self, rows: list[_Row]) -> None:
        """Prefill ``rows`` together (left-padded), sample their first tokens, join the batch."""
        prompts = [r.seq.request.prompt_ids for r in rows]
        t = max(len(p) for p in prompts)
        pad = self.loaded.tokenizer.pad_token_id or 0
        ids = torch.tensor([[pad] * (t - len(p)) + list(p) for p in prompts], device=self._device)  # (n, T)
        mask = torch.tensor([[0] * (t - len(p)) + [1] * len(p) for p in prompts], dtype=torch.long)  # (n, T)
        positions = (mask.cumsum(1) - 1).clamp(min=0)  # (n, T)
        cache = BatchCache(self._n_layers)
        self.adapters.set_rows([r.adapter for r in rows])
        out = self._model(
            input_ids=ids,
            attention_mask=mask.to(self._device),
            position_ids=positions.to(self._device),
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        logits = out.logits[:, -1, :].float()  # (n, V)
        self._store_prefixes(rows, cache, [t - len(p) for p in prompts])
        for row, token, logprob in zip(rows, *self._sample(rows, logits)):
            self._emit(row, token, logprob)
        self._join(rows, cache, mask)

    def _prefill_scored(self, row: _Row) -> None:
        """Prefill one row keeping every prompt position's logits (``prompt_logprobs``), then join the batch.

        The prompt goes through in chunks of ``prompt_logprobs_chunk`` positions over one
        cache, so at most ``(chunk, V)`` logits are held at once. Semantics as a loop::

            for i in range(1, T):
                entry[i] = logprob of prompt[i] and top-k under log_softmax(model(prompt[:i])[-1])
        """
        prompt = row.seq.request.prompt_ids
        k = row.seq.request.params.prompt_logprobs
        t = len(prompt)
        ids = torch.tensor([prompt], device=self._device)  # (1, T)
        cache = BatchCache(self._n_layers)
        self.adapters.set_rows([row.adapter])
        entries: list[TokenLogprob | None] = [None]
        last = None
        for start in range(0, t, self.prompt_logprobs_chunk):
            end = min(t, start + self.prompt_logprobs_chunk)
            out = self._model(
                input_ids=ids[:, start:end],
                attention_mask=torch.ones((1, end), dtype=torch.long, device=self._device),
                position_ids=torch.arange(start, end, device=self._device).unsqueeze(0),
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=0,
            )
            logits = out.logits[0].float()  # (C, V): position p predicts prompt[p + 1]
            targets = prompt[start + 1 : end + 1]  # (C,) or (C-1,) in the last chunk
            if targets:
                n = len(targets)
                entries.extend(_logprob_entries(logits[:n], torch.tensor(targets), [k] * n))
            last = logits[-1:]  # (1, V)
        row.seq.prompt_logprobs = tuple(entries)
        tokens, found = self._sample([row], last)  # type: ignore[arg-type]
        self._emit(row, tokens[0], found[0])
        self._join([row], cache, torch.ones((1, t), dtype=torch.long))

    def _join(self, rows: list[_Row], cache: BatchCache, mask: torch.Tensor) -> None:
        """Append the prefilled rows still running (their cache and (n, T) mask) to the batch."""
        keep = [i for i, r in enumerate(rows) if r.seq.finish_reason is None and not r.seq.aborted]
        if not keep:
            with self._cond:
                self._admitting = max(0, self._admitting - len(rows))
            return
        if len(keep) < len(rows):
            index = torch.tensor(keep)
            cache.select(index)
            mask = mask.index_select(0, index)  # (n', T)
        pad_old, pad_new = self._cache.join(cache)
        new_mask = torch.cat([torch.zeros((len(keep), pad_new), dtype=torch.long), mask], 1)
        if self._rows:
            old_mask = torch.cat([torch.zeros((self._mask.shape[0], pad_old), dtype=torch.long), self._mask], 1)
            self._mask = torch.cat([old_mask, new_mask], 0)  # (B+n', L)
        else:
            self._mask = new_mask  # (n', T)
        with self._cond:  # join and stop counting them as admitting in one step (submit's bound sees one or the other)
            self._rows.extend(rows[i] for i in keep)
            self._admitting = max(0, self._admitting - len(rows))

    def _drop_done(self) -> None:
        keep = [i for i, r in enumerate(self._rows) if r.seq.finish_reason is None and not r.seq.aborted]
        if len(keep) == len(self._rows):
            return
        self._rows = [self._rows[i] for i in keep]
        if not keep:
            self._cache = BatchCache(self._n_layers)
            self._mask = torch.zeros((0, 0), dtype=torch.long)
            return
        index = torch.tensor(keep)
        self._cache.select(index)
        self._mask = self._mask.index_select(0, index)  # (B', L)
        unused = int((self._mask.sum(0) == 0).long().cumprod(0).sum())  # leading all-padding columns
        if unused:
            self._cache.trim_left(unused)
            self._mask = self._mask[:, unused:]

    def _decode_step(self) -> None:
        rows = self._rows
        b = len(rows)
        input_ids = torch.tensor([[r.next_token] for r in rows], device=self._device)  # (B, 1)
        positions = torch.tensor([[r.seq.total_len - 1] for r in rows], device=self._device)  # (B, 1)
        self._mask = torch.cat([self._mask, torch.ones((b, 1), dtype=torch.long)], 1)  # (B, L+1)
        self.adapters.set_rows([r.adapter for r in rows])
        out = self._model(
            input_ids=input_ids,
            attention_mask=self._mask.to(self._device),
            position_ids=positions,
            past_key_values=self._cache,
            use_cache=True,
            logits_to_keep=1,
        )
        logits = out.logits[:, -1, :].float()  # (B, V)
        for row, token, logprob in zip(rows, *self._sample(rows, logits)):
            self._emit(row, token, logprob)
        self.steps += 1


def _logprob_entries(logits: torch.Tensor, tokens: torch.Tensor, ks: list[int]) -> list[TokenLogprob]:
    """One ``TokenLogprob`` per row of (R, V) logits: its token's log probability and its ``ks[r]`` likeliest.

    Tokens with probability 0 (masked out, ``-inf``) are left out of ``top``, which may then
    hold fewer than ``k`` entries.
    """
    chosen, top_values, top_ids = logprobs(logits, tokens, max(ks))  # (R,), (R, k), (R, k)
    entries = []
    for token, value, ids, values, k in zip(tokens.tolist(), chosen.tolist(), top_ids.tolist(), top_values.tolist(), ks):
        top = tuple((i, v) for i, v in zip(ids[:k], values[:k]) if v != float("-inf"))
        entries.append(TokenLogprob(token, value, top))
    return entries
