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


def provider(workers: bool):
    """An SDK TracerProvider exporting over OTLP/HTTP; a worker's samples everything it is
    given (only sampled requests reach it), an HTTP process's parent-based, at RATIO for a
    request without a sampled parent unless OTEL_TRACES_SAMPLER says otherwise."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, TraceIdRatioBased

    named = {} if os.environ.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: SERVICE}
    if workers:
        sampler = ALWAYS_ON
    elif os.environ.get("OTEL_TRACES_SAMPLER"):
        sampler = None  # the SDK reads OTEL_TRACES_SAMPLER and _ARG
    else:
        sampler = ParentBased(TraceIdRatioBased(RATIO))
    made = TracerProvider(sampler=sampler, resource=Resource.create(named))
    made.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
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

    def __init__(self, made) -> None:
        self.provider = made
        self.tracer = made.get_tracer(SERVICE)

    def start(self, credentials: Mapping[str, str], protocol: str, model: str) -> Span:
        parent = PROPAGATOR.extract(credentials) if "traceparent" in credentials else None
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
