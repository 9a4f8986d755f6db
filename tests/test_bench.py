"""A smoke run of the benchmark harness (one model, one server, a second), so it keeps working."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.report import bars
from service.host import KERNEL_DEFAULT_HALT_POLL_NS, idle_policy


@pytest.mark.tools("wrk")
def test_the_benchmark_harness_measures_and_reports(exported, tmp_path):
    out = tmp_path / "bench"
    command = [
        sys.executable,
        "-m",
        "benchmarks",
        "--models",
        "mlp",
        "--servers",
        "floor",
        "tensorgate-ort",
        "--concurrency",
        "1",
        "--duration",
        "1",
        "--rounds",
        "2",
        "--repository",
        str(exported),
        "--out",
        str(out),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads((out / "results.json").read_text())
    servers = {p["server"] for p in results["points"]}
    assert servers == {"floor", "tensorgate-ort v1", "tensorgate-ort v2-binary"}
    for point in results["points"]:
        assert point["rps"] > 0 and point["errors"] == 0 and 0 < point["p50_ms"] <= point["p99_ms"]
        assert len(point["rps_rounds"]) == 2  # the median of two rounds is their mean
        assert point["rps"] == pytest.approx(sum(point["rps_rounds"]) / 2, abs=0.1)
    assert {(r["backend"], r["batch"]) for r in results["ceiling"]} == {
        (b, n) for b in ("onnxruntime", "torchscript") for n in (1, 16, 64)
    }
    assert 50 < results["footprint_pss_mb"] < 4000  # the three models' process group, in MB
    idle = results["idle_penalty_p50_ms"]
    assert set(idle) == {"batch_timeout_50ms", "batching_off"} and all(v > 0 for v in idle.values())
    report = (out / "results.md").read_text()
    assert "## mlp" in report and "| floor |" in report and "The issue's bars" in report
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("module", ["benchmarks", "benchmarks.paired", "benchmarks.codec"])
def test_a_benchmark_writes_to_a_scratch_folder_unless_told_and_make_bench_tells_it(module):
    """A quick run must not replace the committed results in docs/benchmarks/."""
    done = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "(default: runs/bench" in " ".join(done.stdout.split())
    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    assert (
        "-m benchmarks --runs $(RUNS) --repository $(REPOSITORY) --out docs/benchmarks" in makefile
    )


@pytest.mark.tools("wrk")
def test_the_compute_heavy_model_is_trained_exported_and_measured(tmp_path):
    runs, repository, out = tmp_path / "runs", tmp_path / "bench-repository", tmp_path / "out"
    command = [sys.executable, "-m", "benchmarks", "--models", "resnet-cifar"]
    command += [
        "--servers",
        "naive-async",
        "--concurrency",
        "1",
        "--duration",
        "1",
        "--rounds",
        "1",
    ]
    command += ["--runs", str(runs), "--bench-repository", str(repository), "--out", str(out)]
    command += ["--logs", str(tmp_path / "logs")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    manifest = json.loads((repository / "resnet-cifar" / "1" / "manifest.json").read_text())
    assert manifest["inputs"][0]["shape"] == [-1, 3, 32, 32]
    assert manifest["parity"]["onnxruntime"]["max_abs_diff"] <= 1e-4
    [point] = json.loads((out / "results.json").read_text())["points"]
    assert (point["server"], point["model"], point["errors"]) == ("naive-async", "resnet-cifar", 0)


def test_the_codec_benchmark_measures_both_libraries(tmp_path):
    out = tmp_path / "json.md"
    command = [sys.executable, "-m", "benchmarks.codec", "--out", str(out), "--seconds", "0.05"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = out.read_text().splitlines()
    rows = [line.split(" | ") for line in lines if line[:3] in ("| 1", "| 6")]
    assert [row[0] for row in rows] == ["| 1", "| 64", "| 1024"]
    assert all(float(row[3].rstrip("x")) > 0 and float(row[6].rstrip("x")) > 0 for row in rows)


def test_the_grpc_benchmark_drives_both_protocols_with_one_driver(exported, tmp_path):
    out = tmp_path / "grpc.md"
    command = [sys.executable, "-m", "benchmarks.grpc_vs_http", "--models", "mlp",
               "--concurrency", "1", "4", "--duration", "0.5", "--rounds", "1",
               "--repository", str(exported), "--logs", str(tmp_path), "--out", str(out)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = json.loads(out.with_suffix(".json").read_text())
    assert {(r["protocol"], r["clients"]) for r in rows} == {
        ("grpc", 1), ("grpc", 4), ("v2-binary", 1), ("v2-binary", 4)}  # fmt: skip
    assert all(r["requests_per_s"] > 10 and 0 < r["p50_ms"] <= r["p99_ms"] for r in rows)
    assert "| mlp | 4 |" in out.read_text()


@pytest.mark.tools("wrk")
def test_the_paired_benchmark_runs_the_baseline_from_the_other_checkout_and_sets_one_side(
    exported, tmp_path
):
    root = Path(__file__).resolve().parents[1]
    base = tmp_path / "base"
    git = ["git", "-C", str(root)]
    subprocess.run([*git, "worktree", "add", "--detach", str(base), "HEAD"], check=True)
    try:
        main = base / "service" / "__main__.py"  # a mark only the baseline's service prints
        main.write_text('print("baseline checkout", flush=True)\n' + main.read_text())
        out = tmp_path / "base.md"
        command = [sys.executable, "-m", "benchmarks.paired", "--baseline", str(base),
                   "--set", "worker_spin=0.002", "--models", "mlp", "--concurrency", "1", "--rounds", "2", "--duration", "1",
                   "--repository", str(exported), "--logs", str(tmp_path), "--out", str(out)]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=root)
        assert done.returncode == 0, done.stdout + done.stderr
    finally:
        subprocess.run([*git, "worktree", "remove", "--force", str(base)], check=True)
    logs = [p.read_text() for p in tmp_path.glob("service-*.log")]
    assert len(logs) == 2 and sum("baseline checkout" in log for log in logs) == 1
    changed = [log for log in logs if "polling 2 ms for each next request" in log]
    assert len(changed) == 1 and "baseline checkout" not in changed[0]  # the setting: one side
    head = subprocess.run([*git, "log", "-1", "--format=%h"], capture_output=True, text=True)
    title = out.read_text().splitlines()[0]
    assert title.startswith(f"# tensorgate at {head.stdout.strip()} ") and "(default)" in title
    assert title.endswith("with `TENSORGATE_WORKER_SPIN=0.002`, " + head.stdout.strip())
    [row] = json.loads(out.with_suffix(".json").read_text())
    for side in ("default", "changed"):
        assert len(row[side]["rps_rounds"]) == 2 and 0 < row[side]["p50_ms"] <= row[side]["p99_ms"]
    assert row["rps_ratio"] > 0 and "| p99 ratio |" in out.read_text()


@pytest.mark.tools("wrk")
@pytest.mark.skipif(
    os.geteuid() != 0 or idle_policy().halt_poll_ns is None,
    reason="needs root on a KVM guest whose cpuidle driver is haltpoll",
)
def test_the_haltpoll_benchmark_compares_the_settings_and_puts_the_machines_back(
    full_runs, exported, tmp_path
):
    own, (runs, _) = idle_policy().halt_poll_ns, full_runs
    out = tmp_path / "haltpoll.md"
    command = [sys.executable, "-m", "benchmarks.haltpoll", "--values", "--concurrency", "1",
               "--rounds", "1", "--duration", "1", "--runs", str(runs), "--repository",
               str(exported), "--logs", str(tmp_path), "--out", str(out)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert idle_policy().halt_poll_ns == own
    rows = json.loads(out.with_suffix(".json").read_text())
    assert {(r["guest_halt_poll_ns"], r["server"]) for r in rows} == {
        (ns, s)
        for ns in {own, KERNEL_DEFAULT_HALT_POLL_NS}
        for s in ("tensorgate-ort", "naive-async")
    }
    assert all(r["rps"] > 10 and r["p50_ms"] > 0 for r in rows)
    assert f"| {KERNEL_DEFAULT_HALT_POLL_NS:,} | 1 |" in out.read_text()


def test_the_peer_bars_judge_the_default_server_not_the_fastest_tuned_one():
    def point(server: str, c: int, rps: float, p50: float) -> dict:
        return {"server": server, "model": "mlp", "concurrency": c, "rps": rps, "p50_ms": p50}

    results = {
        "points": [
            point("tensorgate-ort v1", 1, 1000, 0.5),
            point("tensorgate-ort v1", 64, 6000, 5.0),
            point("tensorgate-ort-bt0 v1", 1, 2000, 0.3),
            point("tensorgate-ort-bt0 v1", 64, 9000, 4.0),
            point("torchserve", 64, 5000, 9.0),
            point("naive-async", 1, 3000, 0.4),
        ],
        "ceiling": [],
    }
    rows = {bar: (measured, verdict) for bar, measured, verdict in bars(results)}
    torchserve = rows["mlp V1 c=64 with the default settings: >= 1.2 x TorchServe"]
    assert torchserve == ("1.20 x (6,000 / 5,000)", "met")
    naive = rows["mlp V1 c=1 with the default settings: p50 <= 1.2 x the naive async server's"]
    assert naive == ("0.50 ms vs 0.40 ms (1.25 x)", "missed")
