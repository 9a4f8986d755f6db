"""What clients other than tritonclient read, on the live service: the Open Inference
Protocol's response bodies (its REST spec's schemas, restated here with jsonschema), KServe's
liveness and model lists, and Triton's model configuration and statistics extensions in the
fields perf_analyzer reads."""

import json
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import requests
from helpers import NAMES, direct, rows, served, v2_json

# The OIP REST spec's (kserve/open-inference-protocol, open_inference_rest.yaml) response
# schemas: required fields and types.
TENSOR = {
    "type": "object",
    "required": ["name", "datatype", "shape"],
    "properties": {
        "name": {"type": "string"},
        "datatype": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer"}},
    },
}
OIP = {
    "server_metadata": {
        "type": "object",
        "required": ["name", "version", "extensions"],
        "properties": {
            "name": {"type": "string"},
            "version": {"type": "string"},
            "extensions": {"type": "array", "items": {"type": "string"}},
        },
    },
    "model_metadata": {
        "type": "object",
        "required": ["name", "platform"],
        "properties": {
            "name": {"type": "string"},
            "versions": {"type": "array", "items": {"type": "string"}},
            "platform": {"type": "string"},
            "inputs": {"type": "array", "items": TENSOR},
            "outputs": {"type": "array", "items": TENSOR},
        },
    },
    "inference_response": {
        "type": "object",
        "required": ["model_name", "outputs"],
        "properties": {
            "model_name": {"type": "string"},
            "model_version": {"type": "string"},
            "id": {"type": "string"},
            "outputs": {
                "type": "array",
                "items": {
                    **TENSOR,
                    "required": ["name", "shape", "datatype", "data"],
                    "properties": {**TENSOR["properties"], "data": {"type": "array"}},
                },
            },
        },
    },
    "error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
}


def valid(body: dict, schema: str) -> None:
    jsonschema.validate(body, OIP[schema])


@pytest.mark.parametrize("path", ["/v2", "/v2/"])
def test_server_metadata_answers_on_both_paths_without_a_redirect(service, path):
    response = requests.get(service.url + path, allow_redirects=False, timeout=30)
    assert response.status_code == 200, response.status_code
    valid(response.json(), "server_metadata")


@pytest.mark.parametrize("name", NAMES)
def test_model_metadata_inference_and_errors_match_the_oip_schemas(service, name):
    for path in (f"/v2/models/{name}", f"/v2/models/{name}/versions/1"):
        valid(service.get(path).json(), "model_metadata")
    answer = service.post(f"/v2/models/{name}/infer", json=v2_json(rows(name, 2), id="q"))
    valid(answer.json(), "inference_response")
    bad = service.post(f"/v2/models/{name}/infer", json={"inputs": []})
    assert bad.status_code == 400
    valid(bad.json(), "error")
    valid(service.get("/v2/models/vgg").json(), "error")


def test_kserve_liveness_and_model_lists(service):
    assert service.get("/").json() == {"status": "alive"}
    for path in ("/v1/models", "/v2/models"):
        assert service.get(path).json() == {"models": NAMES}
    for path in ("/health", "/info"):  # LitServe's own routes are not served
        assert service.get(path).status_code == 404


@pytest.mark.parametrize("name", NAMES)
def test_the_model_config_has_what_perf_analyzer_reads(service, exported, name):
    manifest = served(exported, name).manifest
    for path in (f"/v2/models/{name}/config", f"/v2/models/{name}/versions/1/config"):
        config = service.get(path).json()
        assert config["name"] == name and config["max_batch_size"] == 64
        assert config["platform"] == "onnxruntime_onnx" and config["backend"] == "onnxruntime"
        assert "dynamic_batching" in config and "sequence_batching" not in config
        assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 500_000
        for tensors, specs in (
            (config["input"], manifest.inputs),
            (config["output"], manifest.outputs),
        ):
            assert [(t["name"], t["data_type"], t["dims"]) for t in tensors] == [
                (s.name, "TYPE_FP32", s.shape[1:]) for s in specs
            ]
        assert config["instance_group"] == [{"name": f"{name}_0", "kind": "KIND_CPU", "count": 1}]
    assert service.get(f"/v2/models/{name}/versions/9/config").status_code == 404


def test_statistics_count_each_request_its_queue_and_compute_time(service):
    def mlp_stats() -> dict:
        (entry,) = service.get("/v2/models/mlp/stats").json()["model_stats"]
        return entry

    before = mlp_stats()
    for i in range(5):
        x = rows("mlp", 3, start=i)
        assert service.post("/v2/models/mlp/infer", json=v2_json(x)).status_code == 200
    assert service.post("/v2/models/mlp/infer", json={"inputs": []}).status_code == 400
    after = mlp_stats()
    assert (after["name"], after["version"]) == ("mlp", "1")

    def grew(kind: str, field: str = "count") -> int:
        return after["inference_stats"][kind][field] - before["inference_stats"][kind][field]

    assert grew("success") == 5 and grew("fail") == 1
    assert grew("queue") == grew("compute_infer") == 5
    assert after["inference_count"] - before["inference_count"] == 15
    assert 1 <= after["execution_count"] - before["execution_count"] <= 5
    # per request: the time in the server covers its queue and compute time
    assert grew("success", "ns") > grew("compute_infer", "ns") > 0
    assert after["last_inference"] > 0 and after["last_inference"] >= before["last_inference"]
    every = service.get("/v2/models/stats").json()["model_stats"]
    assert [e["name"] for e in every] == NAMES
    assert all(e["version"] == "1" for e in every)


# Run in a process of its own: kserve's generated protobuf module and tritonclient.grpc's
# (which other test files import) define the same OIP messages ("inference.*"), and one
# process's protobuf registry takes only one of them.
KSERVE_CLIENT = """
import asyncio, json, sys
import numpy as np
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig

url, input_name, binary = sys.argv[1], sys.argv[2], sys.argv[3] == "binary"
x = np.array(json.loads(sys.stdin.read()), np.float32)

async def calls():
    v1 = InferenceRESTClient(RESTConfig(protocol="v1"))
    v2 = InferenceRESTClient(RESTConfig(protocol="v2"))
    try:
        checks = [
            await v1.is_server_live(url),
            await v1.is_model_ready(url, "resnet"),
            await v2.is_server_live(url),
            await v2.is_server_ready(url),
            await v2.is_model_ready(url, "resnet"),
        ]
        v1_answer = await v1.infer(url, {"instances": x.tolist()}, model_name="resnet")
        tensor = InferInput(input_name, list(x.shape), "FP32")
        tensor.set_data_from_numpy(x, binary_data=binary)
        answer = await v2.infer(url, InferRequest("resnet", [tensor], request_id="k1"),
                                model_name="resnet")
        v2_answer = {"id": answer.id, "model_name": answer.model_name,
                     "output": answer.outputs[0].as_numpy().tolist()}
        return {"checks": checks, "v1": v1_answer, "v2": v2_answer}
    finally:
        await v1.close()
        await v2.close()

print(json.dumps(asyncio.run(calls())))
"""


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_the_kserve_sdk_rest_client_works_unchanged(service, exported, binary):
    """kserve's InferenceRESTClient, V1 and V2: liveness, readiness, model readiness, infer."""
    x = rows("resnet", 3)
    input_name = served(exported, "resnet").manifest.inputs[0].name
    mode = "binary" if binary else "json"
    done = subprocess.run(
        [sys.executable, "-c", KSERVE_CLIENT, service.url, input_name, mode],
        input=json.dumps(x.tolist()), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    answers = json.loads(done.stdout)
    assert answers["checks"] == [True, True, True, True, True]
    expected = direct(exported, "resnet", x)
    got = np.array([p["probabilities"] for p in answers["v1"]["predictions"]], np.float32)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    v2 = answers["v2"]
    assert v2["id"] == "k1" and v2["model_name"] == "resnet"
    np.testing.assert_allclose(np.array(v2["output"], np.float32), expected, atol=1e-5, rtol=0)


def test_an_openapi_fuzzer_finds_no_server_error_and_no_mismatch(service):
    """schemathesis, from /openapi.json, with every check (tests/schemathesis.toml says where
    one does not apply and why): no 5xx, every status, content type, header and body as
    documented, every schema-violating body refused."""
    command = [str(Path(sys.executable).with_name("schemathesis"))]
    command += ["--config-file", str(Path(__file__).with_name("schemathesis.toml")), "run"]
    command += [service.url + "/openapi.json", "--max-examples", "20", "--seed", "1"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert re.search(r"\d+ generated, (\d+) passed", done.stdout), done.stdout[-2000:]


def test_tritonclients_repository_index_lists_every_version_and_its_state(service):
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(service.url.removeprefix("http://"))
    index = client.get_model_repository_index()
    assert index == [
        {"name": name, "version": "1", "state": "READY", "reason": ""} for name in NAMES
    ]
    assert service.post("/v2/repository/index", json={"ready": True}).json() == index
    bad = service.post("/v2/repository/index", data=b"[1]")
    assert bad.status_code == 400 and "ready" in bad.json()["error"]
