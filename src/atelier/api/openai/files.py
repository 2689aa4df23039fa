"""``/v1/files``: uploads as OpenAI's API takes them, sealed in the caller's tenancy.

``POST /v1/files`` takes ``multipart/form-data`` exactly as the official clients send it
(``client.files.create(file=open("train.jsonl", "rb"), purpose="fine-tune")``): the part
``file``, the field ``purpose`` (``fine-tune`` or ``knowledge-base``) and, Atelier's own,
an optional ``compartment`` (id or path such as ``eng:ml``; default the tenancy root). The
body is read into memory with a running size check (``max_file_bytes``, 413 above; the
body-size middleware gives this route that limit plus :data:`MULTIPART_OVERHEAD`) and
sealed in one ``put``: the plaintext never reaches the disk. Listing, retrieval, content
and deletion answer OpenAI's shapes. Policies decide on resource type ``files``: each route
checks the loaded file (id, name, compartment path) with ``Access.require``, so a file the
caller may not even inspect answers 404 exactly like a missing one, and the list hides it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal
from urllib.parse import quote

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from atelier.api.access import Access
from atelier.api.deps import AccessDep, SessionDep
from atelier.api.envelopes import Deleted
from atelier.api.references import body_reference
from atelier.api.uploads import Form, read_form
from atelier.errors import Forbidden, InvalidInput
from atelier.principal import Principal
from atelier.settings import Settings
from atelier.store import identity
from atelier.store.files import PURPOSES, FileStore, check_purpose, clean_filename
from atelier.store.tables import File

router = APIRouter(tags=["files"])

TYPE = "files"
FILE_FIELD = "file"
MULTIPART_OVERHEAD = 64 * 1024
"""Room in the body of an upload for the multipart framing and the fields beside the file."""
MAX_COMPARTMENT_REF = 1000

UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": [FILE_FIELD, "purpose"],
                    "properties": {
                        FILE_FIELD: {"type": "string", "format": "binary", "description": "The file's bytes."},
                        "purpose": {
                            "type": "string", "enum": list(PURPOSES),
                            "description": "`fine-tune` (JSONL training data) or `knowledge-base` (documents).",
                        },
                        "compartment": {
                            "type": "string", "maxLength": MAX_COMPARTMENT_REF,
                            "description": "Compartment id (`cmp_…`) or path (`eng:ml`); default the tenancy root.",
                        },
                    },
                }
            }
        },
    }
}  # fmt: skip
"""The upload's form, described for the OpenAPI document (the route reads it itself, streaming)."""


def upload_limit(settings: Settings) -> int:
    """The body limit of ``POST /v1/files``: the largest file plus the form around it."""
    return max(settings.max_body_bytes, settings.max_file_bytes + MULTIPART_OVERHEAD)


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


def _file_store(request: Request) -> FileStore:
    return FileStore(request.app.state.db, request.app.state.objects)


FilesDep = Annotated[FileStore, Depends(_file_store)]


def _unix(moment: datetime) -> int:
    """Unix seconds of a stored time (SQLite returns it naive, in UTC)."""
    return int((moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp())


def _out(row: File) -> FileObject:
    return FileObject(
        id=row.id, bytes=row.bytes, created_at=_unix(row.created_at), filename=row.filename,
        purpose=row.purpose, compartment_id=row.compartment_id,
    )  # fmt: skip


def _path(session: Session, principal: Principal, row: File) -> tuple[str, ...]:
    return identity.compartment_path(session, principal, row.compartment_id) if row.compartment_id else ()


def _require(access: Access, session: Session, operation: str, row: File) -> None:
    access.require(
        operation, TYPE, target_id=row.id, target_name=row.filename,
        compartment_path=_path(session, access.principal, row), what=f"file {row.id!r}",
    )  # fmt: skip


def _store_upload(request: Request, access: Access, files: FileStore, form: Form) -> FileObject:
    """Check the form and the caller's right to create there, then seal and record the file."""
    purpose = check_purpose(form.fields.get("purpose"))
    if form.data is None:
        raise InvalidInput(f"a file is required: send it as the multipart part {FILE_FIELD!r}", param=FILE_FIELD)
    filename = clean_filename(form.filename)
    compartment_id, path = None, ()
    ref = (form.fields.get("compartment") or "").strip()
    if ref:
        if len(ref) > MAX_COMPARTMENT_REF:
            raise InvalidInput(f"compartment must be at most {MAX_COMPARTMENT_REF} characters", param="compartment")
        with request.app.state.db.session() as session, body_reference("compartment"):
            compartment = identity.resolve_compartment(session, access.principal, ref)
            path = identity.compartment_path(session, access.principal, compartment.id)
        compartment_id = compartment.id
    decision = access.decide("create", TYPE, target_name=filename, compartment_path=path)
    if not decision.allowed:  # the type-level check passed: the compartment or a condition refused it
        raise Forbidden(f"not authorized: {decision.reason}")
    row = files.create_file(
        access.principal, filename=filename, purpose=purpose, data=form.data, compartment_id=compartment_id
    )
    return _out(row)


@router.post("/files", response_model=FileObject, summary="Upload a file", openapi_extra=UPLOAD_BODY)
async def create_file(request: Request, access: AccessDep, files: FilesDep) -> FileObject:
    """Upload a file (multipart: `file`, `purpose`, optional `compartment`); stored sealed in your tenancy."""
    settings: Settings = request.app.state.settings
    form = await read_form(request, file_field=FILE_FIELD, max_file_bytes=settings.max_file_bytes)
    return await run_in_threadpool(_store_upload, request, access, files, form)


@router.get("/files", response_model=FileList, summary="List files")
def list_files(
    access: AccessDep,
    files: FilesDep,
    session: SessionDep,
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
    principal = access.principal
    paths = _compartment_paths(session, principal)
    rows = [
        row
        for row in files.list_files(principal, purpose=purpose)
        if access.visible(
            TYPE, target_id=row.id, target_name=row.filename, compartment_path=paths.get(row.compartment_id, ())
        )
    ]
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
def retrieve_file(file_id: str, access: AccessDep, files: FilesDep, session: SessionDep) -> FileObject:
    """One file's metadata."""
    row = files.get_file(access.principal, file_id)
    _require(access, session, "get", row)
    return _out(row)


@router.get(
    "/files/{file_id}/content",
    response_class=Response,
    responses={200: {"content": {"application/octet-stream": {}}, "description": "The file's bytes."}},
    summary="Retrieve a file's content",
)
def file_content(file_id: str, access: AccessDep, files: FilesDep, session: SessionDep) -> Response:
    """The file's bytes, as uploaded."""
    row = files.get_file(access.principal, file_id)
    _require(access, session, "get", row)
    data = files.file_content(access.principal, row.id)
    disposition = f"attachment; filename*=UTF-8''{quote(row.filename, safe='')}"
    return Response(data, media_type="application/octet-stream", headers={"Content-Disposition": disposition})


@router.delete("/files/{file_id}", response_model=Deleted, summary="Delete a file")
def delete_file(file_id: str, access: AccessDep, files: FilesDep, session: SessionDep) -> Deleted:
    """Delete a file and its sealed bytes."""
    row = files.get_file(access.principal, file_id)
    _require(access, session, "delete", row)
    files.delete_file(access.principal, row.id)
    return Deleted(id=row.id, object="file")


def _compartment_paths(session: Session, principal: Principal) -> dict[str | None, tuple[str, ...]]:
    """Every compartment's path from the tenancy root, by id (None: the root itself)."""
    rows = {row.id: row for row in identity.list_compartments(session, principal)}
    paths: dict[str | None, tuple[str, ...]] = {None: ()}
    for row in rows.values():
        names, current, seen = [], row, set()
        while current is not None and current.id not in seen:
            seen.add(current.id)
            names.append(current.name)
            current = rows.get(current.parent_id) if current.parent_id else None
        paths[row.id] = tuple(reversed(names))
    return paths
