"""The benchmark's results as Markdown tables, the issue's bars as met/missed, and a plot."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from training.registry import REGISTRY

COMPUTE_HEAVY = "resnet-cifar"


def _index(points: list[dict]) -> dict:
    return {(p["server"], p["model"], p["concurrency"]): p for p in points}


def _best_tensorgate(points: dict, model: str, c: int) -> dict | None:
    mine = [
        p for (s, m, k), p in points.items() if s.startswith("tensorgate") and m == model and k == c
    ]
    return max(mine, key=lambda p: p["rps"], default=None)


def _ratio_row(bar: str, ours: float, rival: float, at_least: float) -> tuple[str, str, str]:
    """(bar, "r x (ours / rival)", met or missed) for a bar of ours >= at_least x rival."""
    ratio = ours / rival
    return (
        bar,
        f"{ratio:.2f} x ({ours:.0f} / {rival:.0f})",
        "met" if ratio >= at_least else "missed",
    )


def _best_v2_binary(points: dict, model: str, c: int) -> dict | None:
    mine = [points.get((f"{s} v2-binary", model, c)) for s in ("tensorgate-ort", "tensorgate-ts")]
    return max(filter(None, mine), key=lambda p: p["rps"], default=None)


def _compute_heavy_bars(results: dict, points: dict) -> list[tuple[str, str, str]]:
    """resnet-cifar at c=64 with V2 binary: >= 4 x the faster naive server, and >= 0.6 x the
    in-process ceiling (batch 64, 1 thread) of the backend that served it."""
    ours, naive = (
        _best_v2_binary(points, COMPUTE_HEAVY, 64),
        _faster_naive(points, COMPUTE_HEAVY, 64),
    )
    rows = []
    if ours and naive:
        bar = f"{COMPUTE_HEAVY} c=64 V2 binary: >= 4 x the faster naive server"
        rows.append(_ratio_row(bar, ours["rps"], naive["rps"], 4))
    backend = (
        "torchscript" if ours and ours["server"].startswith("tensorgate-ts") else "onnxruntime"
    )
    ceiling = next(
        (
            r["samples_per_s"]
            for r in results["ceiling"]
            if (r["model"], r["backend"], r["batch"]) == (COMPUTE_HEAVY, backend, 64)
        ),
        None,
    )
    if ours and ceiling:
        bar = f"{COMPUTE_HEAVY} c=64 V2 binary: samples/s >= 0.6 x the {backend} ceiling"
        rows.append(_ratio_row(bar, ours["rps"], ceiling, 0.6))
    return rows


def _faster_naive(points: dict, model: str, c: int) -> dict | None:
    naive = [points.get((s, model, c)) for s in ("naive-def", "naive-async")]
    return max(filter(None, naive), key=lambda p: p["rps"], default=None)


def bars(results: dict) -> list[tuple[str, str, str]]:
    """(bar, measured, verdict) for the issue's targets that this run can judge."""
    points, rows = _index(results["points"]), []
    models = sorted({p["model"] for p in results["points"]})
    for model in models:
        ours, naive = _best_tensorgate(points, model, 64), _faster_naive(points, model, 64)
        plain, floor = points.get(("litserve", model, 64)), points.get(("floor", model, 64))
        torchserve = points.get(("torchserve", model, 64))
        if ours and floor and model == "mlp":
            rows.append(_ratio_row(f"{model} c=64: >= 0.6 x floor", ours["rps"], floor["rps"], 0.6))
        if ours and torchserve and model == "mlp":
            rows.append(
                _ratio_row(f"{model} c=64: >= TorchServe", ours["rps"], torchserve["rps"], 1)
            )
        for rival, label in ((naive, "the faster naive server"), (plain, "plain LitServe")):
            if ours and rival and model in REGISTRY:
                ratio = ours["rps"] / rival["rps"]
                rows.append(
                    (
                        f"{model} c=64: ahead of {label}",
                        f"{ratio:.2f} x",
                        "met" if ratio > 1 else "missed",
                    )
                )
        ours1, naive1 = _best_tensorgate(points, model, 1), _faster_naive(points, model, 1)
        if ours1 and naive1:
            ratio = ours1["p50_ms"] / naive1["p50_ms"]
            rows.append(
                (
                    f"{model} c=1: p50 <= 2 x the faster naive server's",
                    f"{ours1['p50_ms']:.2f} ms vs {naive1['p50_ms']:.2f} ms ({ratio:.1f} x)",
                    "met" if ratio <= 2 else "missed",
                )
            )
    rows += _compute_heavy_bars(results, points)
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
        f"({results['date']}, median of {results.get('rounds', 1)} rounds)"
    )
    fig.savefig(path, dpi=90)
    plt.close(fig)
