"""The batching loop's choice of requests, on a real queue (no server)."""

import queue
import time
from types import SimpleNamespace

import numpy as np
from litserve.loops.base import _SENTINEL_VALUE

from service.loop import AdaptiveBatchingLoop


def item(uid: str, instances: int) -> tuple:
    return (0, uid, time.monotonic(), np.zeros((instances, 30), np.float32))


def test_a_lone_request_runs_at_once_whatever_the_batch_timeout():
    q = queue.Queue()
    q.put(item("a", 1))
    started = time.monotonic()
    items, stop = AdaptiveBatchingLoop().collect(
        SimpleNamespace(max_batch_size=64, batch_timeout=10), q
    )
    assert [i[1] for i in items] == ["a"] and not stop
    assert time.monotonic() - started < 1  # not the 10 s timeout


def test_queued_requests_fill_a_batch_up_to_the_max_instances():
    q = queue.Queue()
    for n in range(5):
        q.put(item(f"r{n}", 16))
    loop = AdaptiveBatchingLoop()
    api = SimpleNamespace(max_batch_size=64, batch_timeout=10)
    first, _ = loop.collect(api, q)
    assert [i[1] for i in first] == ["r0", "r1", "r2", "r3"]  # 64 instances: full, no waiting
    second, _ = loop.collect(api, q)
    assert [i[1] for i in second] == ["r4"]


def test_under_load_the_batch_waits_at_most_the_timeout_for_more():
    q = queue.Queue()
    q.put(item("a", 1))
    q.put(item("b", 1))
    started = time.monotonic()
    items, _ = AdaptiveBatchingLoop().collect(
        SimpleNamespace(max_batch_size=64, batch_timeout=0.2), q
    )
    waited = time.monotonic() - started
    assert [i[1] for i in items] == ["a", "b"]
    assert 0.15 < waited < 1.0  # others were queued, so it waited for the batch to fill


def test_a_request_that_would_overflow_opens_the_next_batch():
    q = queue.Queue()
    for uid in ("a", "b", "c"):
        q.put(item(uid, 40))
    loop = AdaptiveBatchingLoop()
    api = SimpleNamespace(max_batch_size=64, batch_timeout=0)
    assert [i[1] for i in loop.collect(api, q)[0]] == ["a"]
    assert [i[1] for i in loop.collect(api, q)[0]] == ["b"]
    assert [i[1] for i in loop.collect(api, q)[0]] == ["c"]
    big = item("big", 500)  # larger than the max batch: runs alone, split by ModelAPI.predict
    q.put(big)
    assert loop.collect(api, q)[0] == [big]


def test_the_shutdown_sentinel_stops_the_loop_after_the_current_batch():
    q = queue.Queue()
    q.put(item("a", 1))
    q.put(_SENTINEL_VALUE)
    items, stop = AdaptiveBatchingLoop().collect(
        SimpleNamespace(max_batch_size=64, batch_timeout=0.1), q
    )
    assert [i[1] for i in items] == ["a"] and stop
    q.put(_SENTINEL_VALUE)
    assert AdaptiveBatchingLoop().collect(
        SimpleNamespace(max_batch_size=64, batch_timeout=0), q
    ) == ([], True)
