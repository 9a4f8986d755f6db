"""Triton's per-model inference statistics (`GET /v2/models/{m}/stats`), in shared memory:
the HTTP processes add each inference request's outcome and duration, the workers each
request's queue time and its batch's compute time, and any process reads them.

As Triton counts them: `success`/`fail` are requests and their whole time in the server;
`queue` and `compute_infer` are per request, each charged its batch's full compute time;
`inference_count` counts instances and `execution_count` batches. perf_analyzer divides
the differences of two reads by the successes to report server-side time per request.
"""

import multiprocessing as mp
import time
from typing import Literal

MAX_WORKERS = 64  # inference workers per model version that can count (each has its own cells)
REQUEST_FIELDS = ("success_count", "success_ns", "fail_count", "fail_ns")
BATCH_FIELDS = (
    "queue_count",  # requests run, which is also compute_infer's count
    "queue_ns",
    "compute_ns",
    "inference_count",
    "execution_count",
    "last_inference_ms",
)
SLOT = {name: i for i, name in enumerate(BATCH_FIELDS)}


class Stats:
    """Indexed by the slot of the version table (table.py) that the version occupies."""

    def __init__(self, capacity: int) -> None:
        ctx = mp.get_context("spawn")  # made before LitServe's processes, so they share it
        # Written by the HTTP processes, under a lock they alone take (a plain one over raw
        # cells: a synchronized Array would take it again for every item).
        self.requests = ctx.RawArray("Q", capacity * len(REQUEST_FIELDS))
        self.requests_lock = ctx.Lock()
        # Cells per slot and worker, each written by that worker alone and read without a
        # lock: a worker killed while writing holds no lock that would stop the others.
        self.batches = ctx.RawArray("Q", capacity * MAX_WORKERS * len(BATCH_FIELDS))

    def reset(self, slot: int) -> None:
        """Zero a slot that a new version takes (main process, before its workers start)."""
        width = len(REQUEST_FIELDS)
        with self.requests_lock:
            self.requests[slot * width : (slot + 1) * width] = [0] * width
        width = MAX_WORKERS * len(BATCH_FIELDS)
        self.batches[slot * width : (slot + 1) * width] = [0] * width

    def request(self, slot: int, outcome: Literal["success", "fail"], seconds: float) -> None:
        """One inference request answered (HTTP side)."""
        base = slot * len(REQUEST_FIELDS) + (0 if outcome == "success" else 2)
        with self.requests_lock:
            self.requests[base] += 1
            self.requests[base + 1] += int(seconds * 1e9)

    def batch(
        self, slot: int, worker_id: int, queued: list[float], compute: float, instances: int
    ) -> None:
        """One batch run by a worker: each request's queue seconds, the batch's compute."""
        base = (slot * MAX_WORKERS + worker_id) * len(BATCH_FIELDS)
        values = self.batches
        values[base + SLOT["queue_count"]] += len(queued)
        values[base + SLOT["queue_ns"]] += int(sum(queued) * 1e9)
        values[base + SLOT["compute_ns"]] += int(compute * 1e9) * len(queued)
        values[base + SLOT["inference_count"]] += instances
        values[base + SLOT["execution_count"]] += 1
        values[base + SLOT["last_inference_ms"]] = int(time.time() * 1000)

    def read(self, i: int) -> dict[str, int]:
        with self.requests_lock:
            base = i * len(REQUEST_FIELDS)
            totals = {f: self.requests[base + k] for k, f in enumerate(REQUEST_FIELDS)}
        width = len(BATCH_FIELDS)
        slots = [
            self.batches[(i * MAX_WORKERS + w) * width : (i * MAX_WORKERS + w + 1) * width]
            for w in range(MAX_WORKERS)
        ]
        for k, field in enumerate(BATCH_FIELDS):
            column = [slot[k] for slot in slots]
            totals[field] = max(column) if field == "last_inference_ms" else sum(column)
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
                "cache_hit": none,
                "cache_miss": none,
            },
            "batch_stats": [],
        }
