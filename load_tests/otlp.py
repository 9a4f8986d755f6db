"""A small OTLP/HTTP trace receiver on a loopback port, for the tests, the benchmark and the
README's walk where no OpenTelemetry Collector is installed: it decodes each export with
opentelemetry-proto's own messages and keeps the spans, flattened.

    python -m load_tests.otlp [--port 4318]   # prints each span it receives, one per line
"""

import argparse
import gzip
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import NamedTuple

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue


class Received(NamedTuple):
    """One span as it arrived; ids as W3C writes them (hex), "" for no parent."""

    name: str
    service: str  # the resource's service.name
    trace_id: str
    span_id: str
    parent_id: str
    start_ns: int
    end_ns: int
    attributes: dict
    links: tuple[tuple[str, str], ...]  # (trace id, span id) each
    error: bool  # its status is ERROR

    @property
    def ms(self) -> float:
        return (self.end_ns - self.start_ns) / 1e6


def value(v: AnyValue) -> object:
    return getattr(v, v.WhichOneof("value")) if v.WhichOneof("value") else None


def spans_of(body: bytes) -> list[Received]:
    request = ExportTraceServiceRequest.FromString(body)
    found = []
    for resource in request.resource_spans:
        named = {a.key: value(a.value) for a in resource.resource.attributes}
        for scope in resource.scope_spans:
            for s in scope.spans:
                found.append(
                    Received(
                        name=s.name,
                        service=str(named.get("service.name", "")),
                        trace_id=s.trace_id.hex(),
                        span_id=s.span_id.hex(),
                        parent_id=s.parent_span_id.hex(),
                        start_ns=s.start_time_unix_nano,
                        end_ns=s.end_time_unix_nano,
                        attributes={a.key: value(a.value) for a in s.attributes},
                        links=tuple((k.trace_id.hex(), k.span_id.hex()) for k in s.links),
                        error=s.status.code == s.status.STATUS_CODE_ERROR,
                    )
                )
    return found


class Receiver(ThreadingHTTPServer):
    """POST /v1/traces, as OTLP/HTTP with protobuf bodies sends them."""

    def __init__(self, port: int = 0, show: bool = False) -> None:
        """`show`: print each span as it arrives."""
        super().__init__(("127.0.0.1", port), Handler)
        self.show = show
        self.spans: list[Received] = []
        self.exports = 0
        self.lock = threading.Lock()

    @property
    def endpoint(self) -> str:
        """For OTEL_EXPORTER_OTLP_ENDPOINT (the exporter appends /v1/traces)."""
        return f"http://127.0.0.1:{self.server_address[1]}"

    def received(self) -> list[Received]:
        with self.lock:
            return list(self.spans)


class Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        if self.path != "/v1/traces":
            self.send_error(404)
            return
        spans = spans_of(body)
        with self.server.lock:
            self.server.spans += spans
            self.server.exports += 1
        if self.server.show:
            for span in spans:
                print(line(span), flush=True)
        answer = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: a test's output is its own."""


def line(span: Received) -> str:
    parent = f" parent {span.parent_id}" if span.parent_id else ""
    links = "".join(f" link {t}/{s}" for t, s in span.links)
    error = " ERROR" if span.error else ""
    return (
        f"{span.name} {span.ms:.3f} ms trace {span.trace_id} span {span.span_id}{parent}"
        f"{links}{error} {span.attributes}"
    )


@contextmanager
def receiving() -> Iterator[Receiver]:
    receiver = Receiver()
    thread = threading.Thread(target=receiver.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        receiver.shutdown()
        receiver.server_close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser("python -m load_tests.otlp", description=__doc__)
    parser.add_argument("--port", type=int, default=4318, help="OTLP/HTTP's own (default)")
    args = parser.parse_args(argv)
    receiver = Receiver(args.port, show=True)
    print(f"receiving OTLP/HTTP traces on {receiver.endpoint}/v1/traces", flush=True)
    with suppress(KeyboardInterrupt):
        receiver.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
