"""Services started on other backends and devices: TorchScript, CUDA where there is a GPU,
and workers that poll between requests."""

import time

import numpy as np
import pytest
import torch
import tritonclient.http as httpclient
from helpers import NAMES, direct, rows, tensors, v2_json

from load_tests.servers import running_service


def test_the_torchscript_backend_serves_the_same_answers(exported, tmp_path):
    with running_service(exported, tmp_path, backend="torchscript") as s:
        client = httpclient.InferenceServerClient(s.url.removeprefix("http://"))
        for name in NAMES:
            assert client.get_model_metadata(name)["platform"] == "pytorch_libtorch"
            x = rows(name, 70)  # beyond the max batch of 64: two device calls
            input_name, output_name = tensors(exported, name)
            tensor = httpclient.InferInput(input_name, list(x.shape), "FP32")
            tensor.set_data_from_numpy(x)
            got = client.infer(name, [tensor]).as_numpy(output_name)
            np.testing.assert_allclose(got, direct(exported, name, x), atol=1e-5, rtol=0)
            assert s.metric("tensorgate_model_info", model=name, backend="torchscript") == 1


def test_workers_that_poll_between_requests_answer_each_request_in_turn(exported, tmp_path):
    """TENSORGATE_WORKER_SPIN: requests one after another, each caught while the worker polls
    (or after it has gone to sleep, past the 10 ms), answer as the model computes them."""
    with running_service(exported, tmp_path, models="mlp", worker_spin=0.01) as s:
        client = httpclient.InferenceServerClient(s.url.removeprefix("http://"))
        input_name, output_name = tensors(exported, "mlp")
        x = rows("mlp", 6)
        for i, pause in enumerate((0, 0, 0.05, 0, 0.05, 0)):
            time.sleep(pause)
            tensor = httpclient.InferInput(input_name, [1, *x.shape[1:]], "FP32")
            tensor.set_data_from_numpy(x[i : i + 1])
            got = client.infer("mlp", [tensor]).as_numpy(output_name)
            np.testing.assert_allclose(got, direct(exported, "mlp", x[i : i + 1]), atol=1e-5)
    assert "worker 0 serving" in s.log.read_text()
    assert "polling 10 ms for each next request" in s.log.read_text()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("backend", ["onnxruntime", "torchscript"])
def test_cuda_serves_where_a_gpu_is_present(exported, tmp_path, backend):
    with running_service(exported, tmp_path, device="cuda", backend=backend) as s:
        for name in NAMES:
            x = rows(name, 33)
            r = s.post(f"/v2/models/{name}/infer", json=v2_json(x))
            got = np.array(r.json()["outputs"][0]["data"], np.float32).reshape(33, -1)
            np.testing.assert_allclose(got, direct(exported, name, x), atol=1e-4, rtol=0)
            assert s.metric("tensorgate_model_info", model=name, device="cuda:0") == 1
