"""The metrics as Prometheus itself sees them: promtool's lint and a real scrape on loopback."""

import subprocess
import time

import pytest
import requests
from helpers import rows, tool, v2_json

from load_tests.servers import free_port


@pytest.mark.tools("promtool")
def test_promtool_accepts_the_metrics(service):
    assert service.post("/v1/models/mlp:predict", json={"instances": [[1.0] * 30]}).ok
    assert service.post("/v1/models/mlp:predict", json={"instances": [[1.0]]}).status_code == 400
    text = service.get("/metrics").text
    done = subprocess.run(
        [tool("promtool"), "check", "metrics"], input=text, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


def query(prometheus: str, expr: str) -> float | None:
    response = requests.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=5)
    if response.status_code != 200:  # e.g. 503 while Prometheus is still starting
        return None
    values = response.json()["data"]["result"]
    return float(values[0]["value"][1]) if values else None


@pytest.mark.tools("prometheus")
def test_a_real_prometheus_scrape_counts_the_same_requests(service, tmp_path):
    binary = tool("prometheus")
    target = service.url.removeprefix("http://")
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s}\n"
        f"scrape_configs: [{{job_name: tensorgate, static_configs: [{{targets: ['{target}']}}]}}]\n"
    )
    port = free_port()
    prometheus = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--web.listen-address=127.0.0.1:{port}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(9):
            assert service.post("/v2/models/mlp/infer", json=v2_json(rows("mlp", 1))).ok
        expected = service.metric(
            "tensorgate_requests_total", model="mlp", protocol="v2", code="200"
        )
        assert expected >= 9
        expr = 'sum(tensorgate_requests_total{model="mlp",protocol="v2",code="200"})'
        deadline, seen = time.monotonic() + 60, None
        while time.monotonic() < deadline:
            try:
                seen = query(prometheus, expr)
            except requests.ConnectionError:
                seen = None  # still starting
            if seen == expected:
                break
            time.sleep(0.5)
        assert seen == expected, f"Prometheus saw {seen}, the service counts {expected}"
    finally:
        process.terminate()
        process.wait(timeout=30)
