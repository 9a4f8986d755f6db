"""Prometheus metrics, correct across LitServe's processes.

HTTP servers and inference workers are separate processes, so prometheus_client runs in
multiprocess mode: each process writes its samples to files in PROMETHEUS_MULTIPROC_DIR
(set by `python -m service` before anything imports prometheus_client) and `/metrics`
adds them up. Gauges say how processes combine: in-flight requests sum over the live HTTP
processes; a model's info and load time are the live workers' maximum.
"""

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from .traffic import LATENCY_BUCKETS

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

REQUESTS = Counter(
    "tensorgate_requests",
    "Inference requests answered, by status code.",
    ["model", "version", "protocol", "code"],
)
REQUEST_DURATION = Histogram(
    "tensorgate_request_duration_seconds",
    "Inference request latency in the HTTP server.",
    ["model", "version", "protocol"],
    buckets=LATENCY_BUCKETS,
)
QUEUE_DURATION = Histogram(
    "tensorgate_queue_duration_seconds",
    "Time from queueing a request to its batch starting.",
    ["model"],
    buckets=LATENCY_BUCKETS,
)
BATCH_COMPUTE = Histogram(
    "tensorgate_batch_compute_duration_seconds",
    "Model time for one batch (all device calls).",
    ["model", "backend", "device"],
    buckets=LATENCY_BUCKETS,
)
BATCH_SIZE = Histogram(
    "tensorgate_batch_size", "Instances per batch.", ["model"], buckets=BATCH_BUCKETS
)
INSTANCES = Counter("tensorgate_instances", "Instances inferred.", ["model"])
DISPATCH_REASONS = ("idle", "full", "waited", "deadline")
BATCH_DISPATCH = Counter(
    "tensorgate_batch_dispatch",
    "Batches run, by why they left the queue: idle (the worker was free and ran what was "
    "queued), full (max batch size), waited (the batching policy waited and the wait ended), "
    "deadline (the earliest deadline cut the wait short).",
    ["model", "reason"],
)
MODEL_LOAD = Gauge(
    "tensorgate_model_load_seconds",
    "Seconds to load and warm up the model in a worker.",
    ["model", "version"],
    multiprocess_mode="livemax",
)
MODEL_INFO = Gauge(
    "tensorgate_model_info",
    "1 for each model version being served, with its backend and device.",
    ["model", "version", "backend", "device"],
    multiprocess_mode="livemax",
)
REJECTIONS = Counter(
    "tensorgate_rejections", "Requests refused before inference, by reason.", ["model", "reason"]
)
LOAD_FAILURES = Counter(
    "tensorgate_model_load_failures",
    "Versions that failed verification or loading while the server ran (lifecycle.py).",
    ["model", "version"],
)
CONNECTIONS_CLOSED = Counter(
    "tensorgate_connections_closed",
    "Connections closed on a client that broke a limit (header_too_large, read_timeout).",
    ["reason"],
)
HTTP_RESTARTS = Counter("tensorgate_http_restarts", "HTTP server processes replaced after dying.")
CACHE_REQUESTS = Counter(
    "tensorgate_cache_requests",
    "Response cache lookups (TENSORGATE_RESPONSE_CACHE), by result: hit or miss.",
    ["model", "result"],
)
SHADOW_COMPARISONS = Counter(
    "tensorgate_shadow_comparisons",
    "Requests computed again by the model's shadow version (TENSORGATE_SHADOW), by result: "
    "agree, disagree, error (the shadow failed), dropped (not sent: the shadow was busy or "
    "not serving).",
    ["model", "version", "result"],
)
SHADOW_DIFFERENCE = Histogram(
    "tensorgate_shadow_difference",
    "Largest absolute difference between an answer's outputs and its shadow's.",
    ["model", "version"],
    buckets=(1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 0.01, 0.1, 1),
)
CANARY_ROLLBACKS = Counter(
    "tensorgate_canary_rollbacks",
    "Canary versions whose traffic weight was set to 0 by TENSORGATE_CANARY_* limits.",
    ["model", "version"],
)
WORKER_RESTARTS = Counter(
    "tensorgate_worker_restarts", "Inference workers replaced after dying.", ["model"]
)


class QueueCollector:
    """The queue bound and what fills it, read from the engine's shared counters at scrape time:
    exact across HTTP processes, and nothing to update per request."""

    def __init__(
        self, models: Callable[[], list[str]], limit: int, in_flight: Callable[[str], int]
    ) -> None:
        """`models`: the models served now (models are added while serving)."""
        self.models, self.limit, self.in_flight = models, limit, in_flight

    def collect(self):
        limit = GaugeMetricFamily(
            "tensorgate_queue_limit",
            "Most requests queued or running per model (TENSORGATE_MAX_QUEUE).",
            labels=["model"],
        )
        queued = GaugeMetricFamily(
            "tensorgate_inflight_requests",
            "Inference requests admitted and not yet answered (queued or running), per model.",
            labels=["model"],
        )
        for model in self.models():
            limit.add_metric([model], self.limit)
            queued.add_metric([model], self.in_flight(model))
        yield limit
        yield queued


class CacheCollector:
    """Each response cache's bytes in use (its log so far and its index), read at scrape."""

    def __init__(self, used: Callable[[], dict[str, int]]) -> None:
        self.used = used

    def collect(self):
        held = GaugeMetricFamily(
            "tensorgate_cache_bytes",
            "Bytes of shared memory the response cache holds, per model (at most its bound).",
            labels=["model"],
        )
        for model, used in self.used().items():
            held.add_metric([model], used)
        yield held


class TrafficCollector:
    """Each serving version's share of its model's unversioned requests, read at scrape."""

    def __init__(self, shares: Callable[[], dict[str, dict[int, float]]]) -> None:
        self.shares = shares

    def collect(self):
        weight = GaugeMetricFamily(
            "tensorgate_traffic_weight",
            "Share (0-1) of the model's requests naming no version that go to the version "
            "(TENSORGATE_TRAFFIC; 0 once a canary is rolled back).",
            labels=["model", "version"],
        )
        for model, shares in self.shares().items():
            for version, share in shares.items():
                weight.add_metric([model, str(version)], share)
        yield weight


def render(*collectors: object) -> bytes:
    """The Prometheus text exposition of every live process's samples, and `collectors`'."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    for collector in collectors:
        registry.register(collector)
    return generate_latest(registry)


def forget_process(pid: int | None) -> None:
    """Drop a stopped worker's live gauges (its model info and load time): an unloaded or
    replaced version's worker no longer says it serves."""
    if pid is not None:
        mark_process_dead(pid)
