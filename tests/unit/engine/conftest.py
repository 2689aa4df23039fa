"""Helpers shared by the engine tests that drive a ``Scheduler`` directly."""

from __future__ import annotations

import threading

import pytest


class Collector:
    """Gathers events per request and signals when each request ends."""

    def __init__(self):
        self.events: dict[str, list] = {}
        self.done = threading.Semaphore(0)
        self.lock = threading.Lock()

    def sink(self, rid):
        self.events[rid] = []

        def put(ev):
            with self.lock:
                self.events[rid].append(ev)
            if isinstance(ev, BaseException) or ev.finish_reason:
                self.done.release()

        return put

    def wait(self, n, timeout=120):
        for _ in range(n):
            assert self.done.acquire(timeout=timeout), "request did not finish"

    def tokens(self, rid):
        return [t for ev in self.events[rid] for t in ev.token_ids]

    def text(self, rid):
        return "".join(ev.text for ev in self.events[rid])

    def last(self, rid):
        last = self.events[rid][-1]
        if isinstance(last, BaseException):
            raise last
        return last

    def logprobs(self, rid):
        return [lp for ev in self.events[rid] for lp in ev.logprobs]


@pytest.fixture
def run_requests():
    """``run(sched, requests)``: submit them all, wait until each ends, return the ``Collector``."""

    def run(sched, requests, hold=False):
        col = Collector()
        if hold:  # the engine thread cannot take any of them before all are queued: one shared prefill
            with sched._cond:
                for r in requests:
                    sched.submit(r, col.sink(r.request_id))
        else:
            for r in requests:
                sched.submit(r, col.sink(r.request_id))
        col.wait(len(requests))
        return col

    return run
