"""Build the CPU image from the real Dockerfile with buildah and serve from it, on a machine
without a Docker engine (`make image-test`; root, buildah and debootstrap).

1. base: a stand-in for python:3.11-slim-bookworm (no registry can be reached here), made
   with debootstrap and kept in buildah's storage under a name that hashes its recipe.
2. build: `buildah bud` of the Dockerfile with VARIANT=cpu (or --variant cuda: several GB, not
   in CI), timed step by step.
3. run: the image's CMD as the image's USER with the image's ENV, on loopback ports; it
   must become ready, answer V1, V2 and gRPC for every baked model as ONNX Runtime does on
   the baked files, hold the variant's torch, pass its HEALTHCHECK inside the container,
   write nowhere but /tmp, and exit 0 on SIGTERM.
4. sizes: the image's layers and what its largest holds.

A failure names its stage (a build failure, the Dockerfile step) and exits 1.
"""

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort
import requests
import tritonclient.grpc as grpcclient

from load_tests.payloads import Served, served_models
from load_tests.servers import free_port

ROOT = Path(__file__).resolve().parent.parent
IMAGE = "localhost/tensorgate:{variant}"
CONTAINER = "tensorgate-image-test"
BUILDAH = ["buildah", "--storage-driver", "vfs"]  # overlay needs kernel support not always here
STEP = re.compile(r"^(\[\d+/\d+\] )?(STEP \d+/\d+|COMMIT)")  # buildah bud's step lines
BASE_PACKAGES = ["python3", "python3-venv", "python-is-python3", "ca-certificates"]
BASE_ENV = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8"]
PIP_CA = "/etc/ssl/certs/build-machine-ca.crt"  # in the base, when this machine's pip has one
TOLERANCE = 1e-5
READY_TIMEOUT = 180  # seconds: each model's worker loads and warms it (3 s here)
STOP_TIMEOUT = 60  # the service's drain is 30 s at most
ROWS = 16  # examples per request


class Failed(Exception):
    """A stage failed; the message says what was expected and what happened."""


@dataclass
class Timings:
    stages: list[tuple[str, float]] = field(default_factory=list)

    @contextmanager
    def stage(self, name: str):
        print(f"\n== {name}", flush=True)
        start = time.monotonic()
        try:
            yield
        except Failed as e:
            raise Failed(f"{name}: {e}") from None
        self.stages.append((name, time.monotonic() - start))


def buildah(*args: str, check: bool = True) -> str:
    done = subprocess.run([*BUILDAH, *args], capture_output=True, text=True)
    if check and done.returncode != 0:
        raise Failed(f"buildah {' '.join(args[:2])}: {done.stderr.strip()[-2000:]}")
    return done.stdout.strip()


def image_exists(name: str) -> bool:
    return bool(buildah("images", "--quiet", name, check=False))


def pip_settings() -> dict[str, str]:
    """This machine's pip configuration (files and PIP_* variables), as `pip config list`."""
    out = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True
    ).stdout
    settings = {}
    for line in out.splitlines():
        key, _, value = line.partition("=")
        settings[key.rsplit(".", 1)[-1]] = value.strip("'")
    return settings


# -- 1. the base --------------------------------------------------------------------------


def base_name(mirror: str, ca: Path | None) -> str:
    recipe = json.dumps([BASE_PACKAGES, BASE_ENV, mirror, ca and ca.read_bytes().hex()])
    return f"localhost/tensorgate-base:bookworm-{hashlib.sha256(recipe.encode()).hexdigest()[:12]}"


def make_base(name: str, mirror: str, ca: Path | None) -> None:
    """Debian bookworm minbase with Python 3.11 and venv, `python` on the PATH. When this
    machine's pip trusts a CA bundle of its own (a TLS proxy in front of the registries),
    the base's pip trusts it too, as a company's base image would."""
    if image_exists(name):
        print(f"cached: {name}")
        return
    container = buildah("from", "scratch")
    try:
        rootfs = Path(buildah("mount", container))
        include = f"--include={','.join(BASE_PACKAGES)}"
        debootstrap = ["debootstrap", "--variant=minbase", include, "bookworm", str(rootfs)]
        run([*debootstrap, mirror], "debootstrap")
        for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for path in (rootfs / cache).glob("*"):
                if path.is_file():
                    path.unlink()
        if ca is not None:
            shutil.copyfile(ca, rootfs / PIP_CA.lstrip("/"))
            (rootfs / "etc/pip.conf").write_text(f"[global]\ncert = {PIP_CA}\n")
        env = [arg for pair in BASE_ENV for arg in ("--env", pair)]
        buildah("config", *env, "--cmd", "python3", container)
        buildah("commit", "--rm", container, name)
    except BaseException:
        buildah("rm", container, check=False)
        raise
    print(f"made: {name}")


def run(command: list[str], what: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise Failed(f"{what} exited {done.returncode}: {(done.stdout + done.stderr)[-2000:]}")


# -- 2. the build -------------------------------------------------------------------------


def torch_wheels(settings: dict[str, str]) -> Path | None:
    """The folder among pip's find-links holding the pinned torch's CPU wheel, if any: how
    the Makefile gets torch on this machine, where PyTorch's index is out of reach."""
    pin = (ROOT / "pyproject.toml").read_text().split('"torch==', 1)[1].split('"', 1)[0]
    for folder in settings.get("find-links", "").split():
        path = Path(folder.removeprefix("file://"))
        if path.is_dir() and any(path.glob(f"torch-{pin}+cpu-*.whl")):
            return path
    return None


def build(
    image: str, base: str, dockerfile: Path, wheels: Path | None, log: Path
) -> list[tuple[str, float]]:
    """`buildah bud`, streamed to `log`; returns each Dockerfile step's time."""
    variant = image.rsplit(":", 1)[1]
    args = ["--build-arg", f"PYTHON_IMAGE={base}", "--build-arg", f"VARIANT={variant}"]
    if (
        wheels is not None and variant == "cpu"
    ):  # /mnt exists in the base, so the mount leaves nothing behind
        args += ["--build-arg", "TORCH_FIND_LINKS=/mnt", "--volume", f"{wheels}:/mnt:ro"]
    buildah("rmi", image, check=False)  # vfs keeps a full copy of every image
    # --force-rm: remove the stages' containers even when the build fails (it needs --no-cache)
    command = [*BUILDAH, "bud", "--isolation", "chroot", "--no-cache", "--force-rm"]
    command += ["--format", "docker", "--pull=never", *args, "-f", str(dockerfile)]
    command += ["-t", image, str(ROOT)]
    steps: list[tuple[str, float]] = []
    step, started = "", time.monotonic()
    with (
        log.open("w") as out,
        subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        ) as process,
    ):
        for line in process.stdout:
            out.write(line)
            if STEP.match(line):
                if step:
                    steps.append((step, time.monotonic() - started))
                step, started = line.strip()[:100], time.monotonic()
                print(f"  {step}", flush=True)
    if process.returncode != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-15:])
        raise Failed(f"buildah bud exited {process.returncode} at {step!r}:\n{tail}")
    steps.append((step, time.monotonic() - started))
    return steps


# -- 3. the run ---------------------------------------------------------------------------


@dataclass
class Container:
    name: str
    rootfs: Path
    image: dict  # `buildah inspect` of its image: the manifest, history and config

    @property
    def config(self) -> dict:
        """The image's Docker config: Cmd, Env, User, Healthcheck."""
        return self.image["Docker"]["config"]

    def run(self, *command: str, env: dict[str, str] | None = None) -> list[str]:
        """The `buildah run` command line for `command` as the image's user."""
        extra = [arg for key, value in (env or {}).items() for arg in ("--env", f"{key}={value}")]
        user = ["--user", self.config["User"]]
        return [*BUILDAH, "run", "--isolation", "chroot", *user, *extra, self.name, "--", *command]


def open_container(image: str) -> Container:
    buildah("rm", CONTAINER, check=False)  # left by a run that was killed
    name = buildah("from", "--pull=never", "--name", CONTAINER, image)
    rootfs = Path(buildah("mount", name))
    return Container(name, rootfs, json.loads(buildah("inspect", "--type", "image", image)))


def descendants(pid: int) -> list[int]:
    """Every process below `pid`, parents before children."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, queue = [], [pid]
    while queue:
        for child in children.get(queue.pop(0), []):
            found.append(child)
            queue.append(child)
    return found


def service_pid(launcher: int, cmd: list[str]) -> int:
    """The container's main process, the image's CMD, below `buildah run`: what `docker stop`
    signals."""
    for pid in descendants(launcher):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]
        except OSError:
            continue
        if argv[1:] == cmd[1:] and Path(argv[0]).name == cmd[0]:  # python: /opt/venv/bin/python
            return pid
    raise Failed(f"no process {cmd} below buildah run ({launcher})")


def wait_ready(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise Failed(f"the service exited {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if requests.get(url + "/v2/health/ready", timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(1)
    raise Failed(f"not ready within {READY_TIMEOUT} s:\n{log.read_text()[-3000:]}")


@dataclass
class Endpoints:
    url: str  # HTTP
    grpc: str  # host:port


def ask_v1(at: Endpoints, model: str, x: np.ndarray, tensor: str, output: str) -> np.ndarray:
    v1 = post(at.url, f"/v1/models/{model}:predict", {"instances": x.tolist()})
    return np.array([p["probabilities"] for p in v1["predictions"]], np.float32)


def ask_v2(at: Endpoints, model: str, x: np.ndarray, tensor: str, output: str) -> np.ndarray:
    body = {"inputs": [{"name": tensor, "datatype": "FP32", "shape": list(x.shape)}]}
    body["inputs"][0]["data"] = x.ravel().tolist()
    v2 = post(at.url, f"/v2/models/{model}/infer", body)["outputs"][0]
    return np.array(v2["data"], np.float32).reshape(v2["shape"])


def ask_grpc(at: Endpoints, model: str, x: np.ndarray, tensor: str, output: str) -> np.ndarray:
    request = grpcclient.InferInput(tensor, list(x.shape), "FP32")
    request.set_data_from_numpy(x)
    with grpcclient.InferenceServerClient(at.grpc) as client:
        return client.infer(model, [request]).as_numpy(output)


PROTOCOLS = {"V1": ask_v1, "V2": ask_v2, "gRPC": ask_grpc}


def check_answers(at: Endpoints, repository: Path) -> None:
    """Every protocol for every baked model, against ONNX Runtime on the baked ONNX file."""
    models = served_models(repository)
    if not models:
        raise Failed(f"no model baked in {repository}")
    for model in models:
        served = Served(repository, model)
        folder = repository / model / str(served.manifest.version)
        onnx_file = folder / served.manifest.artifact("onnxruntime").path
        session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
        x = served.examples[:ROWS]
        (tensor,), (output,) = served.manifest.inputs, served.manifest.outputs
        expected = session.run([output.name], {tensor.name: x})[0]
        for protocol, ask in PROTOCOLS.items():
            got = ask(at, model, x, tensor.name, output.name)
            diff = float(np.abs(got - expected).max())
            if got.shape != expected.shape or diff > TOLERANCE:
                raise Failed(f"{model} {protocol}: max |diff| {diff:.1e} against {onnx_file.name}")
            print(f"  {model} v{served.manifest.version} {protocol}: max |diff| {diff:.1e}")


def post(url: str, path: str, body: dict) -> dict:
    response = requests.post(url + path, json=body, timeout=30)
    if response.status_code != 200:
        raise Failed(f"POST {path}: {response.status_code} {response.text[:300]}")
    return response.json()


def check_variant(container: Container, variant: str) -> None:
    """torch's build is the variant's: CUDA's for cuda, none for cpu."""
    probe = "import torch; print(torch.version.cuda or '')"
    out = subprocess.run(container.run("python", "-c", probe), capture_output=True, text=True)
    cuda = out.stdout.strip()
    if out.returncode != 0 or bool(cuda) != (variant == "cuda"):
        raise Failed(f"torch.version.cuda is {cuda or None!r} in the {variant} image {out.stderr}")
    print(f"  torch {'built for CUDA ' + cuda if cuda else 'CPU build'}")


def check_healthcheck(container: Container, port: int, closed_port: int) -> None:
    """The image's HEALTHCHECK command, run inside the container: it passes against the
    running service and fails against a port where nothing listens."""
    test = container.config["Healthcheck"]["Test"]
    if test[0] != "CMD":
        raise Failed(f"HEALTHCHECK is not in exec form: {test}")
    for target, want in ((port, 0), (closed_port, 1)):
        command = container.run(*test[1:], env={"TENSORGATE_PORT": str(target)})
        code = subprocess.run(command, capture_output=True).returncode
        if (code == 0) != (want == 0):
            raise Failed(f"HEALTHCHECK against port {target} exited {code}")
    print("  passes on the service's port, fails on a closed one")


# Run inside the container as its user: every path it may write to, and real write attempts.
WRITABLE = r"""
import json, os, sys
found = []
for top, dirs, files in os.walk("/"):
    dirs[:] = [d for d in dirs if not os.path.ismount(os.path.join(top, d))]
    found += [p for p in [top, *(os.path.join(top, f) for f in files)]
              if not os.path.islink(p) and os.access(p, os.W_OK)]
attempts = {}
for folder in sys.argv[1:]:
    try:
        with open(os.path.join(folder, ".image-test-probe"), "w"):
            pass
        os.remove(os.path.join(folder, ".image-test-probe"))
        attempts[folder] = "written"
    except OSError as e:
        attempts[folder] = type(e).__name__
print(json.dumps({"writable": found, "attempts": attempts}))
"""
PROBES = ["/", "/models", "/opt/venv/lib/python3.11/site-packages", "/etc", "/var/tmp", "/tmp"]


def check_writable(container: Container) -> None:
    out = subprocess.run(
        container.run("python", "-c", WRITABLE, *PROBES), capture_output=True, text=True
    )
    if out.returncode != 0:
        raise Failed(f"the probe exited {out.returncode}: {out.stderr[-1000:]}")
    report = json.loads(out.stdout)
    outside = [p for p in report["writable"] if p != "/tmp" and not p.startswith("/tmp/")]
    if outside:
        raise Failed(f"uid {container.config['User']} can write outside /tmp: {outside[:10]}")
    written = dict(report["attempts"])
    if written.pop("/tmp") != "written" or set(written.values()) != {"PermissionError"}:
        raise Failed(f"writes: {report['attempts']}")
    print(f"  writable: /tmp only; writes refused in {', '.join(written)}")


def stop(process: subprocess.Popen, pid: int) -> None:
    os.kill(pid, signal.SIGTERM)
    try:
        code = process.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise Failed(f"still running {STOP_TIMEOUT} s after SIGTERM") from None
    if code != 0:
        raise Failed(f"exit code {code} after SIGTERM")
    print("  exit code 0")


# -- 4. sizes -----------------------------------------------------------------------------


def megabytes(n: float) -> str:
    return f"{n / 1e6:,.0f} MB"


def instruction(created_by: str) -> str:
    """A history entry's Dockerfile instruction, short: "RUN useradd", "COPY /opt/venv"."""
    words = created_by.replace("/bin/sh -c #(nop) ", "").replace("/bin/sh -c ", "RUN ").split()
    if words[:1] == ["COPY"]:
        return f"COPY {words[-1]}"
    return " ".join(words[:2]) if words[:1] == ["RUN"] else words[0]


def print_sizes(image: str, container: Container, base: str) -> None:
    inspect = container.image
    layers = json.loads(inspect["Manifest"])["layers"]
    base_layers = len(
        json.loads(json.loads(buildah("inspect", "--type", "image", base))["Manifest"])["layers"]
    )
    made_by, pending = [], []
    for entry in inspect["Docker"]["history"][base_layers:]:
        pending.append(instruction(entry.get("created_by", "")))
        if not entry.get("empty_layer"):
            made_by.append(pending)
            pending = []
    print(f"image {image}: {megabytes(sum(layer['size'] for layer in layers))}")
    for i, layer in enumerate(layers):
        what = f"the base, {base}" if i < base_layers else "; ".join(made_by[i - base_layers])
        print(f"  layer {megabytes(layer['size']):>9}  {what}")
    site = container.rootfs / "opt/venv/lib/python3.11/site-packages"
    sizes = {p.name: tree_size(p) for p in site.iterdir() if p.is_dir()}
    biggest = sorted(sizes.items(), key=lambda item: -item[1])[:6]
    print(f"  /opt/venv {megabytes(tree_size(container.rootfs / 'opt/venv'))}: ", end="")
    print(", ".join(f"{name} {megabytes(size)}" for name, size in biggest))
    print(f"  /models {megabytes(tree_size(container.rootfs / 'models'))}")


def tree_size(path: Path) -> int:
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


# -- main ---------------------------------------------------------------------------------


def serve_and_check(container: Container, variant: str, reports: Path, timings: Timings) -> None:
    port, grpc_port, closed_port = free_port(), free_port(), free_port()
    url = f"http://127.0.0.1:{port}"
    # docker run -e: loopback instead of the image's 0.0.0.0, and ports free here.
    env = {"TENSORGATE_HOST": "127.0.0.1", "TENSORGATE_PORT": str(port)}
    env["TENSORGATE_GRPC_PORT"] = str(grpc_port)
    log = reports / "service.log"
    cmd = container.config["Cmd"]
    with log.open("wb") as out:
        process = subprocess.Popen(
            container.run(*cmd, env=env), stdout=out, stderr=out, start_new_session=True
        )
    try:
        with timings.stage(f"run {' '.join(cmd)} as uid {container.config['User']}: ready"):
            wait_ready(url, process, log)
        with timings.stage("answers: V1, V2 and gRPC for every baked model"):
            check_answers(Endpoints(url, f"127.0.0.1:{grpc_port}"), container.rootfs / "models")
        with timings.stage(f"torch in the {variant} image"):
            check_variant(container, variant)
        with timings.stage("HEALTHCHECK inside the container"):
            check_healthcheck(container, port, closed_port)
        with timings.stage("writes outside /tmp"):
            check_writable(container)
        with timings.stage("SIGTERM"):
            stop(process, service_pid(process.pid, cmd))
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--dockerfile", type=Path, default=ROOT / "Dockerfile")
    parser.add_argument("--mirror", default="http://deb.debian.org/debian")
    parser.add_argument("--reports", type=Path, default=ROOT / "reports" / "image-test")
    args = parser.parse_args()
    missing = [tool for tool in ("buildah", "debootstrap") if shutil.which(tool) is None]
    if missing or os.geteuid() != 0:
        print(
            f"make image-test needs root and buildah and debootstrap (apt-get install "
            f"buildah debootstrap); missing: {', '.join(missing) or 'root'}",
            file=sys.stderr,
        )
        return 1
    args.reports.mkdir(parents=True, exist_ok=True)
    settings = pip_settings()
    ca = Path(settings["cert"]) if settings.get("cert") else None
    timings, container, image = Timings(), None, IMAGE.format(variant=args.variant)
    try:
        base = base_name(args.mirror, ca)
        with timings.stage("base"):
            make_base(base, args.mirror, ca)
        with timings.stage(f"build {image}"):
            wheels, log = torch_wheels(settings), args.reports / "build.log"
            steps = build(image, base, args.dockerfile, wheels, log)
        container = open_container(image)
        serve_and_check(container, args.variant, args.reports, timings)
        print("\n== sizes")
        print_sizes(image, container, base)
    except Failed as e:
        print(f"\nimage-test FAILED: {e}", file=sys.stderr)
        return 1
    finally:
        if container is not None:
            buildah("rm", container.name, check=False)
    print("\n== time per stage")
    for name, seconds in timings.stages:
        print(f"  {seconds:7.1f} s  {name}")
    print("  build, by Dockerfile step (over 1 s):")
    for step, seconds in steps:
        if seconds > 1:
            print(f"  {seconds:7.1f} s    {step}")
    print("\nimage-test passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
