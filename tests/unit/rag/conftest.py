"""Fixtures of the RAG tests: small real documents made with the real libraries."""

from __future__ import annotations

import io

import pytest


@pytest.fixture(scope="session")
def pdf_bytes() -> bytes:
    """A two-page PDF with an outline (Introduction, Disks under it), written by fpdf2."""
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_font("helvetica", size=12)
    pdf.add_page()
    pdf.start_section("Introduction")
    pdf.multi_cell(0, 10, "Debian is a free operating system. It installs software with apt.")
    pdf.add_page()
    pdf.start_section("Disks", level=1)
    pdf.multi_cell(0, 10, "Partition your disks with fdisk before installing.")
    return bytes(pdf.output())


@pytest.fixture(scope="session")
def docx_bytes() -> bytes:
    """A Word document with a title, a heading, a paragraph and a table, written by python-docx."""
    import docx

    document = docx.Document()
    document.add_heading("Manual", 0)
    document.add_heading("Setup", 1)
    document.add_paragraph("Install the package with apt-get.")
    document.add_heading("Network", 2)
    document.add_paragraph("Edit /etc/network/interfaces.")
    table = document.add_table(rows=2, cols=2)
    for r, (k, v) in enumerate([("port", "8000"), ("host", "localhost")]):
        table.cell(r, 0).text = k
        table.cell(r, 1).text = v
    buffer = io.BytesIO()
    document.save(buffer)
    return buffer.getvalue()
