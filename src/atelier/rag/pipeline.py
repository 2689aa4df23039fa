"""Ingestion with embedding and writing overlapped: batch i+1 is embedded while batch i is written.

Embedding is compute (the embedder releases the GIL inside its kernels); writing is the
vector index and the keyword index (SQLite and Chroma, which release it around their I/O
and native code). Run one after the other, each waits for the other; here one writer
thread takes the batches in order while the caller's thread embeds the next one, so the
wall time per batch is about ``max(embed, write)`` instead of their sum. How much that gives
depends on the share of writing: with multilingual-e5-small in PyTorch on 2 cores the
embedder takes 99 % of the time (30 chunks/s against 2,500 chunks/s written to Chroma +
FTS5), and overlapped and sequential ingestion measure the same within noise
(``bench/rag.py``: 31.1 against 31.5 chunks/s); it pays with a slower store (a remote
PostgreSQL) or spare cores.

The result is exactly that of the sequential loop: the same batches, embedded by the same
calls, written in the same order by one thread, with at most one write in flight. Progress
callbacks and stop checks run in the caller's thread.

This module knows nothing about models, stores or jobs: it is handed callables.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

B = TypeVar("B")
V = TypeVar("V")


def embed_and_write(
    batches: Iterable[B],
    embed: Callable[[B], V],
    write: Callable[[B, V], None],
    *,
    written: Callable[[B], None] | None = None,
    check: Callable[[], None] | None = None,
    overlap: bool = True,
) -> int:
    """Embed and write ``batches`` in order, the writes overlapping the next embedding.

    Semantics (what the caller observes is this sequential loop's, except that ``write(b_i)``
    runs in another thread while ``embed(b_{i+1})`` runs)::

        for b in batches:
            check()
            v = embed(b)
            check()
            write(b, v)
            written(b)

    ``written(b_i)`` is called once ``write(b_i)`` has returned, in the caller's thread. When
    ``check`` or ``embed`` raises, the write in flight is finished first (so nothing is still
    writing once this returns or raises), and no later batch is written.

    Args:
        batches: The batches, in order.
        embed: A batch → its vectors.
        write: Stores a batch with its vectors.
        written: Called after each batch is written (progress).
        check: Called before each embedding and each write; raises to stop (cancellation).
        overlap: ``False`` runs the loop above as written, in the caller's thread.

    Returns:
        The number of batches written.
    """
    done = 0
    if not overlap:
        for batch in batches:
            if check is not None:
                check()
            vectors = embed(batch)
            if check is not None:
                check()
            write(batch, vectors)
            done += 1
            if written is not None:
                written(batch)
        return done
    pending: tuple[B, Future] | None = None

    def finish() -> None:
        nonlocal pending, done
        if pending is None:
            return
        batch, future = pending
        pending = None
        future.result()
        done += 1
        if written is not None:
            written(batch)

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest-write") as writer:
        try:
            for batch in batches:
                if check is not None:
                    check()
                vectors = embed(batch)
                finish()
                if check is not None:
                    check()
                pending = (batch, writer.submit(write, batch, vectors))
            finish()
        except BaseException:
            if pending is not None:
                pending[1].exception()  # wait for the write in flight; the caller's error wins
            raise
    return done
