"""The model repository's format: `manifest.json`'s schema, the backend names and the file
each backend loads, file hashing and version lookup.

Export writes this format and the service reads it; it imports neither (nor torch).

    model_repository/<model>/<version>/{model.onnx, model.torchscript.pt, examples.npy,
                                        manifest.json}

A version folder without a valid manifest is not a version: export writes the manifest last,
into a staging folder that is renamed into place whole.
"""

import hashlib
import json
import os
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, NamedTuple, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

MANIFEST_NAME = "manifest.json"
DEFAULT_REPOSITORY = Path("model_repository")
REPOSITORY_VARIABLE = "TENSORGATE_REPOSITORY"  # the service's setting, which export follows too
EXAMPLES_NAME = "examples.npy"  # held-out inputs, (N, *input) float32, for load tests and docs
SCHEMA_VERSION = 1

# The one backend vocabulary: serving settings, metrics, parity and the runtimes all use it.
Backend = Literal["onnxruntime", "torchscript"]
BACKENDS: tuple[Backend, ...] = get_args(Backend)

# The V2 datatypes served, and the numpy dtype of each (the protocol's and the runtimes').
Datatype = Literal[
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
    "FP16", "FP32", "FP64",
]  # fmt: skip
NUMPY: dict[Datatype, str] = {
    "BOOL": "bool", "UINT8": "uint8", "UINT16": "uint16", "UINT32": "uint32",
    "UINT64": "uint64", "INT8": "int8", "INT16": "int16", "INT32": "int32", "INT64": "int64",
    "FP16": "float16", "FP32": "float32", "FP64": "float64",
}  # fmt: skip
DATATYPES: dict[str, Datatype] = {dtype: name for name, dtype in NUMPY.items()}  # the reverse


class Artifact(NamedTuple):
    """The file a backend loads."""

    key: str  # its entry in the manifest's "files" (the format's name)
    file_name: str  # what export names it in a version folder
    platform: str  # Triton's name for the pair, given in V2 model metadata


ARTIFACTS: dict[Backend, Artifact] = {
    "onnxruntime": Artifact("onnx", "model.onnx", "onnxruntime_onnx"),
    "torchscript": Artifact("torchscript", "model.torchscript.pt", "pytorch_libtorch"),
}


class ManifestError(ValueError):
    """A manifest is missing or invalid, or a file does not match its recorded sha256."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TensorSpec(_Strict):
    name: str
    datatype: Datatype
    shape: list[int]  # batch first; -1 for a dynamic axis (the batch axis, or another)

    @property
    def dtype(self) -> str:
        """The numpy dtype."""
        return NUMPY[self.datatype]


class FileEntry(_Strict):
    path: str = Field(pattern=r"^[A-Za-z0-9._-]+$")  # a plain name inside the version folder
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    bytes: int = Field(ge=0)


class Files(_Strict):
    onnx: FileEntry | None = None  # an imported TorchScript file has no ONNX twin
    torchscript: FileEntry | None = None  # nor an imported ONNX file a TorchScript one
    examples: FileEntry | None = None  # EXAMPLES_NAME; absent in manifests older than it

    @model_validator(mode="after")
    def _an_artifact(self) -> "Files":
        if self.onnx is None and self.torchscript is None:
            raise ValueError("a version needs an ONNX or a TorchScript file")
        return self


class Parity(_Strict):
    max_abs_diff: float  # largest |probability - eager PyTorch's| over every batch tried
    batch_sizes: list[int]
    device: str  # "cpu" or "cuda"


class Smoke(_Strict):
    """An imported file's check: every backend ran on inputs of the declared signature."""

    batch_sizes: list[int]
    value_range: tuple[float, float]  # the random inputs' range
    seconds: dict[str, float]  # backend -> the largest batch's time


class Serving(_Strict):
    backend: Backend = "onnxruntime"
    max_batch_size: int = Field(default=64, ge=1)  # instances per device call
    batch_timeout: float = Field(default=0.005, ge=0)  # seconds to wait for a batch to fill


class Manifest(_Strict):
    schema_version: Literal[1] = SCHEMA_VERSION
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    version: int = Field(ge=1)
    task: Literal["binary", "multiclass", "imported"]
    labels: list[str] = []  # one per column of the first output, when it is a probability vector
    inputs: list[TensorSpec] = Field(min_length=1)
    outputs: list[TensorSpec] = Field(min_length=1)
    files: Files
    metrics: dict[str, dict[str, float]] = {}  # "eager" or a backend -> {"accuracy": held-out}
    # each backend on the CPU, "<backend>_cuda" where a GPU verified: against eager PyTorch,
    # or for an imported file, against the outputs given with its sample
    parity: dict[str, Parity] = {}
    smoke: Smoke | None = None  # an imported file's
    serving: Serving = Serving()
    config: dict[str, Any] = {}  # the model's config dataclass, as saved with the checkpoint
    source: dict[str, Any] = {}  # the checkpoint or file it came from, and its sha256
    versions: dict[str, str | int]  # torch, onnx, onnxruntime, opset
    created: datetime

    @model_validator(mode="after")
    def _labels_match_outputs(self) -> "Manifest":
        width = self.outputs[0].shape[-1]
        if self.labels and width != len(self.labels):
            raise ValueError(f"{len(self.labels)} labels for an output of width {width}")
        if self.artifact(self.serving.backend) is None:
            raise ValueError(f"serving.backend is {self.serving.backend}, which has no file")
        return self

    def artifact(self, backend: Backend) -> FileEntry | None:
        """The file entry `backend` loads; None when the version has none for it."""
        return getattr(self.files, ARTIFACTS[backend].key)

    @property
    def batched(self) -> bool:
        """Whether the inputs' first axis is a dynamic batch axis (else it is fixed at 1)."""
        return self.inputs[0].shape[0] == -1

    @property
    def backends(self) -> list[Backend]:
        return [b for b in BACKENDS if self.artifact(b) is not None]


def fits(declared: Sequence[int], actual: Sequence[int]) -> bool:
    """Whether a shape matches a declared one, -1 standing for any size."""
    return len(declared) == len(actual) and all(
        d in (-1, got) for d, got in zip(declared, actual, strict=True)
    )


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_entry(path: Path) -> FileEntry:
    return FileEntry(path=path.name, sha256=sha256_file(path), bytes=path.stat().st_size)


def write_manifest(version_dir: Path, manifest: Manifest) -> Path:
    path = version_dir / MANIFEST_NAME
    path.write_text(manifest.model_dump_json(indent=2) + "\n")
    return path


def read_manifest(version_dir: Path) -> Manifest:
    path = version_dir / MANIFEST_NAME
    try:
        return Manifest.model_validate(json.loads(path.read_text()))
    except FileNotFoundError:
        raise ManifestError(f"{path}: no manifest; this is not a complete version") from None
    except (json.JSONDecodeError, ValidationError) as e:
        raise ManifestError(f"{path}: invalid manifest: {e}") from None


def verify_files(version_dir: Path, manifest: Manifest) -> None:
    """Check every file's size and sha256 against the manifest; raise naming the first bad one."""
    listed = (manifest.files.onnx, manifest.files.torchscript, manifest.files.examples)
    for entry in filter(None, listed):
        path = version_dir / entry.path
        if not path.is_file():
            raise ManifestError(f"{path}: missing (listed in {MANIFEST_NAME})")
        actual = sha256_file(path)
        if actual != entry.sha256:
            raise ManifestError(
                f"{path}: sha256 {actual} does not match {entry.sha256} in {MANIFEST_NAME}; "
                "the file was changed or corrupted after export"
            )


def versions(model_dir: Path) -> list[int]:
    """The version numbers under a model folder that hold a manifest, ascending."""
    if not model_dir.is_dir():
        return []
    found = (p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())
    return sorted(int(p.name) for p in found if (p / MANIFEST_NAME).is_file())


def default_repository() -> Path:
    """The repository a command works on when none is named: the service's setting
    (TENSORGATE_REPOSITORY), else ./model_repository."""
    return Path(os.environ.get(REPOSITORY_VARIABLE) or DEFAULT_REPOSITORY)
