"""Triton's per-model inference statistics (`GET /v2/models/{m}/stats`), in shared memory:
the HTTP processes add each inference request's outcome and duration, the workers each
request's queue time and its batch's compute time, and any process reads them.

As Triton counts them: `success`/`fail` are requests and their whole time in the server;
`queue` and `compute_infer` are per request, each charged its batch's full compute time;
`inference_count` counts instances and `execution_count` batches. perf_analyzer divides
the differences of two reads by the successes to report server-side time per request.
"""

import ctypes
import multiprocessing as mp
import time
from bisect import bisect_left
from typing import Literal, NamedTuple

from ..admission import Cost
from ..traffic import LATENCY_BUCKETS, Answers
from .locks import ProcessLock

MAX_WORKERS = 64  # inference workers per model version that can count (each has its own cells)


class RequestCells(ctypes.Structure):
    """One version's requests, as the HTTP processes count them."""

    _fields_ = [
        ("success_count", ctypes.c_uint64),
        ("success_ns", ctypes.c_uint64),
        ("fail_count", ctypes.c_uint64),
        ("fail_ns", ctypes.c_uint64),
        ("cache_hit_count", ctypes.c_uint64),  # the response cache's lookups that found it
        ("cache_hit_ns", ctypes.c_uint64),
        ("cache_miss_count", ctypes.c_uint64),  # ... that did not: lookup and insertion time
        ("cache_miss_ns", ctypes.c_uint64),
        # for judging a canary (traffic.py): the 5xx answers, and answers per latency bucket
        ("server_error_count", ctypes.c_uint64),
        ("latency_buckets", ctypes.c_uint64 * (len(LATENCY_BUCKETS) + 1)),
        # this version as a shadow of the serving ones (shadow.py): comparisons by result,
        # and the largest absolute difference of an output seen
        ("shadow_agree", ctypes.c_uint64),
        ("shadow_disagree", ctypes.c_uint64),
        ("shadow_error", ctypes.c_uint64),
        ("shadow_dropped", ctypes.c_uint64),
        ("shadow_max_difference", ctypes.c_double),
    ]


class ShadowCounts(NamedTuple):
    """A shadow version's comparisons so far (shadow.py)."""

    agree: int
    disagree: int
    error: int
    dropped: int
    max_difference: float


class BatchCells(ctypes.Structure):
    """One worker's batches of one version, as that worker counts them."""

    _fields_ = [
        ("queue_count", ctypes.c_uint64),  # requests run, which is also compute_infer's count
        ("queue_ns", ctypes.c_uint64),
        ("compute_ns", ctypes.c_uint64),
        ("inference_count", ctypes.c_uint64),
        ("execution_count", ctypes.c_uint64),
        ("last_inference_ms", ctypes.c_uint64),
        # the worker's batch cost fit (batching.BatchCost) and largest batch, for admission
        ("fixed_s", ctypes.c_double),
        ("per_instance_s", ctypes.c_double),
        ("max_batch_size", ctypes.c_uint64),
        ("instances_per_request", ctypes.c_double),
    ]


TRITON_REQUESTS = tuple(f"{kind}_{unit}" for kind in ("success", "fail", "cache_hit", "cache_miss")
                        for unit in ("count", "ns"))  # fmt: skip
COUNTED = ("queue_count", "queue_ns", "compute_ns", "inference_count", "execution_count")


class Stats:
    """Indexed by the slot of the version table (table.py) that the version occupies."""

    def __init__(self, capacity: int) -> None:
        ctx = mp.get_context("spawn")  # made before LitServe's processes, so they share it
        # Written by the HTTP processes, under a lock they alone take (one over raw cells: a
        # synchronized Array would take it again for every item), which a killed one releases.
        self.requests = ctx.RawArray(RequestCells, capacity)
        self.requests_lock = ProcessLock()
        # Cells per slot and worker, each written by that worker alone and read without a
        # lock: a worker killed while writing holds no lock that would stop the others.
        self.batches = ctx.RawArray(BatchCells, capacity * MAX_WORKERS)

    def reset(self, slot: int) -> None:
        """Zero a slot that a new version takes (main process, before its workers start)."""
        with self.requests_lock:
            self.requests[slot] = RequestCells()
        for worker in range(MAX_WORKERS):
            self.batches[slot * MAX_WORKERS + worker] = BatchCells()

    def request(
        self,
        slot: int,
        outcome: Literal["success", "fail"],
        seconds: float,
        server_error: bool = False,
    ) -> None:
        """One inference request answered (HTTP side); `server_error`: with a 5xx."""
        cells = self.requests[slot]  # a view of the shared memory
        bucket = bisect_left(LATENCY_BUCKETS, seconds)  # Prometheus's le: bound >= seconds
        with self.requests_lock:
            if outcome == "success":
                cells.success_count += 1
                cells.success_ns += int(seconds * 1e9)
            else:
                cells.fail_count += 1
                cells.fail_ns += int(seconds * 1e9)
            cells.server_error_count += server_error
            cells.latency_buckets[bucket] += 1

    def answers(self, slot: int) -> Answers:
        """The version's answers since it took the slot, for judging it as a canary."""
        with self.requests_lock:
            cells = self.requests[slot]
            return Answers(
                cells.success_count + cells.fail_count,
                cells.server_error_count,
                tuple(cells.latency_buckets),
            )

    def shadowed(self, slot: int, result: str, n: int = 1, difference: float = 0.0) -> None:
        """`n` shadow comparisons of the version in `slot` came to `result` (agree, disagree,
        error or dropped); `difference`: the largest among them."""
        cells = self.requests[slot]
        with self.requests_lock:
            setattr(cells, f"shadow_{result}", getattr(cells, f"shadow_{result}") + n)
            cells.shadow_max_difference = max(cells.shadow_max_difference, difference)

    def shadow_counts(self, slot: int) -> ShadowCounts:
        with self.requests_lock:
            c = self.requests[slot]
            return ShadowCounts(
                c.shadow_agree,
                c.shadow_disagree,
                c.shadow_error,
                c.shadow_dropped,
                c.shadow_max_difference,
            )

    def cache(self, slot: int, hit: bool, seconds: float) -> None:
        """One response cache lookup (HTTP side): for a miss, its lookup and insertion."""
        cells = self.requests[slot]
        with self.requests_lock:
            if hit:
                cells.cache_hit_count += 1
                cells.cache_hit_ns += int(seconds * 1e9)
            else:
                cells.cache_miss_count += 1
                cells.cache_miss_ns += int(seconds * 1e9)

    def batch(
        self, slot: int, worker_id: int, queued: list[float], compute: float, instances: int
    ) -> None:
        """One batch run by a worker: each request's queue seconds, the batch's compute."""
        cells = self.batches[slot * MAX_WORKERS + worker_id]
        cells.queue_count += len(queued)
        cells.queue_ns += int(sum(queued) * 1e9)
        cells.compute_ns += int(compute * 1e9) * len(queued)
        cells.inference_count += instances
        cells.execution_count += 1
        cells.last_inference_ms = int(time.time() * 1000)

    def set_cost(self, slot: int, worker_id: int, cost: Cost) -> None:
        cells = self.batches[slot * MAX_WORKERS + worker_id]
        cells.fixed_s, cells.per_instance_s = cost.fixed, cost.per_instance
        cells.max_batch_size = cost.max_batch_size
        cells.instances_per_request = cost.instances_per_request

    def cost(self, slot: int, workers: int) -> Cost | None:
        """The version's batch cost, its workers' mean; None before any worker has one."""
        cells = self.batches[slot * MAX_WORKERS : slot * MAX_WORKERS + workers]
        known = [c for c in cells if c.max_batch_size]
        if not known:
            return None
        n = len(known)
        return Cost(
            sum(c.fixed_s for c in known) / n,
            sum(c.per_instance_s for c in known) / n,
            known[0].max_batch_size,
            sum(c.instances_per_request for c in known) / n,
        )

    def read(self, slot: int) -> dict[str, int]:
        """Every field, the workers' added up (the latest inference: their latest)."""
        with self.requests_lock:
            cells = self.requests[slot]
            totals = {name: getattr(cells, name) for name in TRITON_REQUESTS}
        workers = self.batches[slot * MAX_WORKERS : (slot + 1) * MAX_WORKERS]
        for name in (*COUNTED, "last_inference_ms"):
            column = [getattr(cells, name) for cells in workers]
            totals[name] = max(column) if name == "last_inference_ms" else sum(column)
        return totals

    def triton(self, slot: int, model: str, version: int) -> dict:
        """One entry of Triton's `model_stats`, for the version in `slot`."""
        v = self.read(slot)

        def pair(kind: str, count: str | None = None) -> dict[str, int]:
            return {"count": v[count or f"{kind}_count"], "ns": v[f"{kind}_ns"]}

        none = {"count": 0, "ns": 0}  # input and output copies happen inside compute here
        return {
            "name": model,
            "version": str(version),
            "last_inference": v["last_inference_ms"],
            "inference_count": v["inference_count"],
            "execution_count": v["execution_count"],
            "inference_stats": {
                "success": pair("success"),
                "fail": pair("fail"),
                "queue": pair("queue"),
                "compute_input": none,
                "compute_infer": pair("compute", count="queue_count"),  # every request run
                "compute_output": none,
                "cache_hit": pair("cache_hit"),
                "cache_miss": pair("cache_miss"),
            },
            "batch_stats": [],
        }
