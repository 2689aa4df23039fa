"""rag.loaders on real files of each format: text, headings at their offsets, errors naming the file."""

from __future__ import annotations

import io
import zipfile

import pytest

from atelier.errors import InvalidInput
from atelier.rag.loaders import extract


def _at(extracted, heading) -> str:
    offset, _, title = heading
    return extracted.text[offset : offset + len(title)]


def test_plain_text_utf8_bom_crlf():
    e = extract("notes.TXT", "\ufeffPremière ligne\r\nSecond line\r\n".encode())
    assert e.text == "Première ligne\nSecond line\n"
    assert e.headings == [] and e.content_type == "text/plain"


def test_plain_text_latin1_fallback():
    assert extract("old.txt", "café crème".encode("cp1252")).text == "café crème"


def test_markdown_headings_from_a_commonmark_parser():
    source = "# Guide\n\nIntro.\n\n## Install\n\n```\n# not a heading\n```\n\nSetext\n------\n\nBody *x*.\n"
    e = extract("guide.md", source.encode())
    assert e.text == source  # the source itself: spans point into what the author wrote
    assert [(lvl, t) for _, lvl, t in e.headings] == [(1, "Guide"), (2, "Install"), (2, "Setext")]
    assert [e.text[o : o + 10] for o, _, _ in e.headings] == ["# Guide\n\nI", "## Install", "Setext\n---"]


def test_html_visible_text_blocks_and_headings():
    html = (
        b"<html><head><title>T</title><style>p{color:red}</style></head><body>"
        b"<h1>Guide</h1><p>Hello   <b>world</b>.\nSecond line.</p><script>evil()</script>"
        b"<h2>Disks</h2><ul><li>one</li><li>two</li></ul>"
        b"<table><tr><th>k</th><th>v</th></tr><tr><td>a</td><td>b</td></tr></table>"
        b"<pre>  code\n  here</pre>tail &amp; more<!-- hidden --></body></html>"
    )
    e = extract("page.html", html)
    assert e.text == "Guide\n\nHello world. Second line.\n\nDisks\n\none\n\ntwo\n\nk | v\n\na | b\n\n  code\n  here\n\ntail & more"
    assert [(lvl, t) for _, lvl, t in e.headings] == [(1, "Guide"), (2, "Disks")]
    assert [_at(e, h) for h in e.headings] == ["Guide", "Disks"]
    assert "evil" not in e.text and "color" not in e.text and "hidden" not in e.text


def test_pdf_pages_and_outline(pdf_bytes):
    e = extract("manual.pdf", pdf_bytes)
    assert e.content_type == "application/pdf"
    assert "Debian is a free operating system." in e.text
    assert "Partition your disks with fdisk" in e.text
    assert e.text.index("Debian") < e.text.index("Partition")
    assert [(lvl, t) for _, lvl, t in e.headings] == [(1, "Introduction"), (2, "Disks")]
    assert e.text[e.headings[1][0] :].startswith("Partition")  # title not on the page: its page start


def test_docx_paragraphs_headings_tables(docx_bytes):
    e = extract("manual.docx", docx_bytes)
    assert e.text == (
        "Manual\n\nSetup\n\nInstall the package with apt-get.\n\nNetwork\n\nEdit /etc/network/interfaces.\n\n"
        "port | 8000\nhost | localhost"
    )
    assert [(lvl, t) for _, lvl, t in e.headings] == [(1, "Manual"), (1, "Setup"), (2, "Network")]
    assert [_at(e, h) for h in e.headings] == ["Manual", "Setup", "Network"]


@pytest.mark.parametrize(
    ("name", "data", "needle"),
    [
        ("photo.exe", b"MZ", "unsupported file type '.exe'"),
        ("noext", b"hello", "unsupported file type '(none)'"),
        ("bad.pdf", b"%PDF-1.4 garbage", "bad.pdf: cannot read"),
        ("bad.docx", b"not a zip", "bad.docx: not a .docx file"),
        ("bin.txt", b"\x00\x01\x02", "bin.txt: this is a binary file"),
        ("empty.md", b"  \n\n", "empty.md: the document holds no text"),
    ],
)
def test_unsupported_or_corrupt_files_are_invalid_input_naming_the_file(name, data, needle):
    with pytest.raises(InvalidInput) as info:
        extract(name, data)
    assert needle in info.value.message and info.value.param == "file"


def test_a_zip_that_is_not_a_word_document():
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("hello.txt", "hi")
    with pytest.raises(InvalidInput, match="odd.docx: cannot read"):
        extract("odd.docx", buffer.getvalue())
