"""Start servers on a free loopback port and stop them: the real service (`python -m service`)
for the tests and the load tests, and any command for the benchmark."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import requests

START_TIMEOUT = 90  # seconds; each model's worker imports torch and ONNX Runtime


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Service:
    def __init__(
        self, url: str, process: subprocess.Popen, log: Path, repository: Path, grpc: str
    ) -> None:
        self.url, self.process, self.log, self.repository = url, process, log, repository
        self.grpc = grpc  # host:port of its gRPC server

    def get(self, path: str, **kw) -> requests.Response:
        return requests.get(self.url + path, timeout=30, **kw)

    def post(self, path: str, **kw) -> requests.Response:
        return requests.post(self.url + path, timeout=30, **kw)

    def metric(self, name: str, **labels: str) -> float:
        """The sum of a metric's samples whose labels include `labels`."""
        total = 0.0
        for line in self.get("/metrics").text.splitlines():
            if not line.startswith(name + "{") and not line.startswith(name + " "):
                continue
            series, value = line.rsplit(" ", 1)
            if all(f'{k}="{v}"' in series for k, v in labels.items()):
                total += float(value)
        return total


@contextmanager
def running(
    command: list[str],
    env: dict,
    url: str,
    ready_path: str,
    log: Path,
    timeout: float,
    cwd: Path | None = None,
):
    """Run `command` (in `cwd`) until `url + ready_path` answers 200; stop it (SIGTERM, then
    SIGKILL)."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            command,
            env=env,
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(
                    f"{command} exited with {process.returncode}:\n{log.read_text()}"
                )
            try:
                if requests.get(url + ready_path, timeout=5).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{command} not ready in {timeout} s:\n{log.read_text()}")
            time.sleep(0.2)
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=30)
        # Whatever is left of its process group goes too: plain LitServe, for one, dies on
        # SIGTERM without stopping its HTTP and worker processes, which then keep polling.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@contextmanager
def running_service(repository: Path, log_dir: Path, checkout: Path | None = None, **settings):
    """The real service (of another `checkout` of the project, when given: `python -m` runs
    the package in the working directory); `settings` become TENSORGATE_* variables, e.g.
    batch_timeout=0.5."""
    port = free_port()
    env = {**os.environ, "TENSORGATE_PORT": str(port)}
    env["TENSORGATE_REPOSITORY"] = str(Path(repository).resolve())  # the checkout may be elsewhere
    env["TENSORGATE_GRPC_PORT"] = str(free_port())  # Triton's 8001 may be another's
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # each service makes its own
    env.update({f"TENSORGATE_{k.upper()}": str(v) for k, v in settings.items()})
    grpc = f"127.0.0.1:{env['TENSORGATE_GRPC_PORT']}"
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "service"]
    log = log_dir / f"service-{port}.log"
    with running(command, env, url, "/v2/health/ready", log, START_TIMEOUT, checkout) as process:
        yield Service(url, process, log_dir / f"service-{port}.log", repository, grpc)
