"""One-off torch work in a thread of its own: results and errors come back, the thread is gone after."""

from __future__ import annotations

import threading

import pytest

from atelier.engine.threads import in_fresh_thread


def test_result_and_error_come_back_from_a_thread_that_then_ends():
    seen = []

    def work():
        seen.append(threading.current_thread())
        return 42

    assert in_fresh_thread(work) == 42
    assert seen[0] is not threading.current_thread() and not seen[0].is_alive()
    with pytest.raises(ValueError, match="bad"):
        in_fresh_thread(lambda: (_ for _ in ()).throw(ValueError("bad")))
