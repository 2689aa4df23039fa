"""Which language a query or a passage is written in, and whether two texts share one.

Hybrid retrieval needs one fact about a query: can its words match the passages' words at
all? Keyword search finds nothing useful when a French question meets English passages,
so the fusion gives the keyword list a vote only when the query is likely in the
passages' language (``same_language_probability``, ``rag.retrieval.fusion_weights``).

The identifier is py3langid (BSD; a naive Bayes model over byte n-grams of 139 languages,
shipped inside the package and loaded once, nothing downloaded), through its public API
(``LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)``, ``rank``).
Passages are long enough to be identified among all its languages. A question of four
words is not: "capital of Japan" comes out Quechua. So a query is only weighed among
``COMMON_LANGUAGES`` and the passages' own languages (a prior that puts no weight on
languages neither side is likely to be in: on the benchmark's Wikipedia short
descriptions, ``bench/rag.py``, the right language comes first for 89 % of the English and
97 % of the French ones instead of 79 % and 93 %), and the question asked of it is
pairwise: the passages' language or the likeliest other one?

This module knows nothing about stores, models or tenants: text in, language codes and
probabilities out.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

UNDETERMINED = "und"
"""The code of a text with nothing to identify (no letters)."""

COMMON_LANGUAGES: frozenset[str] = frozenset(
    "ar bg ca cs da de el en es et fa fi fr he hi hr hu id it ja ko lt lv nl no pl pt ro ru sk sl sr sv th tr uk "
    "vi zh".split()
)
"""The languages a query is assumed to be in besides the passages' (ISO 639-1 codes)."""

PASSAGE_CHARS = 1000
"""Characters of a passage read to identify it (enough for a reliable answer, bounded cost)."""

_CACHE_SIZE = 16384
"""Passages whose language is remembered (a query reads the languages of its top hits)."""


@dataclass(frozen=True)
class Guess:
    """A language and the identifier's probability for it."""

    language: str
    """ISO 639 code, or ``UNDETERMINED``."""
    probability: float
    """In [0, 1]."""


_LOCK = threading.Lock()
_IDENTIFIER = None


def _identifier():
    """py3langid's identifier with normalised probabilities, loaded once (about 0.4 s)."""
    global _IDENTIFIER
    with _LOCK:
        if _IDENTIFIER is None:
            from py3langid.langid import MODEL_FILE, LanguageIdentifier

            _IDENTIFIER = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
        return _IDENTIFIER


def _has_letters(text: str) -> bool:
    return any(ch.isalpha() for ch in text)


def probabilities(text: str) -> dict[str, float]:
    """Every language's probability for ``text`` (they sum to 1); ``{}`` without letters."""
    if not _has_letters(text):
        return {}
    return dict(_identifier().rank(text))


@lru_cache(maxsize=_CACHE_SIZE)
def passage_language(text: str) -> str:
    """The most probable language of a passage (its first ``PASSAGE_CHARS`` characters), among all
    the identifier knows; ``UNDETERMINED`` without letters. Cached by text."""
    head = text[:PASSAGE_CHARS]
    if not _has_letters(head):
        return UNDETERMINED
    return _identifier().classify(head)[0]


def query_language(query: str, passage_languages: Iterable[str] = ()) -> Guess:
    """The most probable language of a (short) query among ``COMMON_LANGUAGES`` and ``passage_languages``.

    Returns:
        The language with its renormalised probability; ``Guess(UNDETERMINED, 0.0)`` without letters.
    """
    probs = probabilities(query)
    if not probs:
        return Guess(UNDETERMINED, 0.0)
    allowed = COMMON_LANGUAGES | set(passage_languages)
    total = sum(p for lang, p in probs.items() if lang in allowed)
    if total <= 0.0:
        return Guess(UNDETERMINED, 0.0)
    best = max((lang for lang in probs if lang in allowed), key=lambda lang: probs[lang])
    return Guess(best, probs[best] / total)


def same_language_probability(query: str, passage_languages: Iterable[str]) -> float | None:
    """The probability that ``query`` is in one of ``passage_languages`` rather than in the likeliest other one.

    Semantics::

        p = identifier's probabilities of query over its 139 languages
        same = sum(p[l] for l in passage_languages)
        other = max(p[l] for l in COMMON_LANGUAGES - passage_languages)
        return same / (same + other)

    Two hypotheses, not 139: a short English question spreads its probability over many
    languages ("capital of Japan": English 0.03), yet English is still far likelier than
    any one other common language, while a French question over English passages puts
    French far above English. On the benchmark's questions (``bench/rag.py``) against
    English passages this is below 0.5 for 0 % of the Debian FAQ's English questions and
    98 % of its French ones, and for 11 % of the English and 99.7 % of the French Wikipedia
    short descriptions.

    Args:
        query: The question.
        passage_languages: Languages of the passages it is matched against (``UNDETERMINED`` ignored).

    Returns:
        A probability in [0, 1], or ``None`` when it cannot be told (no letters in the query, or
        no identified passage language): the caller should then assume words can match.
    """
    langs = {lang for lang in passage_languages if lang != UNDETERMINED}
    probs = probabilities(query)
    if not langs or not probs:
        return None
    same = sum(probs.get(lang, 0.0) for lang in langs)
    other = max((p for lang, p in probs.items() if lang in COMMON_LANGUAGES and lang not in langs), default=0.0)
    if same + other <= 0.0:
        return None
    return same / (same + other)
