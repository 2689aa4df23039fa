"""A batched KV cache whose rows can join and leave between decode steps.

Rows are left-padded to one common length so that one forward pass decodes them all;
an attention mask (kept by the scheduler) hides the padding. Storage is preallocated
and grown by doubling, so a decode step writes one column in place instead of
re-concatenating the whole cache (what ``DynamicLayer`` does, O(T) per step).
Knows nothing about requests or sampling.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer


class SlabLayer(DynamicLayer):
    """One layer's keys and values in a preallocated ``(B, H, capacity, D)`` slab."""

    def __init__(self):
        super().__init__()
        self.length = 0
        self._k: torch.Tensor | None = None  # (B, H, cap, D)
        self._v: torch.Tensor | None = None  # (B, H, cap, D)

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        self.is_initialized = True

    def _ensure(self, like: torch.Tensor, need: int) -> None:
        if self._k is not None and self._k.shape[2] >= need:
            return
        b, h, _, d = like.shape
        cap = max(64, need, 2 * (self._k.shape[2] if self._k is not None else 0))
        k = like.new_zeros((b, h, cap, d))  # (B, H, cap, D)
        v = like.new_zeros((b, h, cap, d))  # (B, H, cap, D)
        if self._k is not None and self.length:
            k[:, :, : self.length] = self._k[:, :, : self.length]
            v[:, :, : self.length] = self._v[:, :, : self.length]  # type: ignore[index]
        self._k, self._v = k, v

    def _refresh_views(self) -> None:
        self.keys = self._k[:, :, : self.length]  # type: ignore[index]  # (B, H, L, D)
        self.values = self._v[:, :, : self.length]  # type: ignore[index]  # (B, H, L, D)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        q = key_states.shape[2]
        self._ensure(key_states, self.length + q)
        self._k[:, :, self.length : self.length + q] = key_states  # type: ignore[index]
        self._v[:, :, self.length : self.length + q] = value_states  # type: ignore[index]
        self.length += q
        self._refresh_views()
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.length + query_length, 0

    def set_rows(self, k: torch.Tensor, v: torch.Tensor, length: int) -> None:
        """Replace the contents with ``k``/``v`` of shape ``(B, H, cap, D)`` holding ``length`` columns."""
        self._k, self._v, self.length = k, v, length
        self.is_initialized = True
        self.dtype, self.device = k.dtype, k.device
        self._refresh_views()


class BatchCache(DynamicCache):
    """A ``DynamicCache`` made of ``SlabLayer``s, with row-level join, select and trim."""

    def __init__(self, n_layers: int):
        Cache.__init__(self, layers=[SlabLayer() for _ in range(n_layers)])

    @property
    def length(self) -> int:
        return self.layers[0].length  # type: ignore[attr-defined]

    @property
    def rows(self) -> int:
        k = self.layers[0]._k  # type: ignore[attr-defined]
        return 0 if k is None else k.shape[0]

    def select(self, index: torch.Tensor) -> None:
        """Keep only rows ``index`` (in that order)."""
        for layer in self.layers:
            layer.set_rows(layer._k.index_select(0, index), layer._v.index_select(0, index), layer.length)  # type: ignore[attr-defined]

    def trim_left(self, n: int) -> None:
        """Drop the first ``n`` columns (padding that no remaining row needs)."""
        if n <= 0:
            return
        for layer in self.layers:
            length = layer.length - n  # type: ignore[attr-defined]
            k = layer._k[:, :, n : n + length].clone()  # type: ignore[attr-defined]  # (B, H, L-n, D)
            v = layer._v[:, :, n : n + length].clone()  # type: ignore[attr-defined]  # (B, H, L-n, D)
            layer.set_rows(k, v, length)  # type: ignore[attr-defined]

    def join(self, other: "BatchCache") -> tuple[int, int]:
        """Append ``other``'s rows below ours, left-padding whichever is shorter.

        Returns:
            (pad added to our rows, pad added to other's rows), in columns.
        """
        if self.rows == 0:
            for mine, theirs in zip(self.layers, other.layers):
                mine.set_rows(theirs._k, theirs._v, theirs.length)  # type: ignore[attr-defined]
            return 0, 0
        la, lb = self.length, other.length
        length = max(la, lb)
        for mine, theirs in zip(self.layers, other.layers):
            a, b = mine._k, theirs._k  # type: ignore[attr-defined]
            rows, h, _, d = a.shape
            cap = max(64, 2 * length)
            k = a.new_zeros((rows + b.shape[0], h, cap, d))  # (B+b, H, cap, D)
            v = a.new_zeros((rows + b.shape[0], h, cap, d))  # (B+b, H, cap, D)
            k[:rows, :, length - la : length] = a[:, :, :la]
            v[:rows, :, length - la : length] = mine._v[:, :, :la]  # type: ignore[attr-defined]
            k[rows:, :, length - lb : length] = b[:, :, :lb]
            v[rows:, :, length - lb : length] = theirs._v[:, :, :lb]  # type: ignore[attr-defined]
            mine.set_rows(k, v, length)  # type: ignore[attr-defined]
        return length - la, length - lb
