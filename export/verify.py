"""Proof that an exported artifact computes what the trained model computes.

Each backend (TorchScript, ONNX Runtime; on CPU, and on CUDA where a GPU is present) runs
the held-out split and random raw inputs at several batch sizes; its probabilities are
compared with eager PyTorch's, and its held-out accuracy must equal eager's.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from artifacts.manifest import ARTIFACTS, BACKENDS
from artifacts.runtimes import load_runtime
from training.data import Dataset

TOLERANCE = 1e-4  # largest allowed |probability - eager's|, per element
RANDOM_SEED = 0  # the random inputs are the same on every export

Runner = Callable[[np.ndarray], np.ndarray]  # float32 (N, *input) -> (N, classes)


class ParityError(RuntimeError):
    """An artifact's outputs or accuracy differ from eager PyTorch's."""


@dataclass
class BackendReport:
    device: str
    accuracy: float = 0.0
    max_abs_diff: float = 0.0
    batch_sizes: list[int] = field(default_factory=list)


@dataclass
class VerifyReport:
    eager_accuracy: float
    backends: dict[str, BackendReport]  # every backend, and "<backend>_cuda" with a GPU


def eager_runner(model: nn.Module) -> Runner:
    model.eval()

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(x)).numpy()

    return run


def artifact_runners(version_dir: Path) -> dict[str, tuple[str, Runner]]:
    """Every backend and device to verify, through the runtimes the service serves with, so
    the proof covers the code that serves: the CPU always, CUDA only where it is really there."""
    devices = ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
    threads = torch.get_num_threads()  # keep this process's setting (the runtime sets it)
    runners = {}
    for device in devices:
        for backend in BACKENDS:
            path = version_dir / ARTIFACTS[backend].file_name
            key = backend if device == "cpu" else f"{backend}_{device}"
            runtime = load_runtime(backend, path, device, threads)
            runners[key] = (device, lambda x, r=runtime: r.infer((x,))[0])  # one in, one out
    return runners


def parity_inputs(dataset: Dataset, batch_sizes: list[int]) -> list[tuple[str, np.ndarray]]:
    """(kind, batch) pairs: the whole held-out split, then at each batch size held-out rows
    (cycled when the split is smaller) and random raw values within the training range."""
    test = dataset.test.x.numpy()
    train = dataset.train.x.numpy()
    low, high = train.min(axis=0), train.max(axis=0)  # per input element
    rng = np.random.default_rng(RANDOM_SEED)
    batches = [("held-out", test)]
    for size in batch_sizes:
        batches.append(("held-out", np.resize(test, (size, *test.shape[1:]))))
        random = rng.uniform(low, high, size=(size, *test.shape[1:])).astype(np.float32)
        batches.append(("random", random))
    return batches


def accuracy(probabilities: np.ndarray, labels: np.ndarray) -> float:
    return float((probabilities.argmax(axis=1) == labels).mean())


def verify(
    name: str,
    model: nn.Module,
    runners: dict[str, tuple[str, Runner]],
    dataset: Dataset,
    batch_sizes: list[int],
    tolerance: float = TOLERANCE,
) -> VerifyReport:
    """Compare every runner with eager PyTorch; raise ParityError on the first failure."""
    reference = eager_runner(model)
    batches = [(kind, x, reference(x)) for kind, x in parity_inputs(dataset, batch_sizes)]
    labels = dataset.test.y.numpy()
    eager_accuracy = accuracy(batches[0][2], labels)
    report = VerifyReport(eager_accuracy, {})
    for backend, (device, run) in runners.items():
        result = BackendReport(device=device, batch_sizes=sorted({len(x) for _, x, _ in batches}))
        for kind, x, expected in batches:
            diff = float(np.abs(run(x) - expected).max())
            result.max_abs_diff = max(result.max_abs_diff, diff)
            if not diff <= tolerance:  # also catches NaN
                raise ParityError(
                    f"{name}: {backend} on {device} differs from eager PyTorch by {diff:.3g} "
                    f"at batch size {len(x)} ({kind} inputs); the tolerance is {tolerance:g}"
                )
        result.accuracy = accuracy(run(batches[0][1]), labels)
        if result.accuracy != eager_accuracy:
            raise ParityError(
                f"{name}: {backend} on {device} has held-out accuracy {result.accuracy:.4f}, "
                f"eager PyTorch {eager_accuracy:.4f}; they must be equal"
            )
        report.backends[backend] = result
    return report
