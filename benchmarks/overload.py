"""Deadlines and priorities under overload, as a table: the same load on a fresh service with
one priority level (priorities off) and with two. resnet requests of 256 instances (about
6 ms of compute each) come from three groups of wrk connections at once, more than one worker
keeps up with:

- background: 12 connections, no deadline, the default level (the lowest);
- urgent: 1 connection, `Inference-Priority: 1`;
- deadline: 4 connections, `Request-Timeout: 0.1`, the default level.

For each group: answers 200 per second, the others per second (504: refused at admission or
expired in the queue; 503: shed by the queue bound), and p50 and p99 of every answer.

    python -m benchmarks.overload [--seconds 10] [--out docs/benchmarks/overload.md]
"""

import argparse
import concurrent.futures as cf
import time
from pathlib import Path

import numpy as np

from load_tests.payloads import Served, request_body
from load_tests.servers import running_service

from .__main__ import machine, wrk

INSTANCES = 256
GROUPS = {  # name: (connections, headers)
    "background": (12, {}),
    "urgent": (1, {"Inference-Priority": "1"}),
    "deadline 100 ms": (4, {"Request-Timeout": "0.1"}),
}
SCENARIOS = {"one level (off)": {}, "two levels": {"priority_levels": "2"}}


def scenario(args, settings: dict, body: bytes, headers: dict) -> dict[str, tuple]:
    """Each group's (requests/s, p50 ms, p99 ms, errors) with the groups driven at once."""
    with running_service(args.repository, args.logs, models="resnet", **settings) as service:
        url = service.url + "/v2/models/resnet/infer"
        wrk(url, body, headers, 16, 2)  # warm: the batch cost fit settles
        with cf.ThreadPoolExecutor(len(GROUPS)) as pool:
            runs = {
                name: pool.submit(wrk, url, body, {**headers, **extra}, n, args.seconds)
                for name, (n, extra) in GROUPS.items()
            }
            return {name: run.result() for name, run in runs.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.overload", description=__doc__)
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--logs", type=Path, default=Path("runs/bench"))
    parser.add_argument("--out", type=Path, default=Path("runs/bench/overload.md"))
    args = parser.parse_args(argv)
    args.logs.mkdir(parents=True, exist_ok=True)
    served = Served(args.repository, "resnet")
    x = np.resize(served.examples, (INSTANCES, *served.examples.shape[1:])).astype(np.float32)
    body, headers = request_body("v2-binary", x, "overload", served.manifest)
    lines = [
        "# Deadlines and priorities under overload",
        "",
        f"`python -m benchmarks.overload`, {time.strftime('%Y-%m-%d')}; {machine()}. resnet, "
        f"{INSTANCES} instances a request (V2 binary), {args.seconds:g} s per scenario, the "
        "groups at once on a fresh service: background (12 connections, the default level), "
        "urgent (1, `Inference-Priority: 1`), deadline (4, `Request-Timeout: 0.1`). "
        "Refused or late: 504 (the queue ahead could not finish in time, or the deadline "
        "passed while queued) and 503 (shed by the queue bound).",
        "",
        "| scenario | group | answered 200/s | refused or late/s | p50 ms | p99 ms |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for label, settings in SCENARIOS.items():
        for name, (rps, p50, p99, errors) in scenario(args, settings, body, headers).items():
            failed = min(rps, errors / args.seconds)  # wrk's rate is over its own clock
            cells = (
                label,
                name,
                f"{rps - failed:,.0f}",  # answered 200
                f"{failed:,.0f}",
                f"{p50:.1f}",
                f"{p99:.1f}",
            )
            lines.append("| " + " | ".join(cells) + " |")
            print(lines[-1], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
