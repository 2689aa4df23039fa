"""``/v1/knowledge-bases/{id}/documents``: upload, list, get and delete a knowledge base's documents.

``POST`` takes ``multipart/form-data``: the part ``file`` (txt, md, html, pdf or docx) and
an optional ``tags`` field (a JSON list or comma-separated). The body is read into memory
with a running size check (``max_file_bytes``, 413 above; ``api/uploads.py``), sealed in
the object store, and a ``kb-ingest`` job is queued; the answer is the document, ``201``
when it is new and ``200`` when the same bytes were already there (nothing is done then).
Its ``state`` goes ``pending`` → ``ingesting`` → ``ready`` (or ``failed`` with ``error``),
with ``progress`` in chunks while it is ingested.

``POST .../documents/batch`` takes up to :data:`MAX_BATCH_FILES` parts ``files`` (and
``tags``, for all of them) and handles each like the single upload, in the order sent: a
file that is empty, of an unsupported type or over ``max_file_bytes`` is reported in its
entry of the answer and the others go through.

Policies decide on the knowledge base (resource type ``knowledge-bases``): listing and
reading documents need ``read`` (operation ``get``), uploading and deleting need ``use``
(operation ``update``). The knowledge base is checked before the body is read, so a
foreign or invisible one answers 404 without its upload being looked at.
"""

from __future__ import annotations

import json
from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from atelier.api.deps import GuardDep, ServicesDep
from atelier.api.envelopes import Deleted, unix
from atelier.api.uploads import FormFile, multipart_body, read_form
from atelier.cloud.knowledge_bases import KnowledgeBaseService
from atelier.errors import InvalidInput, TooLarge
from atelier.principal import Principal
from atelier.store.knowledge_bases import clean_tags
from atelier.store.tables import KbDocument

router = APIRouter(tags=["knowledge-bases"])

KNOWLEDGE_BASES = "knowledge-bases"

FILE_FIELD = "file"
FILES_FIELD = "files"
MAX_BATCH_FILES = 100
"""Most files in one batch upload."""
BATCH_BODY_FILES = 4
"""A batch upload's body may be as large as this many files of ``max_file_bytes`` (plus the form)."""

TAGS_FIELD = {"tags": {"type": "string", "maxLength": 4096,
                       "description": 'Tags to filter searches on: a JSON list (["hr", "2024"]) or "hr,2024".'}}
UPLOAD_BODY = multipart_body(FILE_FIELD, "The document: .txt, .md, .html, .pdf or .docx.", TAGS_FIELD)
BATCH_BODY = multipart_body(FILES_FIELD, "The documents: .txt, .md, .html, .pdf or .docx, one part each.",
                            TAGS_FIELD, max_files=MAX_BATCH_FILES)


class Progress(BaseModel):
    chunks_done: int
    chunks_total: int


class DocumentOut(BaseModel):
    """A document of a knowledge base."""

    id: str = Field(description="`doc_…`.")
    object: Literal["knowledge_base.document"] = "knowledge_base.document"
    knowledge_base_id: str
    filename: str
    content_type: str
    bytes: int
    sha256: str = Field(description="SHA-256 of the bytes: the same bytes are never ingested twice.")
    tags: list[str]
    version: int = Field(description="1, then +1 for each upload of changed bytes under the same file name.")
    replaces_id: str | None = Field(None, description="The version it replaces once ready.")
    state: Literal["pending", "ingesting", "ready", "failed"]
    error: str | None = Field(None, description="Why ingestion failed.")
    chunk_count: int = Field(description="Chunks once ready.")
    progress: Progress | None = Field(None, description="Chunks embedded so far, while ingesting.")
    job_id: str | None = Field(None, description="The ingestion job.")
    created_at: int
    ingested_at: int | None = None


class DocumentList(BaseModel):
    object: Literal["list"] = "list"
    data: list[DocumentOut]


class BatchError(BaseModel):
    """Why one file of a batch was refused: the single upload's error, its ``param`` ``files`` for the file."""

    message: str
    code: str | None = None
    param: str | None = None


class BatchEntry(BaseModel):
    """What became of one file of a batch upload."""

    filename: str | None = Field(description="The part's file name as sent.")
    status: Literal["created", "unchanged", "failed"] = Field(
        description="`unchanged`: the same bytes were already there; `failed`: see `error`.")
    document: DocumentOut | None = Field(None, description="The document (not for a failed file).")
    error: BatchError | None = Field(None, description="Why the file was refused (a failed file only).")


class BatchUpload(BaseModel):
    """The files of a batch upload, in the order sent."""

    object: Literal["list"] = "list"
    data: list[BatchEntry]
    uploaded: int = Field(description="Files created or unchanged.")
    failed: int = Field(description="Files refused.")


def document_out(service: KnowledgeBaseService, principal: Principal, row: KbDocument) -> DocumentOut:
    """The API object of a document row (with its progress while unfinished)."""
    progress = None
    if row.state in ("pending", "ingesting"):
        found = service.progress(principal, row)
        progress = Progress(chunks_done=found[0], chunks_total=found[1]) if found else None
    return DocumentOut(
        id=row.id, knowledge_base_id=row.knowledge_base_id, filename=row.filename, content_type=row.content_type,
        bytes=row.bytes, sha256=row.sha256, tags=list(row.tags or []), version=row.version,
        replaces_id=row.replaces_id, state=row.state, error=row.error, chunk_count=row.chunk_count,
        progress=progress, job_id=row.job_id, created_at=unix(row.created_at), ingested_at=unix(row.ingested_at),
    )  # fmt: skip


def parse_tags(raw: str | None) -> list[str]:
    """Tags from the form field: a JSON list of strings, or comma-separated.

    Raises:
        InvalidInput: A JSON value that is not a list of strings (``param="tags"``).
    """
    raw = (raw or "").strip()
    if not raw:
        return []
    if raw.startswith("["):
        try:
            value = json.loads(raw)
        except ValueError:
            raise InvalidInput("tags must be a JSON list of strings or comma-separated", param="tags") from None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise InvalidInput("tags must be a JSON list of strings", param="tags")
        return value
    return [part for part in raw.split(",") if part.strip()]


@router.post("/knowledge-bases/{knowledge_base_id}/documents", response_model=DocumentOut, status_code=201,
             summary="Upload a document", openapi_extra=UPLOAD_BODY,
             responses={200: {"model": DocumentOut, "description": "The same bytes were already there."}})
async def upload_document(knowledge_base_id: str, request: Request, services: ServicesDep, guard: GuardDep):
    """Upload a document (multipart: `file`, optional `tags`); it is stored sealed and ingested by a job."""
    kb = await run_in_threadpool(guard.load, KNOWLEDGE_BASES, knowledge_base_id, "update")
    form = await read_form(request, file_field=FILE_FIELD, max_file_bytes=services.settings.max_file_bytes)
    if form.data is None:
        raise InvalidInput(f"a file is required: send it as the multipart part {FILE_FIELD!r}", param=FILE_FIELD)
    tags = parse_tags(form.fields.get("tags"))
    service = services.knowledge_bases
    upload = await run_in_threadpool(service.add_document, guard.principal, kb.id, filename=form.filename,
                                     data=form.data, tags=tags)
    body = document_out(service, guard.principal, upload.document)
    return JSONResponse(body.model_dump(mode="json"), status_code=201 if upload.created else 200)


@router.post("/knowledge-bases/{knowledge_base_id}/documents/batch", response_model=BatchUpload,
             summary="Upload several documents", openapi_extra=BATCH_BODY)
async def upload_documents(knowledge_base_id: str, request: Request, services: ServicesDep,
                           guard: GuardDep) -> BatchUpload:
    """Upload up to 100 documents at once (multipart: parts `files`, optional `tags` for all of them).

    Each file is handled like a single upload, in the order sent. One that is empty, of an
    unsupported type or over `max_file_bytes` is a `failed` entry with its error (its bytes
    are dropped as they arrive) and the others go through: the answer is `200` whatever
    became of each file. The whole request is refused (400, `param` `files`) when it is
    not multipart, is malformed, or holds no file or more than 100; a bad `tags` is refused
    (400, `param` `tags`) before any file is stored. The body may hold at most four files
    of `max_file_bytes` in all (4 × `max_file_bytes` plus 64 KiB of form; never less than
    `max_body_bytes`): larger is 413 for the whole request.
    """
    kb = await run_in_threadpool(guard.load, KNOWLEDGE_BASES, knowledge_base_id, "update")
    limit = services.settings.max_file_bytes
    form = await read_form(request, file_field=FILES_FIELD, max_file_bytes=limit, max_files=MAX_BATCH_FILES)
    if not form.files:
        raise InvalidInput(f"no file: send each as a multipart part {FILES_FIELD!r}", param=FILES_FIELD)
    tags = clean_tags(parse_tags(form.fields.get("tags")))
    entries: list[BatchEntry] = []
    while form.files:
        sent = form.files.pop(0)  # its bytes go once it is stored
        entries.append(await _add_one(services.knowledge_bases, guard.principal, kb.id, sent, tags, limit))
    failed = sum(entry.status == "failed" for entry in entries)
    return BatchUpload(data=entries, uploaded=len(entries) - failed, failed=failed)


async def _add_one(service: KnowledgeBaseService, principal: Principal, kb_id: str, sent: FormFile,
                   tags: list[str], limit: int) -> BatchEntry:
    """One file of a batch: its document, or its refusal (an ``InvalidInput`` of the file's own)."""
    try:
        if sent.too_large:
            name = f"{sent.filename}: " if sent.filename else ""
            raise TooLarge(f"{name}the file is larger than the limit of {limit} bytes")
        upload = await run_in_threadpool(service.add_document, principal, kb_id, filename=sent.filename,
                                         data=sent.data, tags=tags)
    except InvalidInput as exc:
        param = FILES_FIELD if exc.param in (None, FILE_FIELD) else exc.param
        return BatchEntry(filename=sent.filename, status="failed",
                          error=BatchError(message=exc.message, code=exc.code, param=param))
    document = await run_in_threadpool(document_out, service, principal, upload.document)
    return BatchEntry(filename=sent.filename, status="created" if upload.created else "unchanged",
                      document=document)


@router.get("/knowledge-bases/{knowledge_base_id}/documents", response_model=DocumentList,
            summary="List a knowledge base's documents")
def list_documents(knowledge_base_id: str, services: ServicesDep, guard: GuardDep) -> DocumentList:
    """The documents of the knowledge base, oldest first, with their ingestion state."""
    kb = guard.load(KNOWLEDGE_BASES, knowledge_base_id, "get")
    service = services.knowledge_bases
    rows = service.list_documents(guard.principal, kb.id)
    return DocumentList(data=[document_out(service, guard.principal, row) for row in rows])


@router.get("/knowledge-bases/{knowledge_base_id}/documents/{document_id}", response_model=DocumentOut,
            summary="Retrieve a document")
def retrieve_document(knowledge_base_id: str, document_id: str, services: ServicesDep,
                      guard: GuardDep) -> DocumentOut:
    """One document, with its ingestion state and progress."""
    kb = guard.load(KNOWLEDGE_BASES, knowledge_base_id, "get")
    service = services.knowledge_bases
    return document_out(service, guard.principal, service.get_document(guard.principal, kb.id, document_id))


@router.delete("/knowledge-bases/{knowledge_base_id}/documents/{document_id}", response_model=Deleted,
               summary="Delete a document")
def delete_document(knowledge_base_id: str, document_id: str, services: ServicesDep, guard: GuardDep) -> Deleted:
    """Delete the document, its chunks, its vectors and its stored bytes."""
    kb = guard.load(KNOWLEDGE_BASES, knowledge_base_id, "update")
    row = services.knowledge_bases.delete_document(guard.principal, kb.id, document_id)
    return Deleted(id=row.id, object="knowledge_base.document")
