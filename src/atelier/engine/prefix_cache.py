"""Automatic prefix caching: the keys and values of prompts already prefilled, reused by later prompts.

A prompt's KV at position ``i`` depends only on tokens ``0..i`` (and the model and adapter),
so a new prompt that starts with the tokens of a cached one (a system prompt, k-shot
examples, a knowledge-base preamble, a conversation's earlier turns) can skip prefilling
them. Prompts are cut in blocks of ``BLOCK`` tokens and each block gets a key chained with
the keys before it (vLLM's scheme), so finding the longest cached prefix of a prompt walks
its blocks in ``T / BLOCK`` dictionary lookups. Every key starts with the caller's scope
(scheduler: tenancy, adapter slot and that slot's version), so entries are never shared
across tenancies and an adapter replaced in its slot never sees the old one's entries.

An entry holds one prompt's per-layer keys and values ``(H, L, D)``, ``L`` a multiple of
``BLOCK``; a block key points to the newest entry holding that block (the chained key of a
block stands for every block before it, so the deepest key found names an entry that holds
the whole prefix, even when an evicted entry took shorter keys with it). Memory is bounded in
bytes; the least recently used entries go first. The matched tokens are compared, so a hash
collision can only cost a miss. Engine thread only; knows nothing about requests or models.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass

import torch

BLOCK = 16
"""Tokens per block: the granularity of what is cached and matched."""

KV = list[tuple[torch.Tensor, torch.Tensor]]
"""Per layer: keys and values, each (H, L, D)."""


@dataclass
class _Entry:
    scope: Hashable
    ids: tuple[int, ...]  # the L cached tokens
    kv: KV
    nbytes: int
    blocks: list[Hashable]  # this entry's block keys, in order


class PrefixCache:
    """KV of cached prompt prefixes, by scope and tokens (see module docstring)."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[int, _Entry] = OrderedDict()  # id → entry, least recently used first
        self._blocks: dict[Hashable, int] = {}  # block key → entry id
        self._next = 0

    @staticmethod
    def _keys(scope: Hashable, ids: list[int] | tuple[int, ...], n_blocks: int) -> list[Hashable]:
        keys: list[Hashable] = []
        previous: Hashable = scope
        for b in range(n_blocks):
            previous = hash((previous, tuple(ids[b * BLOCK : (b + 1) * BLOCK])))
            keys.append((scope, previous))
        return keys

    def lookup(self, scope: Hashable, ids: list[int]) -> tuple[KV, int] | None:
        """The longest cached prefix of ``ids`` that leaves at least one token to compute.

        Returns:
            ``(kv, n)``: per-layer keys and values of ``ids[:n]`` (views, shapes (H, ≥n, D): use
            the first ``n`` columns), ``n`` a multiple of ``BLOCK``; or None (a miss).
        """
        if self.max_bytes <= 0:
            return None
        usable = (len(ids) - 1) // BLOCK
        found: tuple[int, int] | None = None  # (entry id, blocks matched)
        for b, key in enumerate(self._keys(scope, ids, usable)):  # the deepest block found holds all before it
            entry_id = self._blocks.get(key)
            if entry_id is not None:
                found = (entry_id, b + 1)
        if found is not None:
            entry_id, blocks = found
            entry = self._entries[entry_id]
            n = blocks * BLOCK
            if entry.ids[:n] == tuple(ids[:n]):
                self._entries.move_to_end(entry_id)
                self.hits += 1
                return entry.kv, n
        self.misses += 1
        return None

    def store(self, scope: Hashable, ids: list[int], kv: Callable[[int], KV]) -> None:
        """Cache the prompt ``ids`` (its whole blocks) unless they are cached already.

        ``kv(n)`` gives the per-layer keys and values of ``ids[:n]`` as new tensors (H, n, D);
        it is called only when something is stored.
        """
        n = len(ids) // BLOCK * BLOCK
        if self.max_bytes <= 0 or n == 0:
            return
        blocks = self._keys(scope, ids, n // BLOCK)
        if blocks[-1] in self._blocks:  # the last block's key stands for the whole prefix: cached already
            return
        tensors = kv(n)
        nbytes = sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in tensors)
        if nbytes > self.max_bytes:
            return
        while self.bytes + nbytes > self.max_bytes:
            self._evict(next(iter(self._entries)))
        entry_id, self._next = self._next, self._next + 1
        entry = _Entry(scope, tuple(ids[:n]), tensors, nbytes, blocks)
        self._entries[entry_id] = entry
        for key in entry.blocks:
            self._blocks[key] = entry_id
        self.bytes += nbytes

    def drop(self, scope_matches: Callable[[Hashable], bool]) -> None:
        """Evict every entry whose scope ``scope_matches`` (an adapter unloaded from its slot)."""
        for entry_id in [i for i, e in self._entries.items() if scope_matches(e.scope)]:
            self._evict(entry_id)

    def _evict(self, entry_id: int) -> None:
        entry = self._entries.pop(entry_id)
        for key in entry.blocks:
            if self._blocks.get(key) == entry_id:
                del self._blocks[key]
        self.bytes -= entry.nbytes

    def __len__(self) -> int:
        return len(self._entries)
