"""gRPC against V2 binary HTTP on the same server, side by side, with one load driver for both:
asyncio (uvloop) clients, each with one request in flight on its own connection (a raw
HTTP/1.1 keep-alive socket, or a grpc.aio channel), one instance per request. Rounds
alternate the two protocols, so drift hits both alike.

    python -m benchmarks.grpc_vs_http [--models mlp resnet-cifar] [--concurrency 1 16 64]
        [--duration 5] [--rounds 2] [--out docs/benchmarks/grpc.md]

The driver is Python and shares the machine's cores with the server: at high concurrency it
is part of what is measured, for both protocols alike.
"""

import asyncio
import os
import platform
import statistics
import time
from pathlib import Path

import grpc
import numpy as np
import uvloop
from tritonclient.grpc import service_pb2, service_pb2_grpc

from artifacts.manifest import read_manifest, versions
from load_tests.payloads import request_body
from load_tests.servers import running_service
from training import registry

from .__main__ import side_parser, write_side_report

PROTOCOLS = ("grpc", "v2-binary")


def repository_of(model: str, args) -> Path:
    return args.bench_repository if model in registry.BENCHMARK_MODELS else args.repository


def example(repository: Path, model: str) -> tuple[np.ndarray, object]:
    """One instance of the model's input (random, in the digits' pixel range) and its manifest."""
    found = versions(repository / model)
    if not found:
        raise SystemExit(
            f"no version of {model} in {repository}; "
            f"make export, or for resnet-cifar: python -m benchmarks --models {model}"
        )
    manifest = read_manifest(repository / model / str(found[-1]))
    shape = manifest.inputs[0].shape[1:]
    x = np.random.default_rng(0).uniform(0, 16, (1, *shape)).astype(np.float32)
    return x, manifest


async def http_client(host: str, port: int, body: bytes, headers: dict, model: str,
                      stop_at: float, latencies: list[float]) -> None:  # fmt: skip
    reader, writer = await asyncio.open_connection(host, port)
    lines = [f"POST /v2/models/{model}/infer HTTP/1.1", f"Host: {host}"]
    lines += [f"Content-Length: {len(body)}", *(f"{k}: {v}" for k, v in headers.items())]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
    try:
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"HTTP answered {head[:40]!r}")
            fields = (line.split(b":", 1) for line in head.lower().split(b"\r\n")[1:] if line)
            length = int(dict(fields)[b"content-length"])
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
    finally:
        writer.close()


async def grpc_client(target: str, request: service_pb2.ModelInferRequest,
                      stop_at: float, latencies: list[float]) -> None:  # fmt: skip
    async with grpc.aio.insecure_channel(target) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            await stub.ModelInfer(request)
            latencies.append(time.perf_counter() - started)


async def drive(protocol: str, service, model: str, x: np.ndarray, manifest, clients: int,
                seconds: float) -> dict:  # fmt: skip
    latencies: list[float] = []
    stop_at = time.perf_counter() + seconds
    if protocol == "grpc":
        request = service_pb2.ModelInferRequest(model_name=model)
        request.inputs.add(name=manifest.inputs[0].name, datatype="FP32", shape=list(x.shape))
        request.raw_input_contents.append(x.astype("<f4").tobytes())
        runs = [grpc_client(service.grpc, request, stop_at, latencies) for _ in range(clients)]
    else:
        body, headers = request_body("v2-binary", x, "b", manifest)
        host, port = service.url.removeprefix("http://").split(":")
        runs = [http_client(host, int(port), body, headers, model, stop_at, latencies)
                for _ in range(clients)]  # fmt: skip
    started = time.perf_counter()
    await asyncio.gather(*runs)
    took = time.perf_counter() - started
    ordered = sorted(latencies)
    return {
        "requests_per_s": len(latencies) / took,
        "p50_ms": 1e3 * ordered[len(ordered) // 2],
        "p99_ms": 1e3 * ordered[int(len(ordered) * 0.99)],
    }


def measure(args) -> list[dict]:
    rows = []
    for model in args.models:
        repository = repository_of(model, args)
        x, manifest = example(repository, model)
        with running_service(repository, args.logs, models=model, log_level="warning") as s:
            for clients in args.concurrency:
                for protocol in PROTOCOLS:  # warm both paths once
                    uvloop.run(drive(protocol, s, model, x, manifest, clients, 1.0))
                samples = {p: [] for p in PROTOCOLS}
                for _ in range(args.rounds):
                    for protocol in PROTOCOLS:
                        result = uvloop.run(
                            drive(protocol, s, model, x, manifest, clients, args.duration)
                        )
                        samples[protocol].append(result)
                for protocol, results in samples.items():
                    row = {"model": model, "protocol": protocol, "clients": clients}
                    for key in results[0]:
                        row[key] = statistics.median(r[key] for r in results)
                    rows.append(row)
                    rate, p50 = row["requests_per_s"], row["p50_ms"]
                    print(f"{model} c={clients} {protocol}: {rate:.0f} req/s, p50 {p50:.2f} ms")
    return rows


def report(rows: list[dict], args) -> str:
    lines = [
        "# gRPC against V2 binary HTTP",
        "",
        f"`python -m benchmarks.grpc_vs_http`, {time.strftime('%Y-%m-%d')}, "
        f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores, "
        f"{args.rounds} alternating rounds of {args.duration:g} s (medians), one instance per "
        "request, the service's defaults. The driver (Python, uvloop) shares the cores.",
        "",
        "| model | clients | gRPC req/s (p50 ms) | V2 binary HTTP req/s (p50 ms) | gRPC / HTTP |",
        "| --- | --- | --- | --- | --- |",
    ]
    by = {(r["model"], r["clients"], r["protocol"]): r for r in rows}
    for model in args.models:
        for clients in args.concurrency:
            g, h = by[(model, clients, "grpc")], by[(model, clients, "v2-binary")]
            lines.append(
                f"| {model} | {clients} | {g['requests_per_s']:,.0f} ({g['p50_ms']:.2f}) | "
                f"{h['requests_per_s']:,.0f} ({h['p50_ms']:.2f}) | "
                f"{g['requests_per_s'] / h['requests_per_s']:.2f}x |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    out, concurrency = "grpc.md", [1, 16, 64]
    parser = side_parser(
        "python -m benchmarks.grpc_vs_http", out, concurrency, rounds=2, duration=5.0
    )
    parser.add_argument("--models", nargs="+", default=["mlp", "resnet-cifar"])
    args = parser.parse_args(argv)
    args.logs.mkdir(parents=True, exist_ok=True)
    rows = measure(args)
    write_side_report(args.out, report(rows, args), rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
