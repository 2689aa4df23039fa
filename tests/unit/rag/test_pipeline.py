"""rag.pipeline: embedding overlapped with writing gives exactly the sequential loop's result."""

from __future__ import annotations

import threading

import pytest

from atelier.rag.pipeline import embed_and_write


class Recorder:
    """Embeds a batch as its doubled items and records every call with the thread that made it."""

    def __init__(self, fail_write_at: int | None = None):
        self.events: list[tuple[str, tuple[int, ...]]] = []
        self.stored: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
        self.threads: dict[str, set[str]] = {"embed": set(), "write": set(), "written": set()}
        self.fail_write_at = fail_write_at

    def embed(self, batch):
        self.threads["embed"].add(threading.current_thread().name)
        self.events.append(("embed", tuple(batch)))
        return tuple(2 * x for x in batch)

    def write(self, batch, vectors):
        self.threads["write"].add(threading.current_thread().name)
        if self.fail_write_at is not None and batch[0] == self.fail_write_at:
            raise OSError("disk full")
        self.stored.append((tuple(batch), vectors))

    def written(self, batch):
        self.threads["written"].add(threading.current_thread().name)
        self.events.append(("written", tuple(batch)))


BATCHES = [[1, 2], [3, 4], [5], [6, 7]]


def sequential(batches):
    out = Recorder()
    for b in batches:
        out.write(b, out.embed(b))
        out.written(b)
    return out


def test_without_overlap_everything_runs_in_the_callers_thread():
    plain = Recorder()
    assert embed_and_write(BATCHES, plain.embed, plain.write, written=plain.written, overlap=False) == 4
    reference = sequential(BATCHES)
    assert (plain.stored, plain.events) == (reference.stored, reference.events)
    assert plain.threads["write"] == {threading.current_thread().name}


def test_same_result_as_the_sequential_loop():
    overlapped = Recorder()
    assert embed_and_write(BATCHES, overlapped.embed, overlapped.write, written=overlapped.written) == 4
    reference = sequential(BATCHES)
    assert overlapped.stored == reference.stored  # same batches, same vectors, same order
    assert [e for e in overlapped.events if e[0] == "embed"] == [e for e in reference.events if e[0] == "embed"]
    assert [e for e in overlapped.events if e[0] == "written"] == [e for e in reference.events if e[0] == "written"]
    main = threading.current_thread().name
    assert overlapped.threads["embed"] == overlapped.threads["written"] == {main}
    assert overlapped.threads["write"] and main not in overlapped.threads["write"]  # one writer thread


def test_progress_follows_the_write_of_its_batch():
    rec = Recorder()
    embed_and_write(BATCHES, rec.embed, rec.write, written=rec.written)
    for i, batch in enumerate(BATCHES):
        # written(b_i) comes after embed(b_i) and after embed(b_{i+1}) started: that one overlapped the write
        assert rec.events.index(("written", tuple(batch))) > rec.events.index(("embed", tuple(batch)))
        if i + 1 < len(BATCHES):
            assert rec.events.index(("written", tuple(batch))) > rec.events.index(("embed", tuple(BATCHES[i + 1])))


def test_the_next_embedding_runs_while_a_batch_is_written():
    writing = threading.Event()
    release = threading.Event()
    overlapped: list[bool] = []

    def write(batch, vectors):
        if batch == [1]:
            writing.set()
            assert release.wait(10), "the second embedding never ran during the first write"

    def embed(batch):
        if batch == [2]:
            overlapped.append(writing.wait(10))  # the first write is under way...
            release.set()  # ...and finishes only once this embedding has run
        return batch

    assert embed_and_write([[1], [2]], embed, write) == 2
    assert overlapped == [True]


def test_a_stop_finishes_the_write_in_flight_and_writes_nothing_more():
    rec = Recorder()
    checks = []

    def check():
        checks.append(len(rec.stored))
        if len(checks) == 4:  # before the second batch's write: the first is done, the second embedded
            raise InterruptedError("cancelled")

    with pytest.raises(InterruptedError):
        embed_and_write(BATCHES, rec.embed, rec.write, written=rec.written, check=check)
    assert rec.stored == [((1, 2), (2, 4))]
    assert ("written", (1, 2)) in rec.events and ("written", (3, 4)) not in rec.events


def test_an_embedding_error_waits_for_the_write_in_flight():
    rec = Recorder()

    def embed(batch):
        if batch == [3, 4]:
            raise ValueError("bad shape")
        return rec.embed(batch)

    with pytest.raises(ValueError, match="bad shape"):
        embed_and_write(BATCHES, embed, rec.write)
    assert rec.stored == [((1, 2), (2, 4))]  # batch 1 was fully written before the error came out


def test_a_write_error_comes_out_and_stops_the_rest():
    rec = Recorder(fail_write_at=3)
    with pytest.raises(OSError, match="disk full"):
        embed_and_write(BATCHES, rec.embed, rec.write, written=rec.written)
    assert [b for b, _ in rec.stored] == [(1, 2)]
    assert ("written", (3, 4)) not in rec.events


def test_nothing_to_do():
    assert embed_and_write([], lambda b: b, lambda b, v: None) == 0
