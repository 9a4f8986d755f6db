"""OpenTelemetry traces and the access log. In process first (the data plane and its workers
over a real engine, spans kept by the SDK's in-memory exporter): a request's spans, their
parents, links and times. Then served for real, exporting over OTLP/HTTP to a receiver built
on opentelemetry-proto: HTTP and gRPC clients' traceparents honoured, and the access log's
JSON records agreeing with the spans."""

import asyncio
import json
import logging
import time
from typing import NamedTuple

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from helpers import INPUT_NAME, rows, v2_json
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from planes import MODEL, Plane

from load_tests.otlp import receiving
from load_tests.servers import running_service
from service.errors import BadRequest, InferenceFailed
from service.protocol import Decoded
from service.tracing import provider, root_ratio

TRACE, CLIENT_SPAN = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
SLACK_NS = 200_000  # clocks: the worker's spans are timed from time.monotonic(), converted


def traceparent(trace: str = TRACE, span: str = CLIENT_SPAN, sampled: bool = True) -> str:
    return f"00-{trace}-{span}-{'01' if sampled else '00'}"


def decoder(rows: int = 2, request_id: str | None = None):
    async def decode(sig):
        return Decoded((np.ones((rows, 3), np.float32),), id=request_id)

    return decode


@pytest.fixture
def traced(tmp_path):
    """A data plane whose spans are kept in memory; requests are traced only where the
    client's traceparent is sampled."""
    exporter = InMemorySpanExporter()
    server, workers = provider(False, exporter), provider(True, exporter)
    yield Plane(tmp_path, traced=server, sampled=workers), Kept(exporter, (server, workers))
    server.shutdown()
    workers.shutdown()


class Kept(NamedTuple):
    """The spans exported in memory, by the providers that batch them."""

    exporter: InMemorySpanExporter
    providers: tuple

    def spans(self) -> tuple:
        for made in self.providers:
            made.force_flush()
        return self.exporter.get_finished_spans()


def finished(kept: Kept, n: int) -> dict[str, list]:
    """The spans by name, once `n` have ended (the workers record theirs after answering)."""
    until = time.monotonic() + 5
    while len(kept.spans()) < n and time.monotonic() < until:
        time.sleep(0.01)
    spans = kept.spans()
    assert len(spans) == n, [s.name for s in spans]
    by_name: dict[str, list] = {}
    for span in spans:
        by_name.setdefault(span.name.removeprefix("tensorgate."), []).append(span)
    return by_name


def test_a_sampled_request_is_traced_through_its_queue_into_its_batch_and_compute(traced):
    t, kept = traced
    credentials = {"traceparent": traceparent()}
    done = asyncio.run(t.plane.infer(MODEL, "1", "v2", credentials, decoder()))
    assert done.model.version == 1
    spans = finished(kept, 4)
    (server,), (queue,), (batch,), (compute,) = (
        spans[n] for n in ("infer", "queue", "batch", "compute")
    )
    # the client's trace continues: its span is the server span's parent
    assert format(server.context.trace_id, "032x") == TRACE
    assert format(server.parent.span_id, "016x") == CLIENT_SPAN and server.parent.is_remote
    assert server.kind == SpanKind.SERVER
    assert {k: server.attributes[k] for k in ("tensorgate.model", "tensorgate.version")} == {
        "tensorgate.model": MODEL,
        "tensorgate.version": 1,
    }
    assert server.attributes["tensorgate.protocol"] == "v2"
    assert server.attributes["tensorgate.status"] == "200"
    assert server.attributes["tensorgate.backend"] == "onnxruntime"
    # the queue span crossed the process hop as the server span's child
    assert queue.context.trace_id == server.context.trace_id
    assert queue.parent.span_id == server.context.span_id
    assert queue.attributes["tensorgate.instances"] == 2
    assert queue.attributes["tensorgate.version"] == 1
    # the batch is a trace of its own, linked to the request; the compute is its child
    assert batch.parent is None and batch.context.trace_id != server.context.trace_id
    assert [link.context.span_id for link in batch.links] == [server.context.span_id]
    assert batch.attributes["tensorgate.batch_size"] == 2
    assert compute.parent.span_id == batch.context.span_id
    # the durations add up: queue, then batch, within the server span; compute in the batch
    assert server.start_time - SLACK_NS <= queue.start_time <= queue.end_time
    assert queue.end_time == batch.start_time
    assert batch.start_time <= compute.start_time <= compute.end_time <= batch.end_time
    assert batch.end_time <= server.end_time + SLACK_NS
    inside = (queue.end_time - queue.start_time) + (batch.end_time - batch.start_time)
    assert inside <= server.end_time - server.start_time + SLACK_NS
    # and the server span says what the worker measured
    assert server.attributes["tensorgate.queue_ms"] == pytest.approx(
        (queue.end_time - queue.start_time) / 1e6, abs=0.01
    )


def test_a_batch_span_links_every_traced_request_it_carried_and_counts_their_instances(traced):
    t, kept = traced

    async def together():  # sent in one turn of the loop: their frames leave in one write
        await t.plane.infer(MODEL, "2", "v2", {}, decoder())  # connects; not traced
        return await asyncio.gather(
            *(
                t.plane.infer(
                    MODEL,
                    "2",
                    "v2",
                    {"traceparent": traceparent(span=f"{i:016x}")},
                    decoder(rows=i),
                )
                for i in (1, 2, 3)
            )
        )

    asyncio.run(together())
    spans = finished(kept, 3 + 3 + 2)
    (batch,) = spans["batch"]
    servers = {s.context.span_id: s for s in spans["infer"]}
    assert {link.context.span_id for link in batch.links} == set(servers)
    assert batch.attributes["tensorgate.batch_size"] == 6
    assert sorted(q.attributes["tensorgate.instances"] for q in spans["queue"]) == [1, 2, 3]
    assert {q.parent.span_id for q in spans["queue"]} == set(servers)


def test_an_unsampled_traceparent_or_none_records_nothing_and_sends_nothing_to_the_worker(
    traced,
):
    t, kept = traced
    for credentials in ({"traceparent": traceparent(sampled=False)}, {}):
        asyncio.run(t.plane.infer(MODEL, "1", "v2", credentials, decoder()))
    time.sleep(0.1)
    assert kept.spans() == ()


def test_without_a_valid_traceparent_a_request_is_traced_at_the_servers_ratio(traced):
    t, kept = traced
    t.plane.spans.ratio = 1.0
    for credentials in ({}, {"traceparent": "00-not-a-trace-01"}):
        asyncio.run(t.plane.infer(MODEL, "1", "v1", credentials, decoder()))
    roots = finished(kept, 8)["infer"]
    assert [s.parent for s in roots] == [None, None]  # roots of traces of their own
    assert all(format(s.context.trace_id, "032x") != TRACE for s in roots)


@pytest.mark.parametrize(
    ("sampler", "arg", "ratio"),
    [
        (None, None, 0.01),
        ("parentbased_always_off", None, 0.0),
        ("always_on", None, 1.0),
        ("parentbased_traceidratio", "0.25", 0.25),
        ("TraceIdRatio", "7", 1.0),
    ],
)
def test_the_ratio_follows_otel_traces_sampler(monkeypatch, sampler, arg, ratio):
    for name, value in (("OTEL_TRACES_SAMPLER", sampler), ("OTEL_TRACES_SAMPLER_ARG", arg)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    assert root_ratio() == ratio


@pytest.mark.parametrize(("sampler", "arg"), [("jaeger_remote", None), ("traceidratio", "x")])
def test_a_sampler_tensorgate_cannot_follow_is_refused_naming_what_it_takes(
    monkeypatch, sampler, arg
):
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", sampler)
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", arg or "")
    with pytest.raises(ValueError, match="always_on, always_off or traceidratio"):
        root_ratio()


def test_a_client_error_leaves_the_span_unmarked_and_a_server_fault_marks_it(traced):
    t, kept = traced

    async def bad(sig):
        raise BadRequest("input 'x': expected FP32")

    with pytest.raises(BadRequest):
        asyncio.run(t.plane.infer(MODEL, "1", "v2", {"traceparent": traceparent()}, bad))
    (client,) = finished(kept, 1)["infer"]  # never queued: no worker span
    assert client.attributes["tensorgate.status"] == "400" and client.status.is_unset
    t.workers[1].predict = broken
    with pytest.raises(InferenceFailed):
        asyncio.run(t.plane.infer(MODEL, "1", "v2", {"traceparent": traceparent()}, decoder()))
    spans = finished(kept, 3)  # no batch span: the batch failed (its queue span stays)
    server = spans["infer"][1]
    assert server.attributes["tensorgate.status"] == "500"
    assert not server.status.is_ok and "inference failed" in server.status.description
    assert spans["queue"][0].parent.span_id == server.context.span_id


def broken(inputs):
    raise RuntimeError("the device fell over")


def access_records(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "tensorgate.access"]


def test_the_access_log_records_each_request_with_the_id_the_client_gave(tmp_path, caplog):
    t = Plane(tmp_path, access_log=True)
    caplog.set_level(logging.INFO, "tensorgate.access")
    asyncio.run(t.plane.infer(MODEL, "1", "v2", {"x-request-id": "from-header"}, decoder()))
    asyncio.run(t.plane.infer(MODEL, None, "grpc", {}, decoder(request_id="from\nbody")))
    asyncio.run(t.plane.infer(MODEL, "2", "v1", {}, decoder()))
    header, body, made = access_records(caplog)
    assert header.request_id == "from-header" and header.levelno == logging.INFO
    assert (header.model, header.version, header.protocol, header.status) == (MODEL, 1, "v2", "200")
    assert 0 < header.queue_ms < header.ms and 0 < header.compute_ms < header.ms
    assert header.trace_id is None  # tracing is off
    assert body.request_id == "from\\nbody"  # escaped: one record is one line
    assert (body.version, body.protocol, body.status) == (2, "grpc", "OK")
    assert made.request_id != body.request_id and "-" in made.request_id
    assert "v1 doubler v2 200" in made.getMessage()


def test_a_server_fault_is_logged_with_the_request_id_with_the_access_log_off(tmp_path, caplog):
    t = Plane(tmp_path)
    t.workers[1].predict = broken
    caplog.set_level(logging.INFO, "tensorgate.access")
    asyncio.run(t.plane.infer(MODEL, "2", "v2", {}, decoder()))  # fine: not logged
    with pytest.raises(InferenceFailed):
        asyncio.run(t.plane.infer(MODEL, "1", "v2", {"x-request-id": "r-17"}, decoder()))
    (fault,) = access_records(caplog)
    assert fault.levelno == logging.ERROR and fault.request_id == "r-17"
    assert fault.status == "500" and "the device fell over" in fault.error
    assert fault.queue_ms is None  # it never came back computed


# -- served for real, over OTLP/HTTP ------------------------------------------------------


@pytest.fixture(scope="module")
def exporting(exported, tmp_path_factory):
    """The real service exporting to a receiver, tracing only what clients sample."""
    with receiving() as receiver, pytest.MonkeyPatch.context() as env:
        env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
        env.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")  # milliseconds between exports
        env.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
        env.setenv("OTEL_TRACES_SAMPLER_ARG", "0")
        logs = tmp_path_factory.mktemp("logs")
        settings = {"tracing": "otlp", "access_log": True, "log_format": "json"}
        with running_service(exported, logs, **settings) as service:
            yield service, receiver


def received(receiver, names: set[str], trace: str, n: int) -> dict:
    until = time.monotonic() + 10
    while time.monotonic() < until:
        spans = [s for s in receiver.received() if s.name.removeprefix("tensorgate.") in names]
        mine = [s for s in spans if s.trace_id == trace or any(t == trace for t, _ in s.links)]
        if len(mine) >= n:
            return {s.name.removeprefix("tensorgate."): s for s in mine}
        time.sleep(0.05)
    raise AssertionError(f"{n} spans of trace {trace} did not arrive: {receiver.received()}")


def test_served_http_and_grpc_requests_continue_the_clients_traces(exporting):
    service, receiver = exporting
    x = rows("mlp", 3)
    http_trace, grpc_trace = "1" * 32, "2" * 32
    answer = service.post(
        "/v2/models/mlp/infer",
        json=v2_json(x),
        headers={"traceparent": traceparent(http_trace), "x-request-id": "http-1"},
    )
    assert answer.status_code == 200
    client = grpcclient.InferenceServerClient(service.grpc)
    tensor = grpcclient.InferInput(INPUT_NAME, [1, 30], "FP32")
    tensor.set_data_from_numpy(rows("mlp", 1))
    client.infer("mlp", [tensor], headers={"traceparent": traceparent(grpc_trace)})
    service.post("/v1/models/mlp:predict", json={"instances": x.tolist()})  # not sampled

    names = {"infer", "queue", "batch", "compute"}
    http = received(receiver, names, http_trace, 3)
    server, queue = http["infer"], http["queue"]
    assert server.service == "tensorgate" and server.parent_id == CLIENT_SPAN
    assert server.attributes["tensorgate.model"] == "mlp"
    assert server.attributes["tensorgate.version"] == 1
    assert server.attributes["tensorgate.protocol"] == "v2"
    assert queue.parent_id == server.span_id and queue.attributes["tensorgate.instances"] == 3
    batch = next(s for s in receiver.received() if (http_trace, server.span_id) in s.links)
    assert batch.attributes["tensorgate.backend"] == server.attributes["tensorgate.backend"]
    assert batch.attributes["tensorgate.batch_size"] >= 3
    compute = next(s for s in receiver.received() if s.parent_id == batch.span_id)
    assert compute.name == "tensorgate.compute"
    assert queue.ms + batch.ms <= server.ms + SLACK_NS / 1e6
    assert batch.start_ns <= compute.start_ns <= compute.end_ns <= batch.end_ns

    grpc = received(receiver, {"infer"}, grpc_trace, 1)
    assert grpc["infer"].parent_id == CLIENT_SPAN
    assert grpc["infer"].attributes["tensorgate.protocol"] == "grpc"
    time.sleep(0.3)  # an export later: still no span of the unsampled request
    assert len([s for s in receiver.received() if s.name == "tensorgate.infer"]) == 2

    records = [json.loads(line) for line in service.log.read_text().splitlines()]
    (access,) = [r for r in records if r.get("request_id") == "http-1"]
    assert access["trace_id"] == http_trace and access["status"] == "200"
    assert (access["model"], access["version"], access["protocol"]) == ("mlp", 1, "v2")
    assert access["queue_ms"] == pytest.approx(queue.ms, abs=0.01)
    assert access["compute_ms"] == pytest.approx(compute.ms, abs=0.01)
    v1 = [r for r in records if r.get("protocol") == "v1"]
    assert len(v1) == 1 and v1[0]["trace_id"] is None and v1[0]["queue_ms"] > 0
