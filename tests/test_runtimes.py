"""The runtimes (artifacts/runtimes.py) on real exported artifacts, in this process."""

import numpy as np
import pytest
import torch
from helpers import NAMES, artifact, direct, served

from artifacts.manifest import BACKENDS
from artifacts.runtimes import cuda_devices, load_runtime, resolve_device


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", NAMES)
def test_each_runtime_answers_the_examples_as_onnxruntime_does(exported, name, backend):
    model = served(exported, name)
    examples = model.examples
    runtime = load_runtime(backend, artifact(exported, name, backend), "cpu", threads=1)
    assert (runtime.name, runtime.device) == (backend, "cpu")
    (got,) = runtime.infer((examples,))
    # one probability per label (a binary model's two columns too), for every example
    assert got.dtype == np.float32 and got.shape == (len(examples), len(model.manifest.labels))
    np.testing.assert_allclose(got, direct(exported, name, examples), atol=1e-5, rtol=0)
    np.testing.assert_allclose(got.sum(axis=1), 1, atol=1e-5)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_the_driver_check_agrees_with_torch():
    """Where there is a GPU: both ask the driver; without one both would say 0."""
    assert cuda_devices() == torch.cuda.device_count() > 0


def test_auto_picks_what_the_driver_sees_and_cuda_without_a_gpu_is_refused():
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if cuda_devices() else "cpu")
    if not cuda_devices():
        with pytest.raises(RuntimeError, match="the CUDA driver sees no GPU"):
            resolve_device("cuda")
