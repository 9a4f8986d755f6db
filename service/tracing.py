"""OpenTelemetry traces (TENSORGATE_TRACING=otlp): the one seam to OpenTelemetry. Spans go
out through the SDK's batching processor and its OTLP/HTTP exporter, which the standard
OTEL_* variables configure (OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_SERVICE_NAME,
OTEL_TRACES_SAMPLER ...).

A request's trace, in the HTTP process: the server span `tensorgate.infer`, a child of the
client's W3C `traceparent` (an HTTP header or gRPC metadata) when it sends one. In the worker:
its `tensorgate.queue` child, from the request's admission to the start of its batch. A batch
carries many requests, so it is a trace of its own, as OpenTelemetry's conventions for batch
processing have it: the `tensorgate.batch` span, linked to the server span of every sampled
request it carried, and its `tensorgate.compute` child (the model's forward pass). Only a
sampled request's span crosses to the worker (its ids, in the Infer frame), so the workers
record spans for sampled requests alone and sample nothing themselves.
"""

import os
import random
import time
from collections.abc import Mapping
from typing import NamedTuple

from opentelemetry import trace
from opentelemetry.trace import Link, Span, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

SERVICE = "tensorgate"  # the service.name where OTEL_SERVICE_NAME sets none
RATIO = 0.01  # the share of requests traced where OTEL_TRACES_SAMPLER sets no sampler
PROPAGATOR = TraceContextTextMapPropagator()
SAMPLED = TraceFlags(TraceFlags.SAMPLED)
# attribute names, for every span that has them
MODEL, VERSION, BACKEND = "tensorgate.model", "tensorgate.version", "tensorgate.backend"


class SpanRef(NamedTuple):
    """A sampled server span, as it crosses to the worker."""

    trace_id: int
    span_id: int

    @property
    def context(self) -> SpanContext:
        return SpanContext(self.trace_id, self.span_id, is_remote=True, trace_flags=SAMPLED)


class Member(NamedTuple):
    """A sampled request that a worker took from its queue."""

    ref: SpanRef
    enqueued_at: float  # time.monotonic(), as the HTTP process sent it
    instances: int
    priority: int
    expired: bool  # answered 504 uncomputed


class Interval(NamedTuple):
    start: float  # time.monotonic()
    end: float


def root_ratio() -> float:
    """The share of requests without a traceparent to trace, from OTEL_TRACES_SAMPLER and
    _ARG (RATIO where none is set). ServerSpans draws it before the SDK is asked: the SDK's
    own unsampled span costs about 10 us, 5% of a small request's CPU."""
    sampler = os.environ.get("OTEL_TRACES_SAMPLER", "").strip().lower()
    if not sampler:
        return RATIO
    kind = sampler.removeprefix("parentbased_")
    if kind in ("always_on", "always_off"):
        return 1.0 if kind == "always_on" else 0.0
    if kind == "traceidratio":
        try:
            return min(1.0, max(0.0, float(os.environ.get("OTEL_TRACES_SAMPLER_ARG", "1"))))
        except ValueError:
            pass
    raise ValueError(
        f"OTEL_TRACES_SAMPLER={sampler!r} with _ARG "
        f"{os.environ.get('OTEL_TRACES_SAMPLER_ARG')!r}: tensorgate takes always_on, always_off "
        "or traceidratio with a ratio from 0 to 1 (parentbased_ or not: a client's sampled "
        "traceparent is always followed)"
    )


def provider(workers: bool, exporter=None):
    """An SDK TracerProvider exporting over OTLP/HTTP (or to `exporter`). It records every
    span it is asked for, but under a client's traceparent that is not sampled: only sampled
    requests reach a worker, and the HTTP process draws root_ratio() itself."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased

    named = {} if os.environ.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: SERVICE}
    sampler = ALWAYS_ON if workers else ParentBased(ALWAYS_ON)
    made = TracerProvider(sampler=sampler, resource=Resource.create(named))
    made.add_span_processor(BatchSpanProcessor(exporter or OTLPSpanExporter()))
    return made


def model_attributes(model: str, version: int, backend: str) -> dict[str, str | int]:
    return {MODEL: model, VERSION: version, BACKEND: backend}


def epoch_ns(monotonic: float, offset_ns: int) -> int:
    return int(monotonic * 1e9) + offset_ns


def clock_offset() -> int:
    """Nanoseconds from time.monotonic() to the epoch, which spans are timed in."""
    return time.time_ns() - time.monotonic_ns()


class ServerSpans:
    """The HTTP process's spans: one per inference request."""

    def __init__(self, made, ratio: float) -> None:
        """`ratio`: the share of requests without a valid traceparent to trace."""
        self.provider, self.ratio = made, ratio
        self.tracer = made.get_tracer(SERVICE)

    def start(self, credentials: Mapping[str, str], protocol: str, model: str) -> Span | None:
        """The request's server span; None where it is not traced."""
        parent = None
        if "traceparent" in credentials:
            parent = PROPAGATOR.extract(credentials)
            if not trace.get_current_span(parent).get_span_context().is_valid:
                parent = None  # a malformed header: drawn like a request without one
        if parent is None and random.random() >= self.ratio:
            return None
        return self.tracer.start_span(
            "tensorgate.infer",
            context=parent,
            kind=SpanKind.SERVER,
            attributes={MODEL: model, "tensorgate.protocol": protocol},
        )

    def shutdown(self) -> None:
        self.provider.shutdown()  # exports what is still buffered


def ref(span: Span) -> SpanRef | None:
    """The span's ids for the worker, if it is sampled."""
    context = span.get_span_context()
    return SpanRef(context.trace_id, context.span_id) if context.trace_flags.sampled else None


def trace_id(span: Span | None) -> str | None:
    """The span's trace id as W3C writes it (32 hex digits), if it is sampled."""
    if span is None or not span.get_span_context().trace_flags.sampled:
        return None
    return format(span.get_span_context().trace_id, "032x")


def finish(span: Span, attributes: dict, status: str, error: Exception | None) -> None:
    """End the server span with what the request came to: a server-side fault (5xx) marks
    it an error, a client's error does not."""
    if span.is_recording():
        span.set_attributes({**attributes, "tensorgate.status": status})
        if error is not None and getattr(error, "status", 500) >= 500:
            span.set_status(Status(StatusCode.ERROR, str(error)))
    span.end()


class BatchSpans:
    """A worker's spans, for the sampled requests of each batch it runs."""

    def __init__(self, made, attributes: dict[str, str | int], worker_id: int) -> None:
        self.provider = made
        self.tracer = made.get_tracer(SERVICE)
        self.attributes = {**attributes, "tensorgate.worker": worker_id}

    def record(self, members: list[Member], run: Interval, compute: Interval | None, size: int):
        """`run`: from taking the batch to its answers sent; `compute`: the model's call
        (None: nothing ran, every member expired); `size`: the batch's instances."""
        offset = clock_offset()
        for m in members:
            queue = self.tracer.start_span(
                "tensorgate.queue",
                context=trace.set_span_in_context(trace.NonRecordingSpan(m.ref.context)),
                attributes={
                    **self.attributes,
                    "tensorgate.instances": m.instances,
                    "tensorgate.priority": m.priority,
                },
                start_time=epoch_ns(m.enqueued_at, offset),
            )
            if m.expired:
                queue.set_status(Status(StatusCode.ERROR, "deadline: not computed"))
            queue.end(epoch_ns(run.start, offset))
        if compute is None:
            return
        batch = self.tracer.start_span(
            "tensorgate.batch",
            context=trace.set_span_in_context(trace.INVALID_SPAN),  # a trace of its own
            links=[Link(m.ref.context) for m in members if not m.expired],
            attributes={**self.attributes, "tensorgate.batch_size": size},
            start_time=epoch_ns(run.start, offset),
        )
        inner = trace.set_span_in_context(batch)
        self.tracer.start_span(
            "tensorgate.compute", context=inner, start_time=epoch_ns(compute.start, offset)
        ).end(epoch_ns(compute.end, offset))
        batch.end(epoch_ns(run.end, offset))

    def shutdown(self) -> None:
        self.provider.shutdown()
