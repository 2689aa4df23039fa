"""``/v1/files``: uploads as OpenAI's API takes them, sealed in the caller's tenancy.

``POST /v1/files`` takes ``multipart/form-data`` exactly as the official clients send it
(``client.files.create(file=open("train.jsonl", "rb"), purpose="fine-tune")``): the part
``file``, the field ``purpose`` (``fine-tune`` or ``knowledge-base``) and, Atelier's own,
an optional ``compartment`` (id or path such as ``eng:ml``; default the tenancy root). The
body is read into memory with a running size check (``max_file_bytes``, 413 above; the
body-size middleware gives this route that limit plus ``api.uploads.MULTIPART_OVERHEAD``) and
sealed in one ``put``: the plaintext never reaches the disk. Listing, retrieval, content
and deletion answer OpenAI's shapes. Policies decide on resource type ``files``, through the
request's guard (``api/authz.py``): a file the caller may not even inspect answers 404
exactly like a missing one, and the list hides it.
"""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import quote

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from atelier.api.authz import Guard
from atelier.api.deps import GuardDep, ServicesDep
from atelier.api.envelopes import Deleted, unix
from atelier.api.uploads import Form, multipart_body, read_form
from atelier.errors import InvalidInput
from atelier.store.files import PURPOSES, FileStore, check_purpose, clean_filename
from atelier.store.tables import File

router = APIRouter(tags=["files"])

TYPE = "files"
FILE_FIELD = "file"
MAX_COMPARTMENT_REF = 1000

UPLOAD_BODY = multipart_body(FILE_FIELD, "The file's bytes.", {
    "purpose": {"type": "string", "enum": list(PURPOSES),
                "description": "`fine-tune` (JSONL training data) or `knowledge-base` (documents)."},
    "compartment": {"type": "string", "maxLength": MAX_COMPARTMENT_REF,
                    "description": "Compartment id (`cmp_…`) or path (`eng:ml`); default the tenancy root."},
}, required=("purpose",))  # fmt: skip


class FileObject(BaseModel):
    """A file, as OpenAI's API shows one."""

    id: str = Field(description="The file's id (`file_…`).")
    object: Literal["file"] = Field("file", description="Always `file`.")
    bytes: int = Field(description="Size of the file, in bytes.")
    created_at: int = Field(description="When it was uploaded (Unix seconds).")
    filename: str = Field(description="The name it was uploaded with (last path component).")
    purpose: str = Field(description="`fine-tune` or `knowledge-base`.")
    status: Literal["processed"] = Field("processed", description="Always `processed`: stored and readable.")
    status_details: str | None = Field(None, description="Always null (kept for OpenAI's clients).")
    compartment_id: str | None = Field(None, description="The compartment it lives in; null for the tenancy root.")


class FileList(BaseModel):
    """A page of files, as OpenAI's API lists them."""

    object: Literal["list"] = Field("list", description="Always `list`.")
    data: list[FileObject] = Field(description="The files, in the requested order.")
    first_id: str | None = Field(None, description="Id of the first file of the page.")
    last_id: str | None = Field(None, description="Id of the last file of the page (pass it as `after`).")
    has_more: bool = Field(description="Whether more files follow this page.")


def _out(row: File) -> FileObject:
    return FileObject(
        id=row.id, bytes=row.bytes, created_at=unix(row.created_at), filename=row.filename,
        purpose=row.purpose, compartment_id=row.compartment_id,
    )  # fmt: skip


def _store_upload(guard: Guard, files: FileStore, form: Form) -> FileObject:
    """Check the form and the caller's right to create there, then seal and record the file."""
    purpose = check_purpose(form.fields.get("purpose"))
    if form.data is None:
        raise InvalidInput(f"a file is required: send it as the multipart part {FILE_FIELD!r}", param=FILE_FIELD)
    filename = clean_filename(form.filename)
    ref = (form.fields.get("compartment") or "").strip()
    if len(ref) > MAX_COMPARTMENT_REF:
        raise InvalidInput(f"compartment must be at most {MAX_COMPARTMENT_REF} characters", param="compartment")
    compartment_id = guard.creation_compartment(TYPE, ref or None, filename)
    row = files.create_file(
        guard.principal, filename=filename, purpose=purpose, data=form.data, compartment_id=compartment_id
    )
    return _out(row)


@router.post("/files", response_model=FileObject, summary="Upload a file", openapi_extra=UPLOAD_BODY)
async def create_file(request: Request, services: ServicesDep, guard: GuardDep) -> FileObject:
    """Upload a file (multipart: `file`, `purpose`, optional `compartment`); stored sealed in your tenancy."""
    form = await read_form(request, file_field=FILE_FIELD, max_file_bytes=services.settings.max_file_bytes)
    return await run_in_threadpool(_store_upload, guard, services.files, form)


@router.get("/files", response_model=FileList, summary="List files")
def list_files(
    services: ServicesDep,
    guard: GuardDep,
    purpose: Annotated[str | None, Query(max_length=32, description="Only files of this purpose.")] = None,
    limit: Annotated[int, Query(ge=1, le=10_000, description="Most files in the page.")] = 10_000,
    order: Annotated[Literal["asc", "desc"], Query(description="By upload time; newest first by default.")] = "desc",
    after: Annotated[
        str | None, Query(max_length=100, description="A file id: the page starts after it (cursor).")
    ] = None,
) -> FileList:
    """The files you may inspect, newest first unless `order=asc`."""
    if purpose is not None:
        check_purpose(purpose)
    rows = guard.visible(services.files.list_files(guard.principal, purpose=purpose))
    if order == "desc":
        rows.reverse()
    if after is not None:
        ids = [row.id for row in rows]
        if after not in ids:
            raise InvalidInput(f"file {after!r} is not in this listing", param="after")
        rows = rows[ids.index(after) + 1 :]
    page = rows[:limit]
    return FileList(
        data=[_out(row) for row in page],
        first_id=page[0].id if page else None,
        last_id=page[-1].id if page else None,
        has_more=len(rows) > limit,
    )


@router.get("/files/{file_id}", response_model=FileObject, summary="Retrieve a file")
def retrieve_file(file_id: str, guard: GuardDep) -> FileObject:
    """One file's metadata."""
    return _out(guard.load(TYPE, file_id, "get"))


@router.get(
    "/files/{file_id}/content",
    response_class=Response,
    responses={200: {"content": {"application/octet-stream": {}}, "description": "The file's bytes."}},
    summary="Retrieve a file's content",
)
def file_content(file_id: str, services: ServicesDep, guard: GuardDep) -> Response:
    """The file's bytes, as uploaded."""
    row = guard.load(TYPE, file_id, "get")
    data = services.files.file_content(guard.principal, row.id)
    disposition = f"attachment; filename*=UTF-8''{quote(row.filename, safe='')}"
    return Response(data, media_type="application/octet-stream", headers={"Content-Disposition": disposition})


@router.delete("/files/{file_id}", response_model=Deleted, summary="Delete a file")
def delete_file(file_id: str, services: ServicesDep, guard: GuardDep) -> Deleted:
    """Delete a file and its sealed bytes."""
    row = guard.load(TYPE, file_id, "delete")
    services.files.delete_file(guard.principal, row.id)
    return Deleted(id=row.id, object="file")
