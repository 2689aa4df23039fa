"""Reading a ``multipart/form-data`` upload into memory, with a running size check.

Starlette's own form parser spools any file over 1 MB to a temporary file on disk: an
upload's plaintext would touch the disk before it is sealed. This reader streams the body
through ``python-multipart`` and keeps the one file part in memory, counting its bytes as
they arrive: past ``max_file_bytes`` it stops and raises ``TooLarge``, so it never holds
more than the limit. Asked for several files (``max_files``), it collects each file part
in order instead, and one over the limit is marked ``too_large`` and its bytes dropped as
they arrive while the parts after it are read on. Other parts are short text fields.
Knows nothing about what the files are for or where they go.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass, field

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from atelier.errors import InvalidInput, TooLarge
from atelier.settings import Settings

MAX_FIELD_BYTES = 64 * 1024
"""Largest text field beside the file."""
MAX_PARTS = 32
"""Most parts in one form (the file and its fields); a form read with ``max_files`` may have that many more."""
MULTIPART_OVERHEAD = 64 * 1024
"""Room for the form around the file (boundaries, headers, short fields) in an upload's body limit."""


def multipart_body(file_field: str, file_description: str, fields: dict[str, dict], required: tuple[str, ...] = (),
                   max_files: int | None = None) -> dict:
    """An upload route's form, described for the OpenAPI document (the route reads it itself, streaming).

    Args:
        file_field: The name of the file part.
        file_description: What the file is.
        fields: The text fields beside it: name → JSON schema.
        required: Text fields that must be sent (the file always must).
        max_files: None: one file; a number: 1 to that many parts named ``file_field``.
    """
    binary = {"type": "string", "format": "binary"}
    described = {**binary, "description": file_description} if max_files is None else {
        "type": "array", "items": binary, "minItems": 1, "maxItems": max_files, "description": file_description}
    properties = {file_field: described, **fields}
    schema = {"type": "object", "required": [file_field, *required], "properties": properties}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}}


def upload_limit(settings: Settings, files: int = 1) -> int:
    """The body limit of an upload route: ``files`` of the largest file plus the form around them.

    Args:
        settings: Service settings (``max_file_bytes``, and ``max_body_bytes`` as a floor).
        files: How many of the largest file one body may hold (a batch route's own bound).
    """
    return max(settings.max_body_bytes, files * settings.max_file_bytes + MULTIPART_OVERHEAD)


@dataclass
class FormFile:
    """One file part of a form read with ``max_files`` (see :func:`read_form`)."""

    filename: str | None
    """The part's ``filename`` as sent (None: no name given)."""
    data: bytes
    """Its bytes (empty when ``too_large``)."""
    too_large: bool = False
    """It was over ``max_file_bytes``: its bytes were dropped as they arrived."""


@dataclass
class Form:
    """A parsed form: its text fields and its one file."""

    fields: dict[str, str] = field(default_factory=dict)
    """Text fields by name (the last one wins when a name repeats)."""
    filename: str | None = None
    """The file part's ``filename`` as sent (None: no file part, or no name given)."""
    data: bytes | None = None
    """The file part's bytes (None: no file part, or a form read with ``max_files``)."""
    files: list[FormFile] = field(default_factory=list)
    """The file parts in the order sent (a form read with ``max_files`` only)."""


@dataclass
class _Part:
    name: str = ""
    filename: str | None = None
    is_file: bool = False
    too_large: bool = False
    data: bytearray = field(default_factory=bytearray)


class _Reader:
    """``python-multipart`` callbacks collecting one form (see :func:`read_form`)."""

    def __init__(self, file_field: str, max_file_bytes: int, charset: str, max_files: int | None = None):
        self.file_field = file_field
        self.max_file_bytes = max_file_bytes
        self.charset = charset
        self.max_files = max_files
        self.max_parts = MAX_PARTS + (max_files or 0)
        self.form = Form()
        self.part = _Part()
        self.parts = 0
        self.files = 0
        self.header_name = bytearray()
        self.header_value = bytearray()
        self.disposition = b""
        self.ended = False

    def on_part_begin(self) -> None:
        self.parts += 1
        if self.parts > self.max_parts:
            raise InvalidInput(f"a form may have at most {self.max_parts} parts", param=self.file_field)
        self.part = _Part()
        self.disposition = b""

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def on_header_end(self) -> None:
        if bytes(self.header_name).lower() == b"content-disposition":
            self.disposition = bytes(self.header_value)
        self.header_name.clear()
        self.header_value.clear()

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self.disposition)
        if b"name" not in options:
            raise InvalidInput("each part of the form needs a Content-Disposition name", param=self.file_field)
        self.part.name = self._decode(options[b"name"])
        self.part.is_file = self.part.name == self.file_field
        if b"filename" in options:
            if not self.part.is_file:
                raise InvalidInput(
                    f"unexpected file part {self.part.name!r}: send the file as the part {self.file_field!r}",
                    param=self.part.name,
                )
            self.part.filename = self._decode(options[b"filename"])
        if not self.part.is_file:
            return
        self.files += 1
        if self.max_files is None and self.files > 1:
            raise InvalidInput(f"send one file per request (part {self.file_field!r})", param=self.file_field)
        if self.max_files is not None and self.files > self.max_files:
            raise InvalidInput(f"send at most {self.max_files} files per request (parts {self.file_field!r})",
                               param=self.file_field)

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.part.too_large:
            return  # a file of a batch already over the limit: its remaining bytes are dropped
        limit = self.max_file_bytes if self.part.is_file else MAX_FIELD_BYTES
        if len(self.part.data) + (end - start) > limit:
            if not self.part.is_file:
                raise InvalidInput(f"form field {self.part.name!r} is longer than {limit} bytes",
                                   param=self.part.name)
            if self.max_files is None:
                raise TooLarge(f"the file is larger than the limit of {limit} bytes", param=self.file_field)
            self.part.too_large = True
            self.part.data = bytearray()
            return
        self.part.data += data[start:end]

    def on_part_end(self) -> None:
        if self.part.is_file and self.max_files is not None:
            self.form.files.append(FormFile(self.part.filename, bytes(self.part.data), self.part.too_large))
            self.part.data = bytearray()
        elif self.part.is_file:
            self.form.filename = self.part.filename
            self.form.data = bytes(self.part.data)
            self.part.data = bytearray()  # do not keep two copies of the file
        else:
            self.form.fields[self.part.name] = self._decode(bytes(self.part.data))

    def on_end(self) -> None:
        self.ended = True

    def _decode(self, raw: bytes) -> str:
        try:
            return raw.decode(self.charset)
        except UnicodeDecodeError:
            return raw.decode("latin-1")


async def read_form(request: Request, *, file_field: str, max_file_bytes: int,
                    max_files: int | None = None) -> Form:
    """Read the request's ``multipart/form-data`` body.

    Args:
        request: The request; its body is consumed.
        file_field: The name of the part(s) holding the file(s) (``file`` for OpenAI's clients).
        max_file_bytes: The largest accepted file.
        max_files: None: one file, in ``data``. A number: up to that many parts named
            ``file_field``, each in ``files`` in the order sent; one over ``max_file_bytes`` is
            kept there with ``too_large`` set and no bytes instead of failing the form.

    Returns:
        The text fields and the file (``data`` None when the form had no file part), or the
        files (``files`` empty when it had none).

    Raises:
        InvalidInput: Not ``multipart/form-data``, a malformed or cut-off body, a second file
            (more than ``max_files`` with it), a file under another name, or a text field over
            64 KiB (``param`` names the part).
        TooLarge: The file is over ``max_file_bytes`` (``param=file_field``; without ``max_files``).
    """
    content_type, params = parse_options_header(request.headers.get("content-type"))
    if content_type != b"multipart/form-data" or not params.get(b"boundary"):
        raise InvalidInput(
            f"send the upload as multipart/form-data, the file in the part {file_field!r}", param=file_field
        )
    charset = params.get(b"charset", b"utf-8").decode("latin-1")
    try:
        charset = codecs.lookup(charset).name
    except LookupError:
        charset = "utf-8"
    reader = _Reader(file_field, max_file_bytes, charset, max_files)
    callbacks = {
        name: getattr(reader, name)
        for name in (
            "on_part_begin", "on_part_data", "on_part_end", "on_header_field", "on_header_value",
            "on_header_end", "on_headers_finished", "on_end",
        )
    }  # fmt: skip
    parser = MultipartParser(params[b"boundary"], callbacks)
    try:
        async for chunk in request.stream():
            parser.write(chunk)
        parser.finalize()
    except MultipartParseError as exc:
        raise InvalidInput(f"the multipart body is malformed: {exc}", param=file_field) from None
    if not reader.ended:  # a cut-off body must not pass for a shorter file
        raise InvalidInput("the multipart body ended before its closing boundary", param=file_field)
    return reader.form
