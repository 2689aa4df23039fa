"""One Chroma directory shared by several stores of a process and by other processes.

The API server and the job workers are separate processes writing the same Chroma directory,
and one process may open several stores on it (the app, a repair, a test peeking). Each process
holds one Chroma client per directory; a store closing never disturbs the others, and any of
them sees what another process wrote. Only Chroma's public API is used (no private cache).
"""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

from atelier.errors import Unavailable
from atelier.rag.indexing import Scope, StoredChunk
from atelier.store import repos, vectors
from atelier.store.vectors import ChromaStore

DIM = 8


def basis(i: int) -> np.ndarray:
    v = np.zeros((1, DIM), dtype=np.float32)  # (1, DIM)
    v[0, i % DIM] = 1.0
    return v


def chunk(doc: str) -> list[StoredChunk]:
    return [StoredChunk(f"{doc}:0", doc, f"{doc}.txt", 0, f"text of {doc}", 0, 10)]


@pytest.fixture
def scope(db):
    with db.session() as s:
        return Scope(repos.create_tenancy(s, "alpha").id, "kb_shared")


@pytest.fixture
def opened(db, tmp_path):
    """``opened()``: a new ``ChromaStore`` on the test's Chroma directory, closed after the test."""
    stores: list[ChromaStore] = []

    def open_one() -> ChromaStore:
        stores.append(ChromaStore(tmp_path / "chroma", db))
        return stores[-1]

    yield open_one
    for store in stores:
        store.close()


def write_in_another_process(db, tmp_path, scope: Scope, doc: str, dim_index: int) -> None:
    child = textwrap.dedent(
        f"""
        import numpy as np
        from atelier.rag.indexing import Scope, StoredChunk
        from atelier.store.db import Database
        from atelier.store.vectors import ChromaStore
        s = ChromaStore({str(tmp_path / "chroma")!r}, Database({str(db.url)!r}))
        v = np.zeros((1, {DIM}), dtype=np.float32); v[0, {dim_index}] = 1
        s.add(Scope({scope.tenancy_id!r}, {scope.knowledge_base_id!r}),
              [StoredChunk("{doc}:0", "{doc}", "{doc}.txt", 0, "text of {doc}", 0, 10)], v)
        s.close()
        """
    )
    subprocess.run([sys.executable, "-c", child], check=True, timeout=120)


def nearest(store: ChromaStore, scope: Scope, i: int) -> str:
    return store.dense(scope, basis(i)[0], 1)[0].chunk.document_id


def test_closing_one_store_leaves_the_others_on_the_path_working(opened, scope):
    first, second = opened(), opened()
    first.create(scope, dimensions=DIM)
    first.add(scope, chunk("a"), basis(0))
    assert nearest(second, scope, 0) == "a"
    first.close()
    first.close()  # idempotent
    second.add(scope, chunk("b"), basis(1))
    assert nearest(second, scope, 1) == "b" and second.vectors.count(scope) == 2
    with pytest.raises(Unavailable):
        first.vectors.count(scope)
    third = opened()  # a store opened after another one closed
    assert third.vectors.count(scope) == 2


def test_every_store_of_a_process_sees_what_another_process_wrote(opened, scope, db, tmp_path):
    """Two stores in this process keep the directory's HNSW loaded; a child process then writes.

    Closing a client only stops Chroma's shared in-memory state of the path when it is the
    process's last client: a store reopening its own client beside another one would keep
    reading the stale index. One client per directory and process is what makes this pass.
    """
    first, second = opened(), opened()
    first.create(scope, dimensions=DIM)
    first.add(scope, chunk("parent"), basis(0))
    assert nearest(first, scope, 0) == nearest(second, scope, 0) == "parent"  # the HNSW is loaded
    write_in_another_process(db, tmp_path, scope, "child", 1)
    assert nearest(first, scope, 1) == "child"  # not the stale in-memory index
    assert nearest(second, scope, 1) == "child"
    second.add(scope, chunk("later"), basis(2))  # written on top of the child's, not over it
    write_in_another_process(db, tmp_path, scope, "child2", 3)
    assert {h.chunk.document_id for h in first.dense(scope, basis(0)[0], 10)} == {"parent", "child", "later", "child2"}


def test_a_store_closing_in_another_thread_never_breaks_one_being_opened(opened, scope):
    """The crash tests' race: a dead app's shutdown closes its store while the next one opens."""
    opened().create(scope, dimensions=DIM)
    for round_ in range(8):
        doomed = opened()
        doomed.vectors.count(scope)
        start = threading.Barrier(2)

        def close_it() -> None:
            start.wait()
            doomed.close()

        closer = threading.Thread(target=close_it)
        closer.start()
        start.wait()
        fresh = opened()
        fresh.add(scope, chunk(f"r{round_}"), basis(round_))
        closer.join()
        assert nearest(fresh, scope, round_) == f"r{round_}"


def test_a_write_that_fails_part_way_still_tells_the_other_processes(opened, scope, tmp_path):
    store = opened()
    store.create(scope, dimensions=DIM)
    before = int((tmp_path / "chroma" / ".generation").read_text())
    with pytest.raises(RuntimeError), store.vectors._session(write=True):
        raise RuntimeError("Chroma failed after writing some batches")
    assert int((tmp_path / "chroma" / ".generation").read_text()) == before + 1
    with store.vectors._session(write=False):
        pass
    assert int((tmp_path / "chroma" / ".generation").read_text()) == before + 1  # reads do not


def test_only_chromas_public_api_is_used():
    source = inspect.getsource(vectors)
    imports = set(re.findall(r"(?:from|import)\s+(chromadb[\w.]*)", source))
    assert imports <= {"chromadb", "chromadb.config"}, imports
    assert not re.search(r"SharedSystemClient|_identifier_to|clear_system_cache", source)
