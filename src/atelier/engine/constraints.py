"""Structured outputs: a ``Constraint`` compiled to an llguidance grammar, one matcher per row, token masks.

A constraint (JSON Schema, any JSON object, regular expression, choice among strings, Lark
grammar) becomes an llguidance grammar; an ``LLMatcher`` follows one row's output token by
token and, before each step, says which tokens may come next as a bitmask over the
tokenizer's vocabulary (filled for many rows at once by llguidance's parallel executor).
This module knows nothing about models, batching or HTTP: the scheduler hands it matchers
and sampled tokens and gets ``(R, V)`` allowed-token masks back.

What each kind compiles to:

- ``json_schema``: llguidance's JSON Schema grammar of ``spec``, laid out as ``json.dumps``
  does by default (no newlines, ``", "`` between items and ``": "`` after keys), so a small
  model cannot wander off into whitespace; unsupported keywords are refused, not ignored.
- ``json_object``: the same for the schema ``{"type": "object"}`` (``spec`` is ignored).
- ``regex``: llguidance's regex grammar (Rust ``regex`` syntax); the whole output matches.
- ``choice``: the Lark grammar ``start: "a" | "b" | ...`` of the JSON-quoted strings.
- ``grammar``: ``spec`` as a Lark grammar in llguidance's dialect.

Each distinct ``(tokenizer, kind, spec)`` is compiled and validated once (an LRU cache of
ready matchers); a request gets a cheap deep copy.
"""

from __future__ import annotations

import hashlib
import json
import sys
import threading
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import llguidance
import llguidance.numpy as llg_numpy
import torch

from atelier.engine.loading import eos_ids
from atelier.engine.types import Constraint
from atelier.errors import InvalidInput

JSON_LAYOUT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
"""llguidance's JSON compile options: ``json.dumps``' default layout, no free whitespace."""
CACHE_SIZE = 256
"""Compiled constraints kept (least recently used dropped first)."""
_MAX_MESSAGE = 600
"""Longest llguidance error message passed on (regex errors draw the pattern)."""

_BYTE_BITS = ((torch.arange(256).unsqueeze(1) >> torch.arange(8)) & 1).bool()  # (256, 8) bit j of byte value i


# ---------------------------------------------------------------- tokenizers


class _Tokenizers:
    """llguidance tokenizers, one per distinct Hugging Face tokenizer (by content, not identity)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._by_object: weakref.WeakKeyDictionary[Any, tuple[str, Any]] = weakref.WeakKeyDictionary()
        self._by_digest: dict[str, Any] = {}

    def get(self, tokenizer, param: str = "response_format") -> tuple[str, Any]:
        """``(digest, LLTokenizer)`` of a fast Hugging Face tokenizer; about 0.3 s the first time."""
        with self._lock:
            found = self._by_object.get(tokenizer)
        if found is not None:
            return found
        import llguidance.hf  # imports transformers: only once a constraint is used

        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise InvalidInput("this model cannot constrain its output: its tokenizer is not a fast (Rust) one",
                               param=param)
        eos = sorted(eos_ids(tokenizer, None))
        digest = hashlib.sha256(backend.to_str().encode() + json.dumps(eos).encode()).hexdigest()
        with self._lock:
            ll = self._by_digest.get(digest)
        if ll is None:
            ll = llguidance.hf.from_tokenizer(tokenizer, eos_token=eos or None)
        with self._lock:
            ll = self._by_digest.setdefault(digest, ll)
            self._by_object[tokenizer] = (digest, ll)
        return digest, ll


_TOKENIZERS = _Tokenizers()


def ll_tokenizer(tokenizer) -> Any:
    """The llguidance ``LLTokenizer`` of a Hugging Face tokenizer, built once and cached.

    Its end-of-sequence tokens are the tokenizer's (``loading.eos_ids``), which the grammar
    allows once the output is complete.

    Raises:
        InvalidInput: The tokenizer is not a fast one (llguidance reads the Rust tokenizer).
    """
    return _TOKENIZERS.get(tokenizer)[1]


# ---------------------------------------------------------------- compiling


def grammar_of(constraint: Constraint, param: str = "response_format") -> str:
    """The llguidance grammar text of a constraint (not yet validated against a tokenizer).

    Raises:
        InvalidInput: ``spec`` is not what its kind needs (a JSON Schema object, a JSON list
            of strings, a non-empty grammar), naming ``param``.
    """
    try:
        return _grammar_of(constraint, param)
    except ValueError as exc:  # llguidance's own refusal of its arguments (e.g. bad ``x-guidance`` options)
        raise InvalidInput(f"the constraint is not supported: {_clip(str(exc))}", param=param) from exc


def _grammar_of(constraint: Constraint, param: str) -> str:
    matcher = llguidance.LLMatcher
    kind, spec = constraint.kind, constraint.spec
    if kind == "json_object":
        return matcher.grammar_from_json_schema('{"type": "object"}', defaults=JSON_LAYOUT)
    if kind == "json_schema":
        try:
            schema = json.loads(spec)
        except ValueError as exc:
            raise InvalidInput(f"the JSON schema is not valid JSON: {exc}", param=param) from exc
        if not isinstance(schema, dict):
            raise InvalidInput("the JSON schema must be a JSON object", param=param)
        return matcher.grammar_from_json_schema(spec, defaults=JSON_LAYOUT)
    if kind == "regex":
        return matcher.grammar_from_regex(spec)
    if kind == "choice":
        try:
            choices = json.loads(spec)
        except ValueError as exc:
            raise InvalidInput(f"the choices are not valid JSON: {exc}", param=param) from exc
        if not isinstance(choices, list) or not choices or not all(isinstance(c, str) for c in choices):
            raise InvalidInput("the choices must be a non-empty JSON list of strings", param=param)
        return matcher.grammar_from_lark("start: " + " | ".join(json.dumps(c) for c in choices))
    if kind == "grammar":
        if not spec.strip():
            raise InvalidInput("the grammar is empty", param=param)
        return matcher.grammar_from_lark(spec)
    raise InvalidInput(f"unknown constraint kind {kind!r}", param=param)


class _Compiled:
    """Ready matchers by ``(tokenizer digest, kind, sha256(spec))``, least recently used first."""

    def __init__(self, size: int):
        self._size = size
        self._lock = threading.Lock()
        self._matchers: OrderedDict[tuple[str, str, str], Any] = OrderedDict()

    def matcher(self, tokenizer, constraint: Constraint, param: str) -> Any:
        digest, ll = _TOKENIZERS.get(tokenizer, param)
        key = (digest, constraint.kind, hashlib.sha256(constraint.spec.encode()).hexdigest())
        with self._lock:
            found = self._matchers.get(key)
            if found is not None:
                self._matchers.move_to_end(key)
                return found
        grammar = grammar_of(constraint, param)
        problem = llguidance.LLMatcher.validate_grammar(grammar, ll)
        if not problem:
            found = llguidance.LLMatcher(ll, grammar, log_level=0)
            problem = found.get_error()
        if problem:
            what = {"json_schema": "JSON schema", "json_object": "JSON object constraint", "regex": "regular expression",
                    "choice": "choice", "grammar": "grammar"}[constraint.kind]
            raise InvalidInput(f"the {what} is not supported: {_clip(problem)}", param=param)
        with self._lock:
            found = self._matchers.setdefault(key, found)
            self._matchers.move_to_end(key)
            while len(self._matchers) > self._size:
                self._matchers.popitem(last=False)
        return found


def _clip(message: str) -> str:
    message = message.strip()
    return message if len(message) <= _MAX_MESSAGE else message[: _MAX_MESSAGE - 1] + "…"


COMPILED = _Compiled(CACHE_SIZE)


def check_constraint(tokenizer, constraint: Constraint, param: str = "response_format") -> None:
    """Compile and validate ``constraint`` for ``tokenizer`` (cached), or say what is wrong.

    Blocking: about 0.3 s the first time a tokenizer is seen, up to hundreds of ms for a
    large new grammar, microseconds when cached; call it from a worker thread.

    Args:
        tokenizer: The model's Hugging Face (fast) tokenizer.
        constraint: What the output must match.
        param: The request parameter to name in the error.

    Raises:
        InvalidInput: An invalid or unsupported constraint; the message names the offending
            keyword or problem (``Unimplemented keys: ["uniqueItems"]``, ``Invalid type:
            nonsense``, a regex or Lark syntax error with its position...).
    """
    COMPILED.matcher(tokenizer, constraint, param)


def new_matcher(tokenizer, constraint: Constraint, param: str = "response_format") -> Any:
    """A fresh llguidance ``LLMatcher`` for one row: a copy of the cached compiled one.

    Raises:
        InvalidInput: As :func:`check_constraint`.
    """
    return COMPILED.matcher(tokenizer, constraint, param).deep_copy()


# ---------------------------------------------------------------- masks


class TokenMasks:
    """Allowed-token masks of many matchers over a model's vocabulary, filled in parallel.

    The model's logits may be wider than the tokenizer (``config.vocab_size`` padded past
    the last token): ids the tokenizer lacks are never allowed. The model's own
    end-of-sequence ids (its config may name more than the tokenizer) are allowed exactly
    when the matcher accepts.

    Masks are filled with llguidance's public numpy helpers (``allocate_token_bitmask``,
    ``fill_next_token_bitmask_par``: one call for all rows, in parallel) and unpacked with a
    256-entry bit table. Not ``llguidance.torch``: importing it loads ``torch._dynamo``
    (1.5 s), and its ``apply_token_bitmask_inplace`` is a ``torch.compile`` kernel that needs
    a C++ toolchain, compiles for about 20 s on first use and then takes 7.7 ms for 4 rows of
    49,152 tokens on CPU, against 0.2 ms for the table.
    """

    def __init__(self, tokenizer, vocab: int, model_eos_ids: Sequence[int] = ()):
        """
        Args:
            tokenizer: The model's Hugging Face tokenizer.
            vocab: Width ``V`` of the model's logits.
            model_eos_ids: Every id that ends a sequence for the model.
        """
        assert sys.byteorder == "little", "bitmask words are read as little-endian bytes"
        self._ll = ll_tokenizer(tokenizer)
        self.vocab = vocab
        self._eos = torch.tensor(sorted(i for i in model_eos_ids if 0 <= i < vocab), dtype=torch.int64)  # (E,)
        self._executor = llguidance.LLExecutor()

    def allowed(self, matchers: Sequence[Any]) -> torch.Tensor:
        """Which tokens each matcher allows next.

        Semantics as a loop::

            for r in range(R):
                for j in range(V):
                    out[r, j] = matchers[r] allows token j   # False for j >= the tokenizer's vocabulary
                out[r, model_eos_ids] = matchers[r].is_accepting()

        Args:
            matchers: R llguidance matchers, none stopped.

        Returns:
            (R, V) bool.
        """
        r = len(matchers)
        words = llg_numpy.allocate_token_bitmask(r, self._ll.vocab_size)  # (R, W) int32: token j is bit j%32 of word j//32
        llg_numpy.fill_next_token_bitmask_par(self._executor, [(m, i) for i, m in enumerate(matchers)], words)
        bits = _BYTE_BITS[torch.from_numpy(words).view(torch.uint8).long()].reshape(r, -1)  # (R, 32W) little-endian
        width = min(self.vocab, self._ll.vocab_size)
        out = torch.zeros((r, self.vocab), dtype=torch.bool)  # (R, V)
        out[:, :width] = bits[:, :width]
        if self._eos.numel():
            accepting = torch.tensor([m.is_accepting() for m in matchers], dtype=torch.bool)  # (R,)
            out[:, self._eos] = accepting.unsqueeze(1)  # (R, E)
        return out


def advance(matcher: Any, token: int) -> bool:
    """Feed a sampled token to a row's matcher; True when the output is complete (nothing more may follow).

    Raises:
        RuntimeError: The matcher refused the token (it was masked out: an engine bug or a
            grammar llguidance could not follow), with llguidance's message.
    """
    if not matcher.consume_token(token):
        raise RuntimeError(matcher.get_error() or f"token {token} is not allowed here")
    return bool(matcher.is_stopped())
