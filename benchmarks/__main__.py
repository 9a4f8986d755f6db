"""The side-by-side benchmark: each server on loopback, one at a time, driven by wrk at several
concurrencies for every model; plus each backend's in-process batched throughput (no HTTP).

    python -m benchmarks                       # make bench: everything, 3 rounds, ~90 min
    python -m benchmarks --models mlp --servers floor --concurrency 1 --duration 1

Besides the three served models it measures resnet-cifar, the same ResNet at 3x32x32 with
(in effect) random weights, where compute dominates. It is trained and exported through the
same pipeline on first use, into its own repository (--bench-repository), so that
`make serve` never serves it.

Writes results.json, results.md (tables) and bench.png (throughput and p99 vs concurrency)
to --out: runs/bench/ by default, a scratch folder, so a quick run never replaces the
committed results; `make bench` writes docs/benchmarks/. Servers' logs go to --logs. The 2
cores are not split: wrk (one thread, C, event-driven) and the server share them, the same
for every server, so ratios compare like with like.
"""

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from artifacts.manifest import ARTIFACTS, BACKENDS, read_manifest, versions
from artifacts.runtimes import load_runtime
from export.pipeline import export_model
from load_tests.payloads import request_body
from load_tests.servers import free_port, running, running_service
from service.host import idle_policy
from service.settings import MAX_DEFAULT_API_SERVERS
from training import registry, train_and_save
from training.checkpoint import CHECKPOINT_NAME

SERVERS = (
    "floor",
    "naive-def",
    "naive-async",
    "litserve",
    "torchserve",
    "tensorgate-ort",
    "tensorgate-ort-bt0",
    "tensorgate-ts",
)
# pip install torchserve torch-model-archiver (not a project dependency)
TORCHSERVE = Path(sys.executable).parent / "torchserve"
CONCURRENCY = (1, 2, 4, 8, 16, 64)
# tensorgate runs with its defaults, as `make serve` does, with only the backend chosen;
# tensorgate-ort-bt0 is the same with TENSORGATE_BATCH_TIMEOUT=0 (never wait for a batch).
TENSORGATE = {
    "tensorgate-ort": {"backend": "onnxruntime"},
    "tensorgate-ort-bt0": {"backend": "onnxruntime", "batch_timeout": 0},
    "tensorgate-ts": {"backend": "torchscript"},
}
CEILING_BATCHES = (1, 16, 64)


@dataclass
class Point:
    server: str  # e.g. "tensorgate-ort v2-binary"
    model: str
    concurrency: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    rps_rounds: list[float] = field(default_factory=list)  # each round's; rps is their median


SCRATCH = Path("runs/bench")  # where a benchmark writes unless told: ignored by git
LOGS = Path("runs/bench-logs")


def side_parser(
    prog: str, out: str, concurrency: list[int], rounds: int, duration: float
) -> argparse.ArgumentParser:
    """The arguments the side benchmarks (haltpoll, grpc_vs_http, paired) share."""
    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("--concurrency", nargs="+", type=int, default=concurrency)
    parser.add_argument("--rounds", type=int, default=rounds)
    parser.add_argument("--duration", type=float, default=duration)
    parser.add_argument("--runs", type=Path, default=Path("runs"))
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--bench-repository", type=Path, default=Path("runs/bench-repository"))
    parser.add_argument("--logs", type=Path, default=LOGS)
    parser.add_argument(
        "--out", type=Path, default=SCRATCH / out,
        help=f"the report (default: {SCRATCH / out}; the committed one: docs/benchmarks/{out})",
    )  # fmt: skip
    return parser


def write_side_report(out: Path, report: str, rows: list[dict]) -> None:
    """A side benchmark's report as `out` (markdown) and its rows beside it as JSON."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    out.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")
    print(f"wrote {out}")


def medians(rounds: list[list[Point]]) -> list[Point]:
    """One Point per (server, model, concurrency): the median over the rounds (errors summed)."""
    by_key: dict[tuple, list[Point]] = {}
    for points in rounds:
        for p in points:
            by_key.setdefault((p.server, p.model, p.concurrency), []).append(p)
    return [
        Point(
            *key,
            rps=statistics.median(p.rps for p in ps),
            p50_ms=statistics.median(p.p50_ms for p in ps),
            p99_ms=statistics.median(p.p99_ms for p in ps),
            errors=sum(p.errors for p in ps),
            rps_rounds=[round(p.rps, 1) for p in ps],
        )
        for key, ps in by_key.items()
    ]


def wrk(url: str, body: bytes, headers: dict, concurrency: int, seconds: float) -> tuple:
    """(requests/s, p50 ms, p99 ms, errors) of one wrk run POSTing `body`."""
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "body").write_bytes(body)  # binary bodies go through a file, not Lua text
        lines = [
            f'local f = io.open("{tmp}/body", "rb")',
            'wrk.body = f:read("*all")',
            "f:close()",
            'wrk.method = "POST"',
        ]
        lines += [
            f'wrk.headers["{k}"] = "{v}"'
            for k, v in {"Content-Type": "application/json", **headers}.items()
        ]
        (Path(tmp) / "post.lua").write_text("\n".join(lines) + "\n")
        command = [
            "wrk",
            "-t1",
            f"-c{concurrency}",
            f"-d{max(1, round(seconds))}s",
            "--latency",
            "-s",
            f"{tmp}/post.lua",
            url,
        ]
        out = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60).stdout

    def latency(q: str) -> float:
        value, unit = re.search(rf"\s{q}%\s+([\d.]+)(us|ms|s)", out).groups()
        return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    socket = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = sum(map(int, socket.groups())) if socket else 0
    errors += int(non_2xx.group(1)) if non_2xx else 0
    return rps, latency("50"), latency("99"), errors


def bodies(args, model: str) -> dict[str, tuple[bytes, dict]]:
    """One held-out instance, as V1 JSON and as V2 binary."""
    x = registry.get(model).dataset().test.x.numpy()[:1]
    manifest = read_manifest(served_version(repository(args, model), model))
    return {p: request_body(p, x, "1", manifest) for p in ("v1", "v2-binary")}


def repository(args, model: str) -> Path:
    return args.bench_repository if model in registry.BENCHMARK_MODELS else args.repository


def served_version(repository: Path, model: str) -> Path:
    """The version folder tensorgate serves by default (the highest), so that every server
    and the in-process ceiling run the same artifacts."""
    return repository / model / str(max(versions(repository / model)))


def prepare_benchmark_models(args) -> None:
    """Train and export the benchmark-only models that have no checkpoint or version yet."""
    for model in (m for m in args.models if m in registry.BENCHMARK_MODELS):
        if not (args.runs / model / CHECKPOINT_NAME).is_file():
            train_and_save(model, args.runs)
        if not versions(args.bench_repository / model):
            export_model(args.runs / model / CHECKPOINT_NAME, args.bench_repository)


@contextmanager
def server(name: str, models: list[str], runs: Path, repository: Path, logs: Path) -> Iterator[str]:
    """Start one server for `models`; yield its base URL."""
    if name.startswith("tensorgate"):
        with running_service(
            repository, logs, models=",".join(models), **TENSORGATE[name]
        ) as service:
            yield service.url
        return
    if name == "torchserve":
        with torchserve(models, repository, logs) as url:
            yield url
        return
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "benchmarks.baselines",
        name,
        "--port",
        str(port),
        "--runs",
        str(runs),
        "--models",
        *models,
    ]
    ready = "/health" if name == "litserve" else "/ready"
    url = f"http://127.0.0.1:{port}"
    with running(command, dict(os.environ), url, ready, logs / f"{name}.log", timeout=120):
        yield url


@contextmanager
def torchserve(models: list[str], repository: Path, logs: Path) -> Iterator[str]:
    """TorchServe on the exported TorchScript files: batch size 32, max batch delay 5 ms, one
    worker per model, token auth off, quiet logs; answers POST /predictions/<model>."""
    store = Path(tempfile.mkdtemp(prefix="torchserve-", dir=logs))
    handler = Path(__file__).with_name("torchserve_handler.py")
    for model in models:
        serialized = served_version(repository, model) / ARTIFACTS["torchscript"].file_name
        subprocess.run(
            [str(TORCHSERVE.with_name("torch-model-archiver")), "--model-name", model,
             "--version", "1", "--serialized-file", str(serialized), "--handler", str(handler),
             "--export-path", str(store)],
            check=True,
        )  # fmt: skip
    port, management, metrics = free_port(), free_port(), free_port()
    registered = {
        m: {"1": {"marName": f"{m}.mar", "minWorkers": 1, "maxWorkers": 1, "batchSize": 32,
                  "maxBatchDelay": 5, "responseTimeout": 30}}
        for m in models
    }  # fmt: skip
    (store / "config.properties").write_text(
        f"inference_address=http://127.0.0.1:{port}\n"
        f"management_address=http://127.0.0.1:{management}\n"
        f"metrics_address=http://127.0.0.1:{metrics}\n"
        f"model_store={store}\nload_models=all\nmodels={json.dumps(registered)}\n"
        "disable_token_authorization=true\nenable_envvars_config=false\n"
        "install_py_dep_per_model=false\ndisable_system_metrics=true\nasync_logging=true\n"
    )
    log4j = store / "log4j2.xml"  # quiet: only warnings, to the console
    log4j.write_text(
        '<Configuration status="WARN"><Appenders><Console name="c" target="SYSTEM_OUT">'
        '<PatternLayout pattern="%m%n"/></Console></Appenders><Loggers>'
        '<Root level="warn"><AppenderRef ref="c"/></Root></Loggers></Configuration>\n'
    )
    command = [str(TORCHSERVE), "--start", "--foreground", "--ncs", "--disable-token-auth",
               "--ts-config", str(store / "config.properties"), "--model-store", str(store),
               "--log-config", str(log4j)]  # fmt: skip
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "LOG_LOCATION": str(store),
        "METRICS_LOCATION": str(store),
    }
    url = f"http://127.0.0.1:{port}"
    with running(command, env, url, "/ping", logs / "torchserve.log", timeout=180):
        yield url


def torchserve_missing() -> str | None:
    """Why TorchServe cannot run here, or None."""
    if not TORCHSERVE.exists():
        return "not installed (pip install torchserve torch-model-archiver)"
    if shutil.which("java") is None:
        return "needs Java (a JDK 11 or newer)"
    return None


def path(server_name: str, protocol: str, model: str) -> str:
    if server_name == "torchserve":
        return f"/predictions/{model}"
    return f"/v2/models/{model}/infer" if protocol == "v2-binary" else f"/v1/models/{model}:predict"


def measure_servers(args) -> list[Point]:
    points = []
    for name in args.servers:
        missing = torchserve_missing() if name == "torchserve" else None
        if missing:
            print(f"torchserve: skipped, {missing}", flush=True)
            continue
        # litserve serves one model per server; tensorgate one repository's models at once
        groups = [[m] for m in args.models] if name == "litserve" else by_repository(args)
        for models in groups:
            with server(name, models, args.runs, repository(args, models[0]), args.logs) as url:
                for model in models:
                    for protocol, (body, headers) in bodies(args, model).items():
                        if protocol == "v2-binary" and not name.startswith("tensorgate"):
                            continue
                        url_path = path(name, protocol, model)
                        label = f"{name} {protocol}" if name.startswith("tensorgate") else name
                        for c in args.concurrency:
                            wrk(url + url_path, body, headers, c, 1)  # warm up
                            rps, p50, p99, errors = wrk(
                                url + url_path, body, headers, c, args.duration
                            )
                            points.append(Point(label, model, c, rps, p50, p99, errors))
                            print(
                                f"{label:26} {model:12} c={c:<3} {rps:9.0f} req/s  p50 "
                                f"{p50:7.2f} ms  p99 {p99:7.2f} ms  errors {errors}",
                                flush=True,
                            )
    return points


def by_repository(args) -> list[list[str]]:
    groups: dict[Path, list[str]] = {}
    for model in args.models:
        groups.setdefault(repository(args, model), []).append(model)
    return list(groups.values())


def measure_idle_penalty(args) -> dict:
    """p50 of one connection's mlp requests with a 50 ms batch timeout, and with batching off
    (max batch 1): what the batch timeout costs a client on an idle server."""
    body, headers = bodies(args, "mlp")["v1"]
    p50 = {}
    for label, settings in (
        ("batch_timeout_50ms", {"batch_timeout": 0.05}),
        ("batching_off", {"max_batch_size": 1, "batch_timeout": 0}),
    ):
        with running_service(args.repository, args.logs, log_level="warning", **settings) as svc:
            url = svc.url + "/v1/models/mlp:predict"
            wrk(url, body, headers, 1, 1)  # warm up
            p50[label] = wrk(url, body, headers, 1, args.duration)[1]
            print(f"idle penalty: {label:20} p50 {p50[label]:.2f} ms", flush=True)
    return p50


def measure_footprint(args) -> float:
    """PSS (MB) of the whole process group serving the three models with the defaults, idle
    after warm-up: what the service costs a host, shared pages counted once."""
    with running_service(args.repository, args.logs) as service:
        time.sleep(2)  # past start-up's transient allocations
        total_kb = 0
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit() and _group(proc) == service.process.pid:
                total_kb += _pss_kb(proc)
    print(f"footprint: {total_kb / 1024:.0f} MB PSS, idle, three models", flush=True)
    return total_kb / 1024


def _group(proc: Path) -> int | None:
    try:  # the process group is field 5 of stat, after the parenthesised command name
        return int((proc / "stat").read_text().rsplit(")", 1)[1].split()[2])
    except (OSError, IndexError, ValueError):
        return None


def _pss_kb(proc: Path) -> int:
    try:
        rollup = (proc / "smaps_rollup").read_text()
    except OSError:
        return 0
    return int(re.search(r"^Pss:\s+(\d+) kB", rollup, re.MULTILINE).group(1))


def measure_ceiling(args) -> list[dict]:
    """Each backend's batched samples/s in this process, 1 thread, no HTTP."""
    rows = []
    for model in args.models:
        x = registry.get(model).dataset().test.x.numpy()
        version_dir = served_version(repository(args, model), model)
        for backend in BACKENDS:
            path = version_dir / ARTIFACTS[backend].file_name
            runner = load_runtime(backend, path, "cpu", threads=1)
            for batch in CEILING_BATCHES:
                xb = np.ascontiguousarray(np.resize(x, (batch, *x.shape[1:])))
                for _ in range(20):
                    runner.infer((xb,))
                calls, started = 0, time.perf_counter()
                while time.perf_counter() - started < min(1.0, args.duration):
                    runner.infer((xb,))
                    calls += 1
                rate = calls * batch / (time.perf_counter() - started)
                rows.append(
                    {"model": model, "backend": backend, "batch": batch, "samples_per_s": rate}
                )
                print(f"in-process {backend:12} {model:12} batch {batch:3} {rate:12.0f} samples/s")
    return rows


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return (
        f"{os.cpu_count()} cores ({cpu}), {idle_policy().describe()}, "
        f"Python {platform.python_version()}, {platform.system()}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--models", nargs="+", default=list(registry.ALL_MODELS), choices=list(registry.ALL_MODELS)
    )
    parser.add_argument("--servers", nargs="+", default=list(SERVERS), choices=SERVERS)
    parser.add_argument("--concurrency", nargs="+", type=int, default=list(CONCURRENCY))
    parser.add_argument("--duration", type=float, default=5, help="seconds per measurement")
    parser.add_argument(
        "--rounds", type=int, default=3,
        help="sweep every server this many times, interleaved, and report medians (default: 3)",
    )  # fmt: skip
    parser.add_argument("--runs", type=Path, default=Path("runs"))
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument(
        "--bench-repository", type=Path, default=Path("runs/bench-repository"),
        help="where the benchmark-only models are exported (default: runs/bench-repository)",
    )  # fmt: skip
    parser.add_argument(
        "--out", type=Path, default=SCRATCH,
        help=f"where the results go (default: {SCRATCH}; make bench: docs/benchmarks)",
    )  # fmt: skip
    parser.add_argument("--logs", type=Path, default=LOGS, help=f"servers' logs (default: {LOGS})")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    args.logs.mkdir(parents=True, exist_ok=True)
    prepare_benchmark_models(args)

    from .report import write_report  # matplotlib only when there is something to plot

    rounds, ceilings, idles, footprints = [], [], [], []
    for n in range(1, args.rounds + 1):
        print(f"round {n} of {args.rounds}", flush=True)
        rounds.append(measure_servers(args))
        ceilings.append(measure_ceiling(args))
        idles.append(measure_idle_penalty(args) if "mlp" in args.models else {})
        if "tensorgate-ort" in args.servers:
            footprints.append(measure_footprint(args))
    results = {
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d"),
        "duration_s": args.duration,
        "rounds": args.rounds,
        "load_generator": "wrk -t1, sharing the cores with the server",
        "tensorgate": f"its defaults ({os.cpu_count()} cores: "
        f"{min(MAX_DEFAULT_API_SERVERS, os.cpu_count() or 1)} HTTP processes, one worker per "
        "model, access log off)",
        "footprint_pss_mb": statistics.median(footprints) if footprints else None,
        "points": [asdict(p) for p in medians(rounds)],
        "ceiling": [
            {**rows[0], "samples_per_s": statistics.median(r["samples_per_s"] for r in rows)}
            for rows in zip(*ceilings, strict=True)
        ],
        "idle_penalty_p50_ms": {
            label: statistics.median(idle[label] for idle in idles) for label in idles[0]
        },
    }
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    write_report(results, args.out)
    print(f"wrote {args.out}/results.json, results.md, bench.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
