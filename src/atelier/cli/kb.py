"""``atelier kb create|add|list|query|ask|delete``: knowledge bases, their documents, search and grounded answers.

``add`` takes files and folders (walked recursively for .txt, .md, .html, .pdf and .docx);
a file that cannot be uploaded (missing, unsupported, empty, unreadable, too large) is reported
with its reason while the others go through,
uploads each with a progress bar, then (``--wait``, the default) follows the ingestion jobs
with a second bar counting the chunks embedded, and ends with one line per document; it
exits 1 if one failed. A knowledge base is named by id (``kb_…``) or name. A client of the
HTTP API like the rest of the CLI, so the caller's key and the tenancy's policies apply.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from atelier.cli.common import JsonOpt, client_for, fail, print_json, resolve_ref, show
from atelier.client import ApiError, AtelierClient
from atelier.rag.loaders import CONTENT_TYPES

kb_app = typer.Typer(name="kb", help="Knowledge bases: documents in, grounded answers with citations out.",
                     no_args_is_help=True)

KbArg = Annotated[str, typer.Argument(help="Knowledge base id (kb_…) or name.")]
FINAL = ("ready", "failed")
SNIPPET = 160

KB_COLUMNS = [
    ("ID", "id"), ("NAME", "name"), ("EMBEDDING_MODEL", "embedding_model"), ("DOCUMENTS", "document_count"),
    ("CHUNKS", "chunk_count"), ("CHUNK_SIZE", "chunk_size"), ("COMPARTMENT", "compartment_id"),
]  # fmt: skip
DOC_COLUMNS = [
    ("ID", "id"), ("FILENAME", "filename"), ("STATE", "state"), ("CHUNKS", "chunk_count"), ("VERSION", "version"),
    ("TAGS", "tags"), ("BYTES", "bytes"), ("ERROR", "error"),
]  # fmt: skip


def resolve_kb(client: AtelierClient, ref: str) -> str:
    """The id of the knowledge base named by ``ref`` (an id as is, else by name)."""
    return resolve_ref(ref, "kb", client.knowledge_bases.list, "knowledge base")


def collect_files(paths: list[Path]) -> tuple[list[Path], list[dict[str, Any]]]:
    """The files to upload (each file as given, each folder's supported files, recursively, sorted), and a
    failed row for each path that cannot be uploaded (missing, or of an unsupported type).

    Raises:
        typer.Exit: Nothing at all to upload.
    """
    files: list[Path] = []
    refused: list[dict[str, Any]] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in CONTENT_TYPES
                                and not any(part.startswith(".") for part in p.relative_to(path).parts)))
        elif path.is_file() and path.suffix.lower() in CONTENT_TYPES:
            files.append(path)
        elif path.is_file():
            refused.append(failed_row(path, f"unsupported file type; supported: {', '.join(sorted(CONTENT_TYPES))}"))
        else:
            refused.append(failed_row(path, "no such file or folder"))
    if not files and not refused:
        fail("no supported documents found (" + ", ".join(sorted(CONTENT_TYPES)) + ")")
    return list(dict.fromkeys(files)), refused


def _reason(doc: dict[str, Any]) -> str:
    """``name: why`` of a failed document (the API's message may name the file already)."""
    name, error = Path(doc["filename"]).name, str(doc.get("error") or "failed")
    return error if error.startswith(f"{name}:") else f"{name}: {error}"


def failed_row(path: Path, reason: str) -> dict[str, Any]:
    """The row shown for a file that was not uploaded."""
    return {"id": None, "filename": str(path), "state": "failed", "error": reason, "unchanged": False}


def _bar(console: Console) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console)


def follow_ingestion(client: AtelierClient, kb_id: str, doc_ids: list[str], console: Console,
                     poll_seconds: float = 1.0) -> list[dict[str, Any]]:
    """Poll the documents until each is ready or failed, with bars for documents and chunks.

    Returns:
        The documents in ``doc_ids``' order, in their final states.
    """
    with _bar(console) as progress:
        docs_task = progress.add_task("ingested", total=len(doc_ids))
        chunks_task = progress.add_task("chunks", total=None)
        while True:
            current = {d["id"]: d for d in client.knowledge_bases.documents.list(kb_id)}
            docs = [current.get(i) or {"id": i, "state": "failed", "error": "deleted meanwhile"} for i in doc_ids]
            done = total = 0
            for doc in docs:
                if doc["state"] == "ready":
                    done += doc.get("chunk_count") or 0
                    total += doc.get("chunk_count") or 0
                elif doc.get("progress"):
                    done += doc["progress"]["chunks_done"]
                    total += doc["progress"]["chunks_total"]
            finished = sum(d["state"] in FINAL for d in docs)
            progress.update(docs_task, completed=finished)
            progress.update(chunks_task, completed=done, total=total or None)
            if finished == len(docs):
                return docs
            time.sleep(poll_seconds)


@kb_app.command("create")
def create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Unique in your tenancy: letters, digits, _ . -")],
    embedding_model: Annotated[str | None, typer.Option("--embedding-model", "-e",
                                                        help="Default multilingual-e5-small.")] = None,
    chunk_size: Annotated[int | None, typer.Option("--chunk-size", help="Tokens per chunk (default 256).")] = None,
    chunk_overlap: Annotated[int | None, typer.Option("--chunk-overlap", help="Tokens of overlap (default 32).")
                             ] = None,
    search_breadth: Annotated[int | None, typer.Option("--search-breadth", help="HNSW ef (default 100).")] = None,
    description: Annotated[str | None, typer.Option("--description", "-d")] = None,
    compartment: Annotated[str | None, typer.Option("--compartment", "-c", help="Id or path (eng:ml).")] = None,
    raw: JsonOpt = False,
) -> None:
    """Create an empty knowledge base."""
    created = client_for(ctx).knowledge_bases.create(
        name, embedding_model=embedding_model, chunk_size=chunk_size, chunk_overlap=chunk_overlap,
        search_breadth=search_breadth, description=description, compartment=compartment,
    )  # fmt: skip
    show(created, KB_COLUMNS, raw)


@kb_app.command("add")
def add(
    ctx: typer.Context,
    kb: KbArg,
    paths: Annotated[list[Path], typer.Argument(help="Files and folders (folders are walked recursively).")],
    tags: Annotated[str | None, typer.Option("--tags", "-t", help="Comma-separated tags for every document.")] = None,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Follow the ingestion until every document ends.")
                    ] = True,
    raw: JsonOpt = False,
) -> None:
    """Upload documents (progress bar), then follow their ingestion (chunks embedded)."""
    client = client_for(ctx)
    kb_id = resolve_kb(client, kb)
    files, refused = collect_files(paths)
    total = len(files) + len(refused)
    tag_list = [t.strip() for t in (tags or "").split(",") if t.strip()] or None
    console = Console(stderr=True)
    uploaded: list[dict[str, Any]] = []
    with _bar(console) as progress:
        task = progress.add_task("uploaded", total=len(files))
        for path in files:
            try:
                document, created = client.knowledge_bases.documents.add(kb_id, path, tags=tag_list)
            except ApiError as exc:  # this file only (empty, unreadable, too large...): the others go on
                if exc.status in (401, 403, 404, 429) or exc.status >= 500:
                    raise
                refused.append(failed_row(path, exc.message))
            else:
                uploaded.append({**document, "unchanged": not created})
            progress.advance(task)
    unchanged = sum(d["unchanged"] for d in uploaded)
    if unchanged:
        console.print(f"{unchanged} unchanged (same content already in the knowledge base)")
    docs = uploaded
    if wait:
        pending = [d["id"] for d in uploaded if d["state"] not in FINAL]
        final = {d["id"]: d for d in follow_ingestion(client, kb_id, pending, console)} if pending else {}
        docs = [final.get(d["id"], d) for d in uploaded]
    show(docs + refused, DOC_COLUMNS, raw)
    failed = [d for d in docs + refused if d["state"] == "failed"]
    if not raw:  # --json: the rows say it all
        reasons = "; ".join(_reason(d) for d in failed)
        console.print(f"{len(uploaded)} of {total} uploaded" + (f", {len(failed)} failed: {reasons}" if failed else ""))
    if failed and (wait or refused):
        raise typer.Exit(1)


@kb_app.command("list")
def list_(
    ctx: typer.Context,
    kb: Annotated[str | None, typer.Argument(help="A knowledge base: list its documents instead.")] = None,
    raw: JsonOpt = False,
) -> None:
    """List your knowledge bases, or the documents of one."""
    client = client_for(ctx)
    if kb is None:
        show(client.knowledge_bases.list(), KB_COLUMNS, raw)
    else:
        show(client.knowledge_bases.documents.list(resolve_kb(client, kb)), DOC_COLUMNS, raw)


def _snippet(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= SNIPPET else line[: SNIPPET - 1] + "…"


def _source(passage: dict[str, Any]) -> str:
    """``file > heading (chars 10-250)``: where a passage or a citation comes from."""
    where = passage["filename"] + (f" > {passage['heading']}" if passage.get("heading") else "")
    return f"{where} (chars {passage['start']}-{passage['end']})"


@kb_app.command("query")
def query(
    ctx: typer.Context,
    kb: KbArg,
    text: Annotated[str, typer.Argument(help="What to search for.")],
    mode: Annotated[str, typer.Option("--mode", "-m", help="dense, keyword or hybrid.")] = "hybrid",
    top_k: Annotated[int, typer.Option("--top-k", "-k", help="Passages returned.")] = 5,
    tag: Annotated[list[str] | None, typer.Option("--tag", help="Only documents with this tag (repeatable).")] = None,
    document: Annotated[list[str] | None, typer.Option("--document", help="Only this document (repeatable).")] = None,
    rerank: Annotated[bool, typer.Option("--rerank", help="Rerank a wider pool (MMR).")] = False,
    raw: JsonOpt = False,
) -> None:
    """Search a knowledge base: the best passages with their scores and sources."""
    client = client_for(ctx)
    passages = client.knowledge_bases.query(resolve_kb(client, kb), text, mode=mode, top_k=top_k, tags=tag,
                                            document_ids=document, rerank=rerank or None)
    if raw:
        print_json(passages)
        return
    if not passages:
        typer.echo("no passages found")
    for p in passages:
        typer.echo(f"{p['rank']}. [{p['score']:.4f}] {_source(p)}")
        typer.echo(f"   {_snippet(p['text'])}")


@kb_app.command("ask")
def ask(
    ctx: typer.Context,
    kb: KbArg,
    question: Annotated[str, typer.Argument(help="The question.")],
    model: Annotated[str | None, typer.Option("--model", help="Chat model (base or custom).")] = None,
    top_k: Annotated[int | None, typer.Option("--top-k", "-k", help="Passages given to the model.")] = None,
    mode: Annotated[str | None, typer.Option("--mode", "-m", help="dense, keyword or hybrid.")] = None,
    max_tokens: Annotated[int | None, typer.Option("--max-tokens", help="Most tokens of the answer.")] = None,
    answer_mode: Annotated[str | None, typer.Option(
        "--answer-mode", "-a", help="generative (the model answers), extractive (the passages' own sentences, "
        "no model) or structured (the model answers inside a JSON Schema with its citations).")] = None,
    raw: JsonOpt = False,
) -> None:
    """Answer a question from a knowledge base, citing its sources."""
    client = client_for(ctx)
    result = client.knowledge_bases.ask(resolve_kb(client, kb), question, model=model, top_k=top_k, mode=mode,
                                        max_tokens=max_tokens, answer_mode=answer_mode)
    if raw:
        print_json(result)
        return
    typer.echo(result["answer"])
    if result.get("citations"):
        typer.echo("\nSources:")
        for c in result["citations"]:
            typer.echo(f"[{c['index']}] {_source(c)}: {_snippet(c['text'])}")
    if result.get("dropped_citations"):
        typer.echo(f"({result['dropped_citations']} citation(s) of no passage dropped)")


@kb_app.command("delete")
def delete(ctx: typer.Context, kb: KbArg) -> None:
    """Delete a knowledge base with its documents, chunks and vectors."""
    client = client_for(ctx)
    deleted = client.knowledge_bases.delete(resolve_kb(client, kb))
    typer.echo(f"deleted {deleted.get('id')}")
