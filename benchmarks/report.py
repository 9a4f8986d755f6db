"""The benchmark's results as Markdown tables, the issue's bars as met/missed, and a plot."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

COMPUTE_HEAVY = "resnet-cifar"


def _index(points: list[dict]) -> dict:
    return {(p["server"], p["model"], p["concurrency"]): p for p in points}


DEFAULT = "tensorgate-ort v1"  # the server a user gets from `make serve`, V1 JSON bodies


def _ratio_row(bar: str, ours: float, rival: float, at_least: float) -> tuple[str, str, str]:
    """(bar, "r x (ours / rival)", met or missed) for a bar of ours >= at_least x rival."""
    ratio = ours / rival
    return (
        bar,
        f"{ratio:.2f} x ({ours:,.0f} / {rival:,.0f})",
        "met" if ratio >= at_least else "missed",
    )


def _policy_bars(points: dict, concurrency: list[int]) -> list[tuple[str, str, str]]:
    """The default server against the same with batch timeout 0: mlp at every c, >= 0.95 and
    never below its own c=1; resnet-cifar (V2 binary) at c=16 and 64, >= 1.0."""
    rows = []
    default = {c: points.get((DEFAULT, "mlp", c)) for c in concurrency}
    zero = {c: points.get(("tensorgate-ort-bt0 v1", "mlp", c)) for c in concurrency}
    pairs = [(c, default[c], zero[c]) for c in concurrency if default[c] and zero[c]]
    if pairs:
        ratios = [d["rps"] / z["rps"] for _, d, z in pairs]
        floor_c1 = default[concurrency[0]]["rps"] if default[concurrency[0]] else 0
        met = min(ratios) >= 0.95 and all(d["rps"] >= floor_c1 for _, d, _ in pairs)
        rows.append(
            (
                "mlp V1, default / batch timeout 0, every c: >= 0.95, never below c=1",
                ", ".join(f"c={c} {r:.2f}" for (c, _, _), r in zip(pairs, ratios, strict=True)),
                "met" if met else "missed",
            )
        )
    for c in (16, 64):
        d = points.get(("tensorgate-ort v2-binary", COMPUTE_HEAVY, c))
        z = points.get(("tensorgate-ort-bt0 v2-binary", COMPUTE_HEAVY, c))
        if d and z:
            bar = f"{COMPUTE_HEAVY} V2 binary c={c}, default / batch timeout 0: >= 1.0"
            rows.append(_ratio_row(bar, d["rps"], z["rps"], 1.0))
    return rows


def _ceiling_bar(results: dict, points: dict) -> list[tuple[str, str, str]]:
    """resnet-cifar V2 binary at c=64: samples/s >= 0.7 x the in-process ORT ceiling."""
    ours = points.get(("tensorgate-ort v2-binary", COMPUTE_HEAVY, 64))
    ceiling = max(
        (
            r["samples_per_s"]
            for r in results["ceiling"]
            if (r["model"], r["backend"]) == (COMPUTE_HEAVY, "onnxruntime")
        ),
        default=None,
    )
    if not (ours and ceiling):
        return []
    bar = f"{COMPUTE_HEAVY} V2 binary c=64: >= 0.7 x the best in-process ORT ceiling"
    return [_ratio_row(bar, ours["rps"], ceiling, 0.7)]


def bars(results: dict) -> list[tuple[str, str, str]]:
    """(bar, measured, verdict) for the issue's targets that this run can judge."""
    points = _index(results["points"])
    concurrency = sorted({p["concurrency"] for p in results["points"]})
    rows = _policy_bars(points, concurrency)
    # the peer bars judge the defaults, not the best of the tuned configurations
    ours, torchserve = points.get((DEFAULT, "mlp", 64)), points.get(("torchserve", "mlp", 64))
    if ours and torchserve:
        bar = "mlp V1 c=64 with the default settings: >= 1.2 x TorchServe"
        rows.append(_ratio_row(bar, ours["rps"], torchserve["rps"], 1.2))
    ours1, naive1 = points.get((DEFAULT, "mlp", 1)), points.get(("naive-async", "mlp", 1))
    if ours1 and naive1:
        ratio = ours1["p50_ms"] / naive1["p50_ms"]
        rows.append(
            (
                "mlp V1 c=1 with the default settings: p50 <= 1.2 x the naive async server's",
                f"{ours1['p50_ms']:.2f} ms vs {naive1['p50_ms']:.2f} ms ({ratio:.2f} x)",
                "met" if ratio <= 1.2 else "missed",
            )
        )
    rows += _ceiling_bar(results, points)
    default, floor = points.get((DEFAULT, "mlp", 64)), points.get(("floor", "mlp", 64))
    if default and floor:
        bar = "mlp V1 c=64 with the default settings: >= 0.9 x the floor"
        rows.append(_ratio_row(bar, default["rps"], floor["rps"], 0.9))
    footprint = results.get("footprint_pss_mb")
    if footprint:
        rows.append(
            (
                "PSS of the process group serving the three models, idle: <= 500 MB",
                f"{footprint:.0f} MB",
                "met" if footprint <= 500 else "missed",
            )
        )
    idle = results.get("idle_penalty_p50_ms") or {}
    if idle:
        penalty = idle["batch_timeout_50ms"] - idle["batching_off"]
        rows.append(
            (
                "mlp c=1: p50 with a 50 ms batch timeout - p50 with batching off <= 1 ms",
                f"{idle['batch_timeout_50ms']:.2f} - {idle['batching_off']:.2f} = {penalty:.2f} ms",
                "met" if penalty <= 1 else "missed",
            )
        )
    return rows


def write_report(results: dict, out: Path) -> None:
    points = _index(results["points"])
    models = sorted({p["model"] for p in results["points"]})
    servers = list(dict.fromkeys(p["server"] for p in results["points"]))
    concurrency = sorted({p["concurrency"] for p in results["points"]})
    lines = [
        "# Benchmark results",
        "",
        f"{results['date']}; {results['machine']}; {results['load_generator']}; "
        f"tensorgate with {results.get('tensorgate', 'its defaults')}; "
        f"{results['duration_s']:g} s per measurement after a 1 s warm-up; "
        f"median of {results.get('rounds', 1)} interleaved round(s) (each round's requests/s "
        "are in results.json); one instance per request; ONNX Runtime and torch with 1 "
        "intra-op thread everywhere. Each cell: requests/s (p50 / p99 ms); errors (summed "
        "over the rounds) are listed where there were any.",
    ]
    for model in models:
        lines += [
            "",
            f"## {model}",
            "",
            "| server | " + " | ".join(f"c={c}" for c in concurrency) + " |",
            "| --- |" + " --- |" * len(concurrency),
        ]
        for server in servers:
            cells = []
            for c in concurrency:
                p = points.get((server, model, c))
                cells.append(
                    "-"
                    if p is None
                    else f"{p['rps']:,.0f} ({p['p50_ms']:.2f} / "
                    f"{p['p99_ms']:.1f})" + (f", {p['errors']} errors" if p["errors"] else "")
                )
            if any(cell != "-" for cell in cells):
                lines.append(f"| {server} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## In-process ceiling (no HTTP, 1 thread)",
        "",
        "| model | backend | batch 1 | batch 16 | batch 64 |",
        "| --- | --- | --- | --- | --- |",
    ]
    ceiling: dict = {}
    for row in results["ceiling"]:
        ceiling.setdefault((row["model"], row["backend"]), {})[row["batch"]] = row["samples_per_s"]
    for (model, backend), by_batch in ceiling.items():
        cells = [f"{by_batch[b]:,.0f}" if b in by_batch else "-" for b in (1, 16, 64)]
        lines.append(f"| {model} | {backend} | " + " | ".join(cells) + " samples/s |")
    lines += ["", "## The issue's bars", "", "| bar | measured | verdict |", "| --- | --- | --- |"]
    lines += [f"| {bar} | {measured} | {verdict} |" for bar, measured, verdict in bars(results)]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    plot(results, models, servers, concurrency, out / "bench.png")


def _rounds(results: dict) -> str:
    n = results.get("rounds", 1)
    return "one round" if n == 1 else f"median of {n} rounds"


def plot(
    results: dict, models: list[str], servers: list[str], concurrency: list[int], path: Path
) -> None:
    points = _index(results["points"])
    fig, axes = plt.subplots(
        2, len(models), figsize=(5 * len(models), 8), squeeze=False, constrained_layout=True
    )
    for column, model in enumerate(models):
        for server in servers:
            series = [points.get((server, model, c)) for c in concurrency]
            if not any(series):
                continue
            xs = [c for c, p in zip(concurrency, series, strict=True) if p]
            style = "-o" if server.startswith("tensorgate") else "--."
            axes[0][column].plot(xs, [p["rps"] for p in series if p], style, label=server)
            axes[1][column].plot(xs, [p["p99_ms"] for p in series if p], style, label=server)
        axes[0][column].set_title(f"{model}: throughput")
        axes[1][column].set_title(f"{model}: p99 latency")
        axes[0][column].set_ylabel("requests/s")
        axes[1][column].set_ylabel("p99 (ms)")
        for row in (0, 1):
            ax = axes[row][column]
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xticks(concurrency, [str(c) for c in concurrency])
            ax.set_xlabel("concurrent connections")
            ax.grid(alpha=0.3, which="both")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(
        "tensorgate vs the HTTP floor, naive servers, plain LitServe and TorchServe "
        f"({results['date']}, {_rounds(results)})"
    )
    fig.savefig(path, dpi=90)
    plt.close(fig)
