"""From a training checkpoint to a new, verified version in the model repository."""

import json
import secrets
import shutil
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import torch
from tqdm import tqdm

from artifacts.manifest import (
    ARTIFACTS,
    EXAMPLES_NAME,
    Files,
    Manifest,
    Parity,
    Serving,
    TensorSpec,
    file_entry,
    sha256_file,
    write_manifest,
)
from training import load_checkpoint, registry
from training.run import METRICS_NAME

from .formats import INPUT_NAME, ONNX_OPSET, OUTPUT_NAME, write_onnx, write_torchscript
from .verify import VerifyReport, artifact_runners, verify

STAGING_PREFIX = ".staging-"  # not a number, so never read as a version
EXAMPLES = 64  # held-out inputs kept beside the artifacts (examples.npy)
ONNX_FILE = ARTIFACTS["onnxruntime"].file_name
TORCHSCRIPT_FILE = ARTIFACTS["torchscript"].file_name


def staging_folder(model_dir: Path) -> Path:
    """A new folder to write a version in before it is published. Made with mkdir, so it has
    the umask's usual mode: tempfile.mkdtemp's 0700 would leave a version that only the
    exporting user can read, and a server running as another user (the image's) could not."""
    staging = model_dir / f"{STAGING_PREFIX}{secrets.token_hex(8)}"
    staging.mkdir()
    return staging


def parity_batch_sizes(max_batch_size: int) -> list[int]:
    """1, an odd size, the serving maximum, and an odd size beyond it (split across batches)."""
    return sorted({1, 7, max_batch_size, max(333, 2 * max_batch_size + 1)})


def next_version(model_dir: Path) -> int:
    """One past every numbered folder, complete or not: an existing number is never reused."""
    taken = [int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()]
    return max(taken, default=0) + 1


def build_manifest(
    checkpoint: dict,
    source: Path,
    version: int,
    staging: Path,
    report: VerifyReport,
    serving: Serving,
) -> Manifest:
    labels = checkpoint["labels"]
    return Manifest(
        name=checkpoint["model"],
        version=version,
        task=checkpoint["task"],
        labels=labels,
        inputs=[
            TensorSpec(name=INPUT_NAME, datatype="FP32", shape=[-1, *checkpoint["input_shape"]])
        ],
        outputs=[TensorSpec(name=OUTPUT_NAME, datatype="FP32", shape=[-1, len(labels)])],
        files=Files(
            onnx=file_entry(staging / ONNX_FILE),
            torchscript=file_entry(staging / TORCHSCRIPT_FILE),
            examples=file_entry(staging / EXAMPLES_NAME),
        ),
        metrics={
            "eager": {"accuracy": report.eager_accuracy},
            **{b: {"accuracy": r.accuracy} for b, r in report.backends.items()},
        },
        parity={
            b: Parity(max_abs_diff=r.max_abs_diff, batch_sizes=r.batch_sizes, device=r.device)
            for b, r in report.backends.items()
        },
        serving=serving,
        config=checkpoint["config"],
        source={"checkpoint": str(source), "sha256": sha256_file(source)},
        versions={
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
            "opset": ONNX_OPSET,
        },
        created=datetime.now(UTC),
    )


def not_publishable(checkpoint_path: Path) -> str | None:
    """Why a checkpoint should not become a served version, from its run's metrics.json: a
    dry run, or held-out accuracy below the model's bar; None when it is fine."""
    metrics_path = checkpoint_path.parent / METRICS_NAME
    try:
        metrics = json.loads(metrics_path.read_text())
    except (OSError, ValueError):
        return (
            f"{checkpoint_path}: its run has no readable {METRICS_NAME}, so its accuracy is unknown"
        )
    bar = registry.get(metrics["model"]).accuracy_bar
    accuracy = metrics["test_accuracy"]
    problems = []
    if metrics.get("dry_run"):
        problems.append("came from a dry run (python -m training --dry-run)")
    if accuracy < bar:
        problems.append(
            f"has held-out accuracy {accuracy:.4f}, below {metrics['model']}'s bar {bar}"
        )
    return f"{checkpoint_path} {' and '.join(problems)}" if problems else None


def export_model(
    checkpoint_path: Path, repository: Path, serving: Serving | None = None, progress: bool = True
) -> Path:
    """Write, verify and publish `repository/<model>/<n>/`; return its path.

    Everything is written into a staging folder, the manifest last, and the folder is renamed
    into place only when verification passed: a failed export leaves no version behind.
    """
    serving = serving or Serving()
    checkpoint, model = load_checkpoint(checkpoint_path)
    name = checkpoint["model"]
    dataset = registry.get(name).dataset()
    model_dir = repository / name
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = staging_folder(model_dir)
    steps = tqdm(total=4, desc=f"export {name}", unit="step", disable=not progress)
    try:
        steps.set_postfix_str("TorchScript")
        write_torchscript(model, staging / TORCHSCRIPT_FILE)
        steps.update()
        steps.set_postfix_str("ONNX")
        write_onnx(model, dataset.train.x[:2], staging / ONNX_FILE)
        np.save(staging / EXAMPLES_NAME, dataset.test.x[:EXAMPLES].numpy(), allow_pickle=False)
        steps.update()
        steps.set_postfix_str("verify")
        runners = artifact_runners(staging)
        batch_sizes = parity_batch_sizes(serving.max_batch_size)
        report = verify(name, model, runners, dataset, batch_sizes)
        steps.update()
        steps.set_postfix_str("publish")
        version = next_version(model_dir)
        manifest = build_manifest(checkpoint, checkpoint_path, version, staging, report, serving)
        write_manifest(staging, manifest)  # last: a folder without it is not a version
        target = model_dir / str(version)
        staging.rename(target)
        steps.update()
        return target
    finally:
        steps.close()
        shutil.rmtree(staging, ignore_errors=True)  # gone already after a successful rename
