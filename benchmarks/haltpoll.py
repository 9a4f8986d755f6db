"""What a KVM guest's idle polling does to latency: tensorgate (its defaults) and the naive
one-process `async def` server on mlp V1, with haltpoll's guest_halt_poll_ns at the machine's
value, at the kernel's default (200 us) and at --values, toggled round by round (each round
reverses the order), so drift hits every cell alike. The machine's value is put back at the end.

    sudo python -m benchmarks.haltpoll [--values 1000000] [--concurrency 1 2 4 16 64]
        [--rounds 6] [--duration 2] [--out docs/benchmarks/haltpoll.md]

Needs root, wrk and the haltpoll cpuidle driver (a KVM guest; service/host.py reads it).
"""

import statistics
import time
from contextlib import ExitStack
from pathlib import Path

from service.host import HALT_POLL, KERNEL_DEFAULT_HALT_POLL_NS, idle_policy

from .__main__ import bodies, machine, server, side_parser, write_side_report, wrk

SERVERS = ("tensorgate-ort", "naive-async")
MODEL = "mlp"


def set_halt_poll(ns: int) -> None:
    Path("/sys", HALT_POLL).write_text(str(ns))


def measure(args, values: list[int]) -> list[dict]:
    body, headers = bodies(args, MODEL)["v1"]
    samples: dict[tuple[int, str, int], list[tuple[float, float]]] = {}
    with ExitStack() as stack:
        urls = {
            s: stack.enter_context(server(s, [MODEL], args.runs, args.repository, args.logs))
            + f"/v1/models/{MODEL}:predict"
            for s in SERVERS
        }
        for url in urls.values():
            wrk(url, body, headers, 4, 1)  # warm
        for n in range(args.rounds):
            for ns in values if n % 2 == 0 else values[::-1]:
                set_halt_poll(ns)
                for name in SERVERS if n % 2 == 0 else SERVERS[::-1]:
                    for c in args.concurrency:
                        rps, p50, _, _ = wrk(urls[name], body, headers, c, args.duration)
                        samples.setdefault((ns, name, c), []).append((rps, p50))
            print(f"round {n + 1} of {args.rounds} done", flush=True)
    return [
        {
            "guest_halt_poll_ns": ns,
            "server": name,
            "concurrency": c,
            "rps": statistics.median(r for r, _ in got),
            "p50_ms": statistics.median(p for _, p in got),
            "p50_ms_rounds": [p for _, p in got],
        }
        for (ns, name, c), got in sorted(samples.items())
    ]


def report(rows: list[dict], args, values: list[int]) -> str:
    by = {(r["guest_halt_poll_ns"], r["server"], r["concurrency"]): r for r in rows}
    lines = [
        "# Idle polling and latency (haltpoll)",
        "",
        f"`python -m benchmarks.haltpoll`, {time.strftime('%Y-%m-%d')}; {machine()} (the "
        f"machine's own setting; the runs set it as below). mlp V1, one instance per request, "
        f"wrk; medians of {args.rounds} interleaved rounds of {args.duration:g} s. Cells: "
        "req/s (p50 ms); the ratio is tensorgate's p50 over the naive server's.",
        "",
        "| guest_halt_poll_ns | connections | tensorgate | naive `async def` | p50 ratio |",
        "| --- | --- | --- | --- | --- |",
    ]
    for ns in values:
        for c in args.concurrency:
            t, n = by[(ns, SERVERS[0], c)], by[(ns, SERVERS[1], c)]
            lines.append(
                f"| {ns:,} | {c} | {t['rps']:,.0f} ({t['p50_ms']:.3f}) | "
                f"{n['rps']:,.0f} ({n['p50_ms']:.3f}) | {t['p50_ms'] / n['p50_ms']:.2f}x |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    out, concurrency = "haltpoll.md", [1, 2, 4, 16, 64]
    parser = side_parser("python -m benchmarks.haltpoll", out, concurrency, rounds=6, duration=2.0)
    parser.add_argument("--values", nargs="*", type=int, default=[1_000_000], help="ns, too")
    args = parser.parse_args(argv)
    own = idle_policy().halt_poll_ns
    if own is None:
        raise SystemExit("this host's cpuidle driver is not haltpoll (not a KVM guest)")
    values = sorted({own, KERNEL_DEFAULT_HALT_POLL_NS, *args.values})
    args.logs.mkdir(parents=True, exist_ok=True)
    try:
        set_halt_poll(own)
    except OSError as e:
        raise SystemExit(f"cannot set guest_halt_poll_ns (needs root): {e}") from e
    try:
        rows = measure(args, values)
    finally:
        set_halt_poll(own)
    write_side_report(args.out, report(rows, args, values), rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
