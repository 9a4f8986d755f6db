"""The Open Inference Protocol over gRPC (service/grpc_server.py), on the real service, with
tritonclient.grpc unchanged and with hand-built messages where tritonclient cannot send
them (typed contents)."""

import threading

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from helpers import NAMES, direct, rows, tensors
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from export.formats import OUTPUT_NAME
from load_tests.servers import running_service


@pytest.fixture(scope="module")
def client(service) -> grpcclient.InferenceServerClient:
    return grpcclient.InferenceServerClient(service.grpc)


def infer_input(name: str, x: np.ndarray, datatype: str = "FP32") -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, list(x.shape), datatype)
    tensor.set_data_from_numpy(x)
    return tensor


def test_health_and_metadata(client, exported):
    assert client.is_server_live() and client.is_server_ready()
    assert client.get_server_metadata().name == "tensorgate"
    for name in NAMES:
        assert client.is_model_ready(name)
        meta = client.get_model_metadata(name)
        input_name, output_name = tensors(exported, name)
        assert (meta.name, list(meta.versions), meta.platform) == (name, ["1"], "onnxruntime_onnx")
        assert [t.name for t in meta.inputs] == [input_name]
        assert [t.name for t in meta.outputs] == [output_name]
        assert client.get_model_config(name).config.max_batch_size == 64


@pytest.mark.parametrize("name", NAMES)
def test_every_model_answers_as_onnxruntime_on_its_artifact(client, exported, name):
    x = rows(name, 5)
    input_name, output_name = tensors(exported, name)
    result = client.infer(name, [infer_input(input_name, x)], request_id="r1")
    np.testing.assert_allclose(
        result.as_numpy(output_name), direct(exported, name, x), atol=1e-5, rtol=0
    )
    response = result.get_response()
    assert (response.model_version, response.id) == ("1", "r1")


def test_typed_contents_are_taken_as_raw_ones_are(service, exported):
    """tritonclient always sends raw_input_contents; other clients fill `contents`."""
    x = rows("mlp", 2)
    input_name, output_name = tensors(exported, "mlp")
    request = service_pb2.ModelInferRequest(model_name="mlp")
    request.inputs.add(name=input_name, datatype="FP32", shape=list(x.shape))
    request.inputs[0].contents.fp32_contents.extend(x.ravel().tolist())
    with grpc.insecure_channel(service.grpc) as channel:
        response = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
    (output,) = response.outputs
    got = np.frombuffer(response.raw_output_contents[0], "<f4").reshape(list(output.shape))
    np.testing.assert_allclose(got, direct(exported, "mlp", x), atol=1e-5, rtol=0)
    assert output.name == output_name


@pytest.mark.parametrize("shape", [[-1, -30], [2**40, 30], [1] * 40])
def test_a_shape_no_tensor_has_is_invalid_argument(service, shape):
    request = service_pb2.ModelInferRequest(model_name="mlp")
    request.inputs.add(name="input", datatype="FP32", shape=shape)
    request.raw_input_contents.append(b"")
    with grpc.insecure_channel(service.grpc) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as raised:
            stub.ModelInfer(request)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "integers from 0 to 2147483647" in raised.value.details()


@pytest.mark.parametrize(("case", "call", "code", "says"), [
    ("unknown model", lambda c, x: c.infer("vgg", [infer_input("input", x)]),
     grpc.StatusCode.NOT_FOUND, "unknown model 'vgg'"),
    ("wrong shape", lambda c, x: c.infer("mlp", [infer_input("input", x[:, :7])]),
     grpc.StatusCode.INVALID_ARGUMENT, "expects [N, 30]"),
    ("wrong datatype", lambda c, x: c.infer("mlp", [infer_input("input", x.astype(np.float64), "FP64")]),
     grpc.StatusCode.INVALID_ARGUMENT, "has datatype 'FP64'; model 'mlp' expects FP32"),
    ("unknown input", lambda c, x: c.infer("mlp", [infer_input("features", x)]),
     grpc.StatusCode.INVALID_ARGUMENT, "unknown input 'features'"),
    ("unknown output", lambda c, x: c.infer("mlp", [infer_input("input", x)],
                                            outputs=[grpcclient.InferRequestedOutput("logits")]),
     grpc.StatusCode.INVALID_ARGUMENT, "unknown output 'logits'"),
    ("unknown version", lambda c, x: c.infer("mlp", [infer_input("input", x)], model_version="7"),
     grpc.StatusCode.NOT_FOUND, "has no version '7'"),
    ("an output twice", lambda c, x: c.infer("mlp", [infer_input("input", x)],
                                            outputs=[grpcclient.InferRequestedOutput(OUTPUT_NAME)] * 2),
     grpc.StatusCode.INVALID_ARGUMENT, "is requested more than once"),
    ("a version with a leading zero", lambda c, x: c.infer("mlp", [infer_input("input", x)],
                                                           model_version="01"),
     grpc.StatusCode.INVALID_ARGUMENT, "without leading zeros"),
])  # fmt: skip
def test_a_bad_call_gets_the_status_and_message_http_would_give(client, case, call, code, says):
    with pytest.raises(InferenceServerException) as raised:
        call(client, rows("mlp", 2))
    assert raised.value.status() == str(code) and says in raised.value.message()
    assert client.infer("mlp", [infer_input("input", rows("mlp", 1))]) is not None  # serving


def test_grpc_and_http_requests_are_batched_together(service, client, exported):
    """One gRPC client and one HTTP client, each with one request in flight at a time: a
    batch that holds two requests holds one of each."""
    x = rows("resnet", 8)
    input_name, _ = tensors(exported, "resnet")
    before = service.get("/v2/models/resnet/stats").json()["model_stats"][0]
    body = {"inputs": [{"name": input_name, "datatype": "FP32", "shape": list(x.shape),
                        "data": x.ravel().tolist()}]}  # fmt: skip

    def http_client() -> None:
        for _ in range(150):
            assert service.post("/v2/models/resnet/infer", json=body).status_code == 200

    thread = threading.Thread(target=http_client)
    thread.start()
    for _ in range(150):
        client.infer("resnet", [infer_input(input_name, x)])
    thread.join()
    after = service.get("/v2/models/resnet/stats").json()["model_stats"][0]
    requests = (
        after["inference_stats"]["success"]["count"] - before["inference_stats"]["success"]["count"]
    )
    batches = after["execution_count"] - before["execution_count"]
    assert requests == 300
    assert batches < requests, (batches, requests)  # some batch ran a gRPC and an HTTP request
    assert service.metric("tensorgate_requests_total", model="resnet", protocol="grpc") >= 150


def test_the_api_key_guards_inference_and_metadata_not_health(exported, tmp_path):
    with running_service(exported, tmp_path, models="mlp", api_key="s3cret") as s:
        client = grpcclient.InferenceServerClient(s.grpc)
        assert client.is_server_live() and client.is_model_ready("mlp")
        x = infer_input("input", rows("mlp", 1))
        with pytest.raises(InferenceServerException) as refused:
            client.infer("mlp", [x])
        assert refused.value.status() == str(grpc.StatusCode.UNAUTHENTICATED)
        with pytest.raises(InferenceServerException):
            client.get_model_metadata("mlp", headers={"authorization": "Bearer wrong"})
        assert client.infer("mlp", [x], headers={"authorization": "Bearer s3cret"}) is not None
        assert client.get_model_metadata("mlp", headers={"x-api-key": "s3cret"}).name == "mlp"


def test_the_repository_extension_and_statistics_over_grpc(exported, tmp_path):
    with running_service(exported, tmp_path, models="mlp,resnet", model_control="explicit") as s:
        client = grpcclient.InferenceServerClient(s.grpc)
        index = client.get_model_repository_index()
        assert {(m.name, m.version, m.state) for m in index.models} >= {
            ("mlp", "1", "READY"), ("resnet", "1", "READY")}  # fmt: skip
        client.unload_model("resnet")
        x = rows("resnet", 1)
        with pytest.raises(InferenceServerException) as refused:
            for _ in range(100):  # until the unload has reached this process
                client.infer("resnet", [infer_input("input", x)])
        assert refused.value.status() == str(grpc.StatusCode.UNAVAILABLE)
        assert "unloaded" in refused.value.message()
        assert not client.is_model_ready("resnet") and client.is_server_ready()
        client.load_model("resnet")  # returns once it serves again
        assert client.infer("resnet", [infer_input("input", x)]) is not None
        client.infer("mlp", [infer_input("input", rows("mlp", 1))])
        (entry,) = client.get_inference_statistics("mlp").model_stats
        assert (entry.name, entry.version) == ("mlp", "1")
        assert entry.inference_stats.success.count >= 1
