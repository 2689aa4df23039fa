"""Documents to plain text with their headings: txt, md, html, pdf and docx.

Each loader returns the document's text as the chunker and the citations will see it,
plus its headings as ``(char offset, level, title)``, the offset being where the heading
starts in that text. Parsing is done by well-kept libraries (markdown-it-py, Beautiful
Soup on the standard ``html.parser``, pypdf, python-docx); this module knows nothing about
where the bytes came from, tenants or storage.
"""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import PurePath

from atelier.errors import InvalidInput

Heading = tuple[int, int, str]
"""``(char offset in the text, level 1-6, title)``."""

CONTENT_TYPES: dict[str, str] = {
    ".txt": "text/plain",
    ".text": "text/plain",
    ".md": "text/markdown",
    ".markdown": "text/markdown",
    ".html": "text/html",
    ".htm": "text/html",
    ".pdf": "application/pdf",
    ".docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
}
"""The file suffixes ``extract`` reads, and the content type each is read as."""


@dataclass(frozen=True)
class Extracted:
    """A document's text, its headings and the content type it was read as."""

    text: str
    headings: list[Heading] = field(default_factory=list)
    content_type: str = "text/plain"


def extract(filename: str, data: bytes) -> Extracted:
    """The text and headings of a document, chosen by the suffix of ``filename``.

    Args:
        filename: The document's name; only its suffix (case-insensitive) is used.
        data: The file's bytes.

    Returns:
        The extracted text (newlines normalised to ``\\n``), its headings in order, and
        the content type.

    Raises:
        InvalidInput: unsupported suffix, a corrupt or encrypted file, or a document
            without any text (param ``file``; the message names the file).
    """
    suffix = PurePath(filename).suffix.lower()
    content_type = CONTENT_TYPES.get(suffix)
    if content_type is None:
        kinds = ", ".join(sorted({s for s in CONTENT_TYPES}))
        raise InvalidInput(
            f"{filename}: unsupported file type {suffix or '(none)'!r}; supported: {kinds}", param="file"
        )
    loader = _LOADERS[content_type]
    try:
        text, headings = loader(data)
    except InvalidInput as exc:
        raise InvalidInput(f"{filename}: {exc.message}", param="file") from exc
    except Exception as exc:  # noqa: BLE001 - parsers raise many kinds on corrupt input
        reason = f"{type(exc).__name__}: {exc}"
        raise InvalidInput(f"{filename}: cannot read this {suffix} file ({reason})", param="file") from exc
    if not text.strip():
        raise InvalidInput(f"{filename}: the document holds no text", param="file")
    return Extracted(text=text, headings=sorted(headings, key=lambda h: h[0]), content_type=content_type)


# -- plain text ---------------------------------------------------------------------------


def decode_text(data: bytes) -> str:
    """Bytes of a text file as a string with ``\\n`` newlines.

    UTF-8 (a BOM is dropped), UTF-16 with a BOM, else Windows-1252/Latin-1.

    Raises:
        InvalidInput: the bytes hold NUL characters outside UTF-16 (a binary file).
    """
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        text = data.decode("utf-16")
    elif b"\x00" in data:
        raise InvalidInput("this is a binary file, not text", param="file")
    else:
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            try:
                text = data.decode("cp1252")
            except UnicodeDecodeError:
                text = data.decode("latin-1")
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _load_text(data: bytes) -> tuple[str, list[Heading]]:
    return decode_text(data), []


# -- markdown -----------------------------------------------------------------------------


def _load_markdown(data: bytes) -> tuple[str, list[Heading]]:
    """The Markdown source as the text (so spans point into what the author wrote), with
    the ATX and setext headings found by a CommonMark parser (never ``#`` in code)."""
    from markdown_it import MarkdownIt

    text = decode_text(data)
    line_starts = [0] + [m.end() for m in re.finditer("\n", text)]
    tokens = MarkdownIt("commonmark").parse(text)
    headings: list[Heading] = []
    for i, token in enumerate(tokens):
        if token.type != "heading_open" or token.map is None:
            continue
        inline = tokens[i + 1]
        title = "".join(
            child.content for child in (inline.children or []) if child.type in ("text", "code_inline")
        ).strip() or inline.content.strip()
        offset = line_starts[token.map[0]] if token.map[0] < len(line_starts) else len(text)
        headings.append((offset, int(token.tag[1]), title))
    return text, headings


# -- html ---------------------------------------------------------------------------------

_SKIP = {"script", "style", "noscript", "template", "head", "svg", "math", "iframe", "object", "button", "select"}
_BLOCKS = {
    "address", "article", "aside", "blockquote", "dd", "details", "dialog", "div", "dl", "dt", "fieldset",
    "figcaption", "figure", "footer", "form", "header", "hr", "li", "main", "nav", "ol", "p", "pre", "section",
    "summary", "table", "tbody", "thead", "tfoot", "tr", "ul", "caption",
}
_HEADINGS = {"h1": 1, "h2": 2, "h3": 3, "h4": 4, "h5": 5, "h6": 6}


class _TextBuilder:
    """Appends inline text with collapsed whitespace and paragraph breaks between blocks."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.length = 0
        self.headings: list[Heading] = []
        self._pending_break = False

    def _put(self, s: str) -> None:
        self.parts.append(s)
        self.length += len(s)

    def _last(self) -> str:
        return self.parts[-1][-1] if self.parts and self.parts[-1] else "\n"

    def block_break(self) -> None:
        if self.length:
            self._pending_break = True

    def line_break(self) -> None:
        if self.length and self._last() != "\n":
            self._put("\n")

    def flush(self) -> None:
        """Write a pending paragraph break (trailing spaces dropped)."""
        if not self._pending_break:
            return
        while self.parts and self.parts[-1].endswith(" "):
            self.parts[-1] = self.parts[-1][:-1]
            self.length -= 1
        self._put("\n\n" if self._last() != "\n" else "\n")
        self._pending_break = False

    def text(self, s: str, *, pre: bool = False) -> None:
        if not pre:
            s = re.sub(r"\s+", " ", s)
            if not s.strip() and (self._pending_break or self._last() in " \n"):
                return
        if self._pending_break:
            self.flush()
            if not pre:
                s = s.lstrip()
        elif not pre and self._last() in " \n":
            s = s.lstrip()
        if s:
            self._put(s)

    def result(self) -> str:
        return "".join(self.parts).strip()


def _load_html(data: bytes) -> tuple[str, list[Heading]]:
    """Visible text of an HTML page: blocks separated by blank lines, ``h1``–``h6`` as headings."""
    from bs4 import BeautifulSoup, Comment, NavigableString, Tag

    soup = BeautifulSoup(data, "html.parser")
    out = _TextBuilder()

    def walk(node: Tag, pre: bool) -> None:
        for child in node.children:
            if isinstance(child, Comment):
                continue
            if isinstance(child, NavigableString):
                if type(child) is NavigableString:  # not a CData/Doctype/ProcessingInstruction
                    out.text(str(child), pre=pre)
                continue
            if not isinstance(child, Tag):
                continue
            name = (child.name or "").lower()
            if name in _SKIP:
                continue
            if name == "br":
                out.line_break()
                continue
            if name in _HEADINGS:
                out.block_break()
                title = re.sub(r"\s+", " ", child.get_text(" ")).strip()
                if title:
                    out.flush()
                    out.headings.append((out.length, _HEADINGS[name], title))
                    out.text(title)
                out.block_break()
                continue
            block = name in _BLOCKS
            if block:
                out.block_break()
            if name in ("td", "th") and child.find_previous_sibling(("td", "th")) is not None:
                out.text(" | ")
            walk(child, pre or name in ("pre", "textarea"))
            if block:
                out.block_break()

    walk(soup.body if soup.body is not None else soup, False)
    text = out.result()
    return text, [h for h in out.headings if h[0] < len(text)]


# -- pdf ----------------------------------------------------------------------------------


def _load_pdf(data: bytes) -> tuple[str, list[Heading]]:
    """Text of every page (pages separated by a blank line); the outline (bookmarks) as headings,
    placed where the title appears on its page, else at the page's start."""
    from pypdf import PdfReader

    reader = PdfReader(io.BytesIO(data))
    if reader.is_encrypted and not reader.decrypt(""):
        raise InvalidInput("the PDF is encrypted with a password", param="file")
    pages: list[str] = []
    starts: list[int] = []
    length = 0
    for page in reader.pages:
        page_text = (page.extract_text() or "").replace("\r\n", "\n").replace("\r", "\n").strip()
        if pages:
            length += 2  # the "\n\n" joining pages
        starts.append(length)
        pages.append(page_text)
        length += len(page_text)
    text = "\n\n".join(pages)
    headings: list[Heading] = []

    def visit(items: list, level: int) -> None:
        for item in items:
            if isinstance(item, list):
                visit(item, level + 1)
                continue
            try:
                page_index = reader.get_destination_page_number(item)
            except Exception:  # noqa: BLE001 - a broken bookmark is skipped, not fatal
                continue
            title = str(getattr(item, "title", "") or "").strip()
            if not title or page_index is None or not 0 <= page_index < len(pages):
                continue
            found = pages[page_index].find(title)
            offset = starts[page_index] + (found if found >= 0 else 0)
            headings.append((offset, min(level, 6), title))

    try:
        visit(list(reader.outline), 1)
    except Exception:  # noqa: BLE001 - an unreadable outline leaves the text usable
        headings = []
    return text, headings


# -- docx ---------------------------------------------------------------------------------

_HEADING_STYLE = re.compile(r"^(?:heading|titre|überschrift)\s*(\d)$", re.IGNORECASE)


def _load_docx(data: bytes) -> tuple[str, list[Heading]]:
    """Paragraphs and tables of a Word document in body order (blank line between blocks;
    table cells joined by `` | ``); paragraphs styled ``Title`` or ``Heading N`` are headings."""
    import docx
    from docx.table import Table
    from docx.text.paragraph import Paragraph

    if not zipfile.is_zipfile(io.BytesIO(data)):
        raise InvalidInput("not a .docx file (no ZIP container)", param="file")
    document = docx.Document(io.BytesIO(data))
    blocks: list[str] = []
    headings: list[Heading] = []
    length = 0

    def add(block: str, level: int = 0) -> None:
        nonlocal length
        block = block.strip()
        if not block:
            return
        if blocks:
            length += 2
        if level:
            headings.append((length, level, re.sub(r"\s+", " ", block)))
        blocks.append(block)
        length += len(block)

    for item in document.iter_inner_content():
        if isinstance(item, Paragraph):
            style = (item.style.name if item.style is not None else "") or ""
            match = _HEADING_STYLE.match(style.strip())
            level = 1 if style.strip().lower() == "title" else (int(match.group(1)) if match else 0)
            add(item.text, min(level, 6))
        elif isinstance(item, Table):
            rows = []
            for row in item.rows:
                cells: list[str] = []
                for cell in row.cells:
                    value = cell.text.strip()
                    if not cells or cells[-1] != value:  # merged cells repeat their text
                        cells.append(value)
                rows.append(" | ".join(cells))
            add("\n".join(r for r in rows if r.strip(" |")))
    return "\n\n".join(blocks), headings


_LOADERS: dict[str, Callable[[bytes], tuple[str, list[Heading]]]] = {
    "text/plain": _load_text,
    "text/markdown": _load_markdown,
    "text/html": _load_html,
    "application/pdf": _load_pdf,
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": _load_docx,
}
