"""`python -m export import FILE`: a model file made elsewhere (ONNX, or TorchScript) becomes a
verified version in the model repository, with the guarantees of an export of ours.

- The signature (names, datatypes, shapes with -1 for dynamic axes) is read from the ONNX
  graph, or for TorchScript given by the user; it is never guessed.
- ONNX files pass `onnx.checker`'s full check, which includes strict shape inference.
- The inputs' first axis is the batch axis: dynamic (-1), or fixed at 1, which serves one
  instance per request (max batch size 1, and the import says so).
- Every backend the file has runs on random inputs of the signature (a value range the
  user sets), at batch 1 and at the max batch size, through the runtimes the service serves
  with; the outputs must match the signature and be finite. This smoke run is recorded in
  the manifest. A sample (`--sample inputs.npz`) with expected outputs (`--expected`) is
  checked within a tolerance and recorded as the version's parity.
- The version is staged and published like an export: sha256s, the manifest last, one rename.
  A failure writes nothing and names the file and the reason.
"""

import shutil
import time
import zipfile
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import torch

from artifacts.manifest import (
    ARTIFACTS,
    DATATYPES,
    Backend,
    Files,
    Manifest,
    Parity,
    Serving,
    Smoke,
    TensorSpec,
    file_entry,
    fits,
    sha256_file,
    write_manifest,
)
from artifacts.runtimes import Tensors, load_runtime

from .pipeline import next_version, staging_folder

DYNAMIC_DIM = 8  # the size a dynamic axis past the batch one gets in the smoke run


class ImportFailed(ValueError):
    """The file cannot become a version; the message names it and says why."""


def parse_tensor(text: str) -> TensorSpec:
    """NAME:DATATYPE:D1,D2,... (batch first, -1 for a dynamic axis), as --input takes it."""
    name, _, rest = text.partition(":")
    datatype, _, dims = rest.partition(":")
    try:
        shape = [int(d) for d in dims.split(",")] if dims else []
        return TensorSpec(name=name, datatype=datatype, shape=shape)
    except ValueError as e:
        raise ImportFailed(
            f"{text!r} is not NAME:DATATYPE:D1,D2,... (e.g. input:FP32:-1,3,224,224): {e}"
        ) from None


def onnx_signature(path: Path) -> tuple[list[TensorSpec], list[TensorSpec], dict]:
    """(inputs, outputs, versions) from a file that passes the full ONNX check."""
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model, full_check=True)
    except Exception as e:  # onnx raises several kinds: all mean the same here
        raise ImportFailed(f"{path}: fails the ONNX checker: {e}") from None
    initializers = {i.name for i in model.graph.initializer}

    def spec(value: onnx.ValueInfoProto) -> TensorSpec:
        tensor = value.type.tensor_type
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name
        if dtype not in DATATYPES:
            raise ImportFailed(f"{path}: tensor '{value.name}' is {dtype}, which is not served")
        shape = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
        return TensorSpec(name=value.name, datatype=DATATYPES[dtype], shape=shape)

    inputs = [spec(v) for v in model.graph.input if v.name not in initializers]
    outputs = [spec(v) for v in model.graph.output]
    opset = max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    return inputs, outputs, {"onnx": onnx.__version__, "opset": opset}


def batch_axis(path: Path, tensors: list[TensorSpec]) -> bool:
    """Whether the first axis is a dynamic batch axis; False when it is fixed at 1."""
    firsts = {t.shape[0] if t.shape else None for t in tensors}
    if firsts == {-1}:
        return True
    if firsts == {1}:
        return False
    found = ", ".join(f"'{t.name}' {t.shape}" for t in tensors)
    raise ImportFailed(
        f"{path}: the first axis of every input and output must be the batch axis, dynamic "
        f"(-1) or fixed at 1; found {found}"
    )


def random_inputs(
    specs: list[TensorSpec], instances: int, value_range: tuple[float, float], seed: int
) -> Tensors:
    rng = np.random.default_rng(seed)
    low, high = value_range
    tensors = []
    for spec in specs:
        shape = (instances, *(DYNAMIC_DIM if d == -1 else d for d in spec.shape[1:]))
        if spec.datatype == "BOOL":
            x = rng.integers(0, 2, shape).astype(bool)
        elif np.dtype(spec.dtype).kind in "iu":
            x = rng.integers(int(low), int(high) + 1, shape).astype(spec.dtype)
        else:
            x = rng.uniform(low, high, shape).astype(spec.dtype)
        tensors.append(x)
    return tuple(tensors)


def check_outputs(path: Path, outputs: Tensors, specs: list[TensorSpec], instances: int) -> None:
    if len(outputs) != len(specs):
        raise ImportFailed(f"{path}: gave {len(outputs)} outputs; the signature has {len(specs)}")
    for out, spec in zip(outputs, specs, strict=True):
        if out.shape[:1] != (instances,) or not fits(spec.shape[1:], out.shape[1:]):
            raise ImportFailed(
                f"{path}: output '{spec.name}' has shape {list(out.shape)} for {instances} "
                f"instances; the signature says {spec.shape}"
            )
        if out.dtype != np.dtype(spec.dtype):
            raise ImportFailed(
                f"{path}: output '{spec.name}' is {out.dtype}; the signature says {spec.datatype}"
            )
        if out.dtype.kind == "f" and not np.isfinite(out).all():
            raise ImportFailed(f"{path}: output '{spec.name}' is not finite on the smoke inputs")


def smoke_run(
    staged: Path, path: Path, backend: Backend, inputs: list[TensorSpec],
    outputs: list[TensorSpec], batch_sizes: list[int], value_range: tuple[float, float],
) -> float:  # fmt: skip
    """Run the staged copy of `path` at each batch size; the largest batch's seconds."""
    try:
        runtime = load_runtime(backend, staged, "cpu", threads=1)
    except Exception as e:
        raise ImportFailed(f"{path}: {backend} cannot load it: {e}") from None
    seconds = 0.0
    for size in batch_sizes:
        x = random_inputs(inputs, size, value_range, seed=size)
        started = time.perf_counter()
        try:
            got = runtime.infer(x)
        except Exception as e:
            raise ImportFailed(f"{path}: {backend} fails on the smoke inputs: {e}") from None
        seconds = time.perf_counter() - started
        check_outputs(path, got, outputs, size)
    return seconds


def sample_parity(
    staged: Path, path: Path, backend: Backend, inputs: list[TensorSpec],
    outputs: list[TensorSpec], sample: Path, expected: Path, tolerance: float,
) -> Parity:  # fmt: skip
    """Run the user's sample on the staged copy of `path`; compare each output with the
    expected one."""
    with np.load(sample) as given, np.load(expected) as wanted:
        missing = [t.name for t in inputs if t.name not in given] + [
            t.name for t in outputs if t.name not in wanted
        ]
        if missing:
            raise ImportFailed(f"{sample} / {expected}: no array named {', '.join(missing)}")
        x = tuple(given[t.name].astype(t.dtype) for t in inputs)
        reference = [wanted[t.name] for t in outputs]
    got = load_runtime(backend, staged, "cpu", threads=1).infer(x)
    diff = max(
        float(np.abs(g.astype(np.float64) - r.astype(np.float64)).max()) if g.size else 0.0
        for g, r in zip(got, reference, strict=True)
    )
    if diff > tolerance:
        raise ImportFailed(
            f"{path}: {backend} differs from {expected} by {diff:.3g}, over the "
            f"tolerance {tolerance:g}"
        )
    return Parity(max_abs_diff=diff, batch_sizes=[len(x[0])], device="cpu")


def import_model(
    path: Path,
    name: str,
    repository: Path,
    *,
    inputs: list[TensorSpec] | None = None,
    outputs: list[TensorSpec] | None = None,
    labels: list[str] | None = None,
    max_batch_size: int = Serving().max_batch_size,
    batch_timeout: float = Serving().batch_timeout,
    value_range: tuple[float, float] = (0.0, 1.0),
    sample: Path | None = None,
    expected: Path | None = None,
    tolerance: float = 1e-5,
) -> Path:
    """Check, smoke-run and publish `path` as `repository/<name>/<n>/`; return its path."""
    if not path.is_file():
        raise ImportFailed(f"{path}: no such file")
    torchscript = zipfile.is_zipfile(path)  # TorchScript files are zip archives; ONNX is not
    backend: Backend = "torchscript" if torchscript else "onnxruntime"
    if torchscript:
        if not inputs or not outputs:
            raise ImportFailed(
                f"{path}: a TorchScript file does not say its signature: give every "
                "--input and --output (NAME:DATATYPE:D1,D2,...)"
            )
        versions: dict = {}
    else:
        if inputs or outputs:
            raise ImportFailed(f"{path}: an ONNX file's signature is read from its graph")
        inputs, outputs, versions = onnx_signature(path)
    batched = batch_axis(path, [*inputs, *outputs])
    if not batched:
        max_batch_size = 1
    if (sample is None) != (expected is None):
        raise ImportFailed("--sample and --expected go together")
    model_dir = repository / name
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = staging_folder(model_dir)
    try:
        staged = staging / ARTIFACTS[backend].file_name
        shutil.copyfile(path, staged)
        batch_sizes = sorted({1, max_batch_size})
        seconds = smoke_run(staged, path, backend, inputs, outputs, batch_sizes, value_range)
        parity = {}
        if sample is not None:
            parity[backend] = sample_parity(
                staged, path, backend, inputs, outputs, sample, expected, tolerance
            )
        version = next_version(model_dir)
        entry = file_entry(staged)
        try:
            manifest = Manifest(
                name=name,
                version=version,
                task="imported",
                labels=labels or [],
                inputs=inputs,
                outputs=outputs,
                files=Files(**{ARTIFACTS[backend].key: entry}),
                parity=parity,
                smoke=Smoke(
                    batch_sizes=batch_sizes, value_range=value_range, seconds={backend: seconds}
                ),
                serving=Serving(
                    backend=backend, max_batch_size=max_batch_size, batch_timeout=batch_timeout
                ),
                source={"file": str(path.resolve()), "sha256": sha256_file(path)},
                versions={
                    **versions,
                    "onnxruntime": onnxruntime.__version__,
                    "torch": torch.__version__,
                },
                created=datetime.now(UTC),
            )
        except ValueError as e:  # pydantic's: a bad name, labels that do not fit the output
            raise ImportFailed(f"{path}: {e}") from None
        write_manifest(staging, manifest)  # last: a folder without it is not a version
        target = model_dir / str(version)
        staging.rename(target)
        return target
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already after a successful rename
        if not any(model_dir.iterdir()):
            model_dir.rmdir()  # a first import that failed leaves no empty model folder
