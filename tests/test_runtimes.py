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
    examples = served(exported, name).examples
    runtime = load_runtime(backend, artifact(exported, name, backend), "cpu", threads=1)
    assert (runtime.name, runtime.device) == (backend, "cpu")
    (got,) = runtime.infer((examples,))
    assert got.dtype == np.float32 and got.shape == (len(examples), got.shape[1])
    np.testing.assert_allclose(got, direct(exported, name, examples), atol=1e-5, rtol=0)
    np.testing.assert_allclose(got.sum(axis=1), 1, atol=1e-5)


def test_the_driver_check_agrees_with_torch():
    assert cuda_devices() == torch.cuda.device_count()


def test_auto_picks_what_the_driver_sees_and_cuda_without_a_gpu_is_refused():
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if cuda_devices() else "cpu")
    if not cuda_devices():
        with pytest.raises(RuntimeError, match="the CUDA driver sees no GPU"):
            resolve_device("cuda")
