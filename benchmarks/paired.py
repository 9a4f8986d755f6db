"""tensorgate with its defaults against the same service with settings changed, or against
another commit of it, both up at once and driven by wrk in alternating short runs (each round
reverses the order), so that the machine's drift hits both alike; the ratio is the median of
the rounds' paired ratios. For a change that moves throughput by a few percent, where `make
bench`'s rounds, minutes apart, spread by 10-30 % on a shared VM.

    python -m benchmarks.paired [--set worker_spin=0.0005] [--common NAME=VALUE ...]
        [--models mlp resnet-cifar]
        [--concurrency 1 2 4 8 16 64] [--rounds 8] [--duration 2]
        [--out docs/benchmarks/worker-spin.md]
    git worktree add /tmp/base HEAD~3
    python -m benchmarks.paired --baseline /tmp/base --out docs/benchmarks/dataplane.md

mlp is driven with V1 JSON, resnet-cifar with V2 binary (as `make bench` reports them).
"""

import argparse
import os
import statistics
import subprocess
import time
from contextlib import ExitStack
from pathlib import Path

from load_tests.otlp import receiving
from load_tests.servers import running_service

from .__main__ import (
    bodies,
    machine,
    path,
    prepare_benchmark_models,
    repository,
    side_parser,
    write_side_report,
    wrk,
)

PROTOCOL = {"mlp": "v1", "resnet-cifar": "v2-binary"}
SIDES = ("default", "changed")


def setting(text: str) -> tuple[str, str]:
    name, _, value = text.partition("=")
    if not name or not value:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=VALUE, e.g. worker_spin=0.0005")
    return name, value


def measure(args, model: str) -> list[dict]:
    protocol = PROTOCOL[model]
    body, headers = bodies(args, model)[protocol]
    common = dict(args.common)
    settings = {"default": common, "changed": {**common, **dict(args.set)}}
    checkouts = {"default": args.baseline, "changed": None}
    rows, receiver = [], None
    with ExitStack() as stack:
        if "tracing" in {**settings["default"], **settings["changed"]}:  # spans need a receiver
            receiver = stack.enter_context(receiving())
            os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = receiver.endpoint
        urls = {
            side: stack.enter_context(
                running_service(
                    repository(args, model), args.logs, checkouts[side], models=model, **kw
                )
            ).url
            + path("tensorgate", protocol, model)
            for side, kw in settings.items()
        }
        for c in args.concurrency:
            got: dict[str, list[tuple[float, float, float]]] = {side: [] for side in SIDES}
            for url in urls.values():
                wrk(url, body, headers, c, 1)  # warm
            for n in range(args.rounds):
                for side in SIDES if n % 2 == 0 else SIDES[::-1]:
                    rps, p50, p99, _ = wrk(urls[side], body, headers, c, args.duration)
                    got[side].append((rps, p50, p99))
            ratios = [c_[0] / d[0] for c_, d in zip(got["changed"], got["default"], strict=True)]
            row = {"model": model, "protocol": protocol, "concurrency": c}
            for side in SIDES:
                row[side] = {
                    "rps": statistics.median(r for r, _, _ in got[side]),
                    "p50_ms": statistics.median(p for _, p, _ in got[side]),
                    "p99_ms": statistics.median(p for _, _, p in got[side]),
                    "rps_rounds": [r for r, _, _ in got[side]],
                }
            row["rps_ratio"] = statistics.median(ratios)
            rows.append(row)
            print(f"{model} c={c}: changed / default {row['rps_ratio']:.3f}", flush=True)
        if receiver is not None:
            print(f"{len(receiver.received())} spans received", flush=True)
    return rows


def commit(checkout: Path | None) -> str:
    done = subprocess.run(
        ["git", "-C", str(checkout or "."), "log", "-1", "--format=%h"],
        capture_output=True,
        text=True,
    )
    return done.stdout.strip() or "(not a git checkout)"


def title(args) -> str:
    changed = ", ".join(f"`TENSORGATE_{k.upper()}={v}`" for k, v in args.set)
    if args.common:
        both = ", ".join(f"`TENSORGATE_{k.upper()}={v}`" for k, v in args.common)
        changed += f" (both sides: {both})"
    if args.baseline is None:
        return f"tensorgate's defaults against {changed}"
    this = "this checkout" + (f" with {changed}" if changed else "")
    return f"tensorgate at {commit(args.baseline)} (default) against {this}, {commit(None)}"


def cell(side: dict) -> str:
    return f"{side['rps']:,.0f} ({side['p50_ms']:.3f} / {side['p99_ms']:.3f})"


def report(rows: list[dict], args) -> str:
    lines = [
        f"# {title(args)}",
        "",
        f"`python -m benchmarks.paired`, {time.strftime('%Y-%m-%d')}; {machine()}. Both "
        f"services up at once; {args.rounds} alternating rounds of {args.duration:g} s per "
        "cell, wrk sharing the cores. Cells: median req/s (median p50 / p99 ms); the req/s "
        "ratio is the median of the rounds' paired ratios, changed / default; the latency "
        "ratios are the medians', changed / default.",
        "",
        "| model | connections | default | changed | req/s ratio | p50 ratio | p99 ratio |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        d, c = r["default"], r["changed"]
        lines.append(
            f"| {r['model']} {r['protocol']} | {r['concurrency']} | {cell(d)} | {cell(c)} | "
            f"{r['rps_ratio']:.2f}x | {c['p50_ms'] / d['p50_ms']:.2f}x | "
            f"{c['p99_ms'] / d['p99_ms']:.2f}x |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    out, concurrency = "worker-spin.md", [1, 2, 4, 8, 16, 64]
    parser = side_parser("python -m benchmarks.paired", out, concurrency, rounds=8, duration=2.0)
    parser.add_argument(
        "--set",
        nargs="*",
        type=setting,
        help="settings of the changed side (default: worker_spin=0.0005; none with --baseline)",
    )
    parser.add_argument(
        "--common",
        nargs="*",
        type=setting,
        default=[],
        help="settings of both sides, e.g. version_policy=mlp:all to serve two versions on each",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        help="another checkout of the project (git worktree add DIR COMMIT): its service, with "
        "the defaults, is the default side",
    )
    parser.add_argument("--models", nargs="+", default=list(PROTOCOL), choices=list(PROTOCOL))
    args = parser.parse_args(argv)
    if args.set is None:
        args.set = [] if args.baseline else [("worker_spin", "0.0005")]
    if not args.set and args.baseline is None:
        parser.error("nothing differs: give --set NAME=VALUE or --baseline DIR")
    args.logs.mkdir(parents=True, exist_ok=True)
    prepare_benchmark_models(args)
    rows = [row for model in args.models for row in measure(args, model)]
    write_side_report(args.out, report(rows, args), rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
