"""The file-work pool: input order kept, waiting work spread over threads, quick work not."""

from __future__ import annotations

import threading
import time

from augment.io.threads import SAMPLE, in_threads


def test_waiting_work_runs_in_threads_in_input_order() -> None:
    seen: set[str] = set()

    def slow(i: int) -> int:  # a network file system's open
        seen.add(threading.current_thread().name)
        time.sleep(0.002)
        return i * i

    items = list(range(SAMPLE + 200))
    assert in_threads(slow, items) == [i * i for i in items]
    assert len(seen) > 2  # the 200 after the sample waited in parallel


def test_quick_work_stays_in_this_thread() -> None:
    seen: set[str] = set()

    def quick(i: int) -> int:  # a header read from a local disk's page cache
        seen.add(threading.current_thread().name)
        return -i

    assert in_threads(quick, list(range(1000))) == [-i for i in range(1000)]
    assert seen == {threading.current_thread().name}
    assert in_threads(quick, []) == []


def test_a_slow_first_call_alone_does_not_start_the_pool() -> None:
    # The first header read also imports Pillow's plugins (~50 ms): the typical item decides.
    seen: set[str] = set()

    def first_slow(i: int) -> int:
        seen.add(threading.current_thread().name)
        if i == 0:
            time.sleep(0.2)
        return i

    assert in_threads(first_slow, list(range(500))) == list(range(500))
    assert seen == {threading.current_thread().name}
