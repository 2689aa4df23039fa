"""Structure-aware chunking: sections by heading, then paragraphs, sentences, words.

Sizes are in tokens of the embedding model, through the ``count_tokens`` callable the
caller hands in (this module loads no tokenizer). Every chunk is an exact span of the
extracted text: ``chunk.text == extracted.text[chunk.start:chunk.end]``, and
``count_tokens(chunk.text) <= size`` for every chunk, checked on the chunk's own text (not
estimated from its pieces).

The algorithm, per section (the text from one heading to the next; a chunk never spans two
sections, and it carries the heading path above it, e.g. ``"Install > Disks"``):

1. Cut the section into *units*: paragraphs (split at blank lines); a paragraph over
   ``size`` is cut into sentences, a sentence over ``size`` into lines, then into runs of
   whole words, and a single word over ``size`` into runs of characters.
2. Pack consecutive units greedily into a chunk while its text stays within ``size``.
3. A chunk after the first of its section starts up to ``overlap`` tokens before the end of
   the previous one, at a word boundary (the overlap is dropped when it would push the
   chunk's first unit over ``size``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

from atelier.rag.indexing import Chunk
from atelier.rag.loaders import Extracted

Span = tuple[int, int]

_PARAGRAPH_BREAK = re.compile(r"\n[ \t\f\v]*\n\s*")
_END = "[.!?…。！？;:]"
_CLOSE = "[\"'”’»)\\]]"
_SENTENCE_END = re.compile(rf"(?:(?<={_END})|(?<={_END}{_CLOSE})|(?<={_END}{_CLOSE}{_CLOSE}))\s+(?=\S)")
"""Whitespace after a sentence's end mark and up to two closing quotes or brackets (kept with it)."""
_LINE_BREAK = re.compile(r"\n\s*")
_WORD_START = re.compile(r"(?<=\s)\S")


def chunk(extracted: Extracted, count_tokens: Callable[[str], int], size: int = 256, overlap: int = 32) -> list[Chunk]:
    """Cut a document's text into chunks of at most ``size`` tokens.

    Args:
        extracted: The document's text and headings (``rag.loaders.extract``).
        count_tokens: Tokens the embedding model sees for a text (special tokens and
            prefixes included, as the model counts them).
        size: Most tokens per chunk, as counted by ``count_tokens``.
        overlap: Most tokens a chunk repeats from the end of the previous chunk of its section.

    Returns:
        The chunks in document order, ``position`` 0, 1, 2, …

    Raises:
        ValueError: ``size`` leaves no room for text (``count_tokens("") >= size``), or
            ``overlap`` is negative or not below ``size``.
    """
    if overlap < 0 or overlap >= size:
        raise ValueError(f"overlap must be in [0, size): got overlap={overlap}, size={size}")
    base = count_tokens("")
    if base >= size:
        raise ValueError(f"size {size} leaves no room for text: an empty text already counts {base} tokens")
    cutter = _Cutter(extracted.text, count_tokens, size, overlap, base)
    chunks: list[Chunk] = []
    for start, end, heading in sections(extracted):
        for a, b in cutter.pack(start, end):
            chunks.append(Chunk(position=len(chunks), text=extracted.text[a:b], start=a, end=b, heading=heading))
    return chunks


def sections(extracted: Extracted) -> list[tuple[int, int, str]]:
    """The text cut at each heading: ``(start, end, heading path)`` in order.

    The path joins the titles of the enclosing headings with `` > ``: a level-2 heading
    under a level-1 one gives ``"Level 1 > Level 2"``. Text before the first heading has
    the path ``""``.
    """
    text = extracted.text
    out: list[tuple[int, int, str]] = []
    stack: list[tuple[int, str]] = []  # (level, title)
    cuts = [(o, lvl, t) for o, lvl, t in sorted(extracted.headings, key=lambda h: h[0]) if 0 <= o < len(text)]
    first = cuts[0][0] if cuts else len(text)
    if first > 0:
        out.append((0, first, ""))
    for i, (offset, level, title) in enumerate(cuts):
        while stack and stack[-1][0] >= level:
            stack.pop()
        stack.append((level, title))
        end = cuts[i + 1][0] if i + 1 < len(cuts) else len(text)
        if end > offset:
            out.append((offset, end, " > ".join(t for _, t in stack)))
    return out


class _Cutter:
    """Units and packing over one text, with a token budget."""

    def __init__(self, text: str, count_tokens: Callable[[str], int], size: int, overlap: int, base: int):
        self.text = text
        self.count = count_tokens
        self.size = size
        self.overlap = overlap
        self.base = base

    def cost(self, a: int, b: int) -> int:
        return self.count(self.text[a:b])

    # -- units ---------------------------------------------------------------------------

    def units(self, start: int, end: int) -> Iterator[Span]:
        """Spans within ``[start, end)`` that each fit ``size``, stripped of outer whitespace."""
        for a, b in _split(self.text, start, end, _PARAGRAPH_BREAK):
            yield from self._fit(a, b, 0)

    _LEVELS = (_SENTENCE_END, _LINE_BREAK)

    def _fit(self, a: int, b: int, level: int) -> Iterator[Span]:
        if self.cost(a, b) <= self.size:
            yield a, b
            return
        if level < len(self._LEVELS):
            parts = _split(self.text, a, b, self._LEVELS[level])
            if len(parts) > 1:
                for pa, pb in parts:
                    yield from self._fit(pa, pb, level + 1)
                return
            yield from self._fit(a, b, level + 1)
            return
        yield from self._windows(a, b)

    def _windows(self, a: int, b: int) -> Iterator[Span]:
        """Runs of whole words (or of characters, for one word over ``size``) that fit."""
        words = [a] + [m.start() for m in _WORD_START.finditer(self.text, a, b)] + [b]
        i = 0
        while i < len(words) - 1:
            lo = words[i]
            # the furthest word end j with cost(lo, words[j]) <= size
            fits = lambda k: self.cost(lo, _rstrip(self.text, lo, words[k])) <= self.size  # noqa: E731
            j = self._furthest(fits, i + 1, len(words) - 1)
            if j is None:  # one word over size: cut it into characters
                w_end = _rstrip(self.text, lo, words[i + 1])
                yield from self._char_windows(lo, w_end)
                i += 1
                continue
            yield lo, _rstrip(self.text, lo, words[j])
            i = j

    def _char_windows(self, a: int, b: int) -> Iterator[Span]:
        while a < b:
            k = self._furthest(lambda e: self.cost(a, e) <= self.size, a + 1, b)
            e = k if k is not None else a + 1
            yield a, e
            a = e

    @staticmethod
    def _furthest(ok: Callable[[int], bool], lo: int, hi: int) -> int | None:
        """The largest ``k`` in ``[lo, hi]`` with ``ok(k)``, assuming ``ok`` is monotone; None if none."""
        if not ok(lo):
            return None
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if ok(mid):
                lo = mid
            else:
                hi = mid - 1
        return lo

    # -- packing -------------------------------------------------------------------------

    def pack(self, start: int, end: int) -> Iterator[Span]:
        """Chunk spans of one section: units packed greedily, with overlap between them."""
        units = list(self.units(start, end))
        costs = [self.cost(a, b) - self.base for a, b in units]
        previous: Span | None = None
        i = 0
        while i < len(units):
            first = units[i][0]
            begin = self._overlap_start(previous, first) if previous is not None else first
            if begin != first and self.cost(begin, units[i][1]) > self.size:
                begin = first
            estimate = self.cost(begin, units[i][1]) - self.base
            j = i + 1
            while j < len(units) and estimate + costs[j] <= self.size - self.base:
                estimate += costs[j]
                j += 1
            while j > i + 1 and self.cost(begin, units[j - 1][1]) > self.size:
                j -= 1  # the estimate was short: the joined text counts more than its parts
            span = (begin, units[j - 1][1])
            yield span
            previous = span
            i = j

    def _overlap_start(self, previous: Span, next_start: int) -> int:
        """The earliest word start in ``previous`` whose tail up to ``previous``'s end fits
        ``overlap`` tokens; ``next_start`` (no overlap) if none does."""
        if self.overlap == 0:
            return next_start
        a, b = previous
        starts = [m.start() for m in _WORD_START.finditer(self.text, a + 1, b)]
        # the tail's cost shrinks as its start moves right: the first start that fits
        lo, hi = 0, len(starts)
        while lo < hi:
            mid = (lo + hi) // 2
            if self.cost(starts[mid], b) - self.base <= self.overlap:
                hi = mid
            else:
                lo = mid + 1
        return starts[lo] if lo < len(starts) else next_start


def _split(text: str, start: int, end: int, separator: re.Pattern[str]) -> list[Span]:
    """``[start, end)`` cut at every match of ``separator``, each part stripped of outer
    whitespace; empty parts are dropped."""
    parts: list[Span] = []
    a = start
    for m in separator.finditer(text, start, end):
        parts.append((a, m.start()))
        a = m.end()
    parts.append((a, end))
    out = []
    for pa, pb in parts:
        while pa < pb and text[pa].isspace():
            pa += 1
        pb = _rstrip(text, pa, pb)
        if pb > pa:
            out.append((pa, pb))
    return out


def _rstrip(text: str, a: int, b: int) -> int:
    while b > a and text[b - 1].isspace():
        b -= 1
    return b
