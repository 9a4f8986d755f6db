"""The real service on a loopback port, over HTTP: tritonclient, V1, batching, errors, limits."""

import concurrent.futures as cf
import gzip
import json
import re
import socket
import subprocess
import time

import numpy as np
import pytest
import requests
import tritonclient.http as httpclient
from helpers import BATCH_TIMEOUT, NAMES, direct, rows, served, tool, v2_json

from load_tests.payloads import request_body


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("name", NAMES)
def test_tritonclient_checks_health_reads_metadata_and_infers(service, exported, name, binary):
    client = httpclient.InferenceServerClient(service.url.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(name) and client.is_model_ready(name, "1")
    manifest = served(exported, name).manifest
    input_name, output_name = manifest.inputs[0].name, manifest.outputs[0].name
    metadata = client.get_model_metadata(name)
    assert metadata["inputs"] == [t.model_dump() for t in manifest.inputs]
    assert metadata["outputs"] == [t.model_dump() for t in manifest.outputs]
    assert metadata["versions"] == ["1"] and metadata["platform"] == "onnxruntime_onnx"

    x = rows(name, 9)
    tensor = httpclient.InferInput(input_name, list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    wanted = httpclient.InferRequestedOutput(output_name, binary_data=binary)
    result = client.infer(name, [tensor], outputs=[wanted], request_id="req-7", model_version="1")
    assert result.get_response()["id"] == "req-7"
    assert result.get_response()["model_version"] == "1"
    expected = direct(exported, name, x)
    np.testing.assert_allclose(result.as_numpy(output_name), expected, atol=1e-5, rtol=0)
    if binary:  # no outputs named: tritonclient asks for binary_data_output
        result = client.infer(name, [tensor])
        np.testing.assert_allclose(result.as_numpy(output_name), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", NAMES)
def test_v1_agrees_with_v2(service, exported, name):
    x = rows(name, 5, start=3)
    v1 = service.post(f"/v1/models/{name}:predict", json={"instances": x.tolist()})
    v2 = service.post(f"/v2/models/{name}/infer", json=v2_json(x))
    assert v1.status_code == v2.status_code == 200
    p1 = np.array([p["probabilities"] for p in v1.json()["predictions"]], dtype=np.float32)
    p2 = np.array(v2.json()["outputs"][0]["data"], dtype=np.float32).reshape(
        v2.json()["outputs"][0]["shape"]
    )
    np.testing.assert_allclose(p1, p2, atol=1e-7, rtol=0)
    labels = served(exported, name).manifest.labels
    for prediction, row in zip(v1.json()["predictions"], p1, strict=True):
        assert prediction["index"] == int(row.argmax())
        assert prediction["label"] == labels[prediction["index"]]


def test_a_request_larger_than_the_max_batch_is_split_and_answered_whole(service, exported):
    x = rows("resnet", 333)  # max batch 64: six device calls
    response = service.post("/v1/models/resnet:predict", json={"instances": x.tolist()})
    got = np.array([p["probabilities"] for p in response.json()["predictions"]], dtype=np.float32)
    np.testing.assert_allclose(got, direct(exported, "resnet", x), atol=1e-5, rtol=0)


def test_concurrent_requests_are_batched_and_each_gets_its_own_rows(service, exported):
    per_request, requests_sent = 16, 48
    merged_before = service.metric("tensorgate_batch_size_bucket", model="resnet", le="64.0")
    merged_before -= service.metric("tensorgate_batch_size_bucket", model="resnet", le="16.0")

    def blocker(i: int) -> tuple[np.ndarray, np.ndarray]:
        # 1,024 instances as binary tensors: queued at once, ~25 ms of compute each, so the
        # small requests arriving meanwhile queue up behind them whatever the machine's load.
        x = rows("resnet", 1024, start=i)
        body, headers = request_body("v2-binary", x, str(i), served(exported, "resnet").manifest)
        r = service.post("/v2/models/resnet/infer", data=body, headers=headers)
        length = int(r.headers["Inference-Header-Content-Length"])
        return x, np.frombuffer(r.content[length:], "<f4").reshape(1024, 10)

    def call(i: int) -> tuple[np.ndarray, np.ndarray]:
        x = rows("resnet", per_request, start=i * 5)
        if i % 2:
            r = service.post("/v2/models/resnet/infer", json=v2_json(x))
            return x, np.array(r.json()["outputs"][0]["data"], np.float32).reshape(per_request, 10)
        r = service.post("/v1/models/resnet:predict", json={"instances": x.tolist()})
        return x, np.array([p["probabilities"] for p in r.json()["predictions"]], np.float32)

    with cf.ThreadPoolExecutor(max_workers=requests_sent + 4) as pool:
        blocked = [pool.submit(blocker, i) for i in range(4)]
        answers = list(pool.map(call, range(requests_sent))) + [f.result() for f in blocked]
    for x, got in answers:
        np.testing.assert_allclose(got, direct(exported, "resnet", x), atol=1e-5, rtol=0)
    merged = service.metric("tensorgate_batch_size_bucket", model="resnet", le="64.0")
    merged -= service.metric("tensorgate_batch_size_bucket", model="resnet", le="16.0")
    # Every small request holds 16 instances: a batch of 17-64 merged several of them.
    assert merged - merged_before > 0


def test_a_lone_request_does_not_wait_for_the_batch_timeout(service):
    x = rows("mlp", 1)
    latencies = []
    for _ in range(10):
        started = time.perf_counter()
        assert service.post("/v1/models/mlp:predict", json={"instances": x.tolist()}).ok
        latencies.append(time.perf_counter() - started)
    # With LitServe's own loop each would take >= 0.5 s; here the median is milliseconds.
    assert float(np.median(latencies)) < BATCH_TIMEOUT / 5, latencies


ONE_ROW = np.ones((1, 30), np.float32)
DEEP = b"[" * 5000 + b"1" + b"]" * 5000


def binary(doc: dict, payload: bytes) -> dict:
    """A V2 binary-extension request: JSON header, then raw bytes, with the header's length."""
    head = json.dumps(doc).encode()
    return {"data": head + payload, "headers": {"Inference-Header-Content-Length": str(len(head))}}


# End to end, a few of each kind: every parser case, for every model, is in test_protocol.py.
# fmt: off
BAD_REQUESTS = [
    ("v1 malformed JSON", "POST", "/v1/models/mlp:predict", {"data": b"{not json"}, 400, "not valid JSON"),
    ("v1 nested too deeply", "POST", "/v1/models/resnet:predict", {"data": b'{"instances": ' + DEEP + b"}"}, 400, "nested too deeply"),
    ("v1 wrong shape", "POST", "/v1/models/transformer:predict", {"json": {"instances": [[1, 2, 3]]}}, 400, "expects [N, 8, 8]"),
    ("v1 too many instances", "POST", "/v1/models/mlp:predict", {"json": {"instances": ONE_ROW.tolist() * 1025}}, 400, "at most 1024"),
    ("v1 probabilities overflow", "POST", "/v1/models/mlp:predict", {"json": {"instances": [[3e38] * 30]}}, 400, "non-finite outputs"),
    ("v2 wrong shape", "POST", "/v2/models/resnet/infer", {"json": v2_json(ONE_ROW)}, 400, "expects [N, 1, 8, 8]"),
    ("versioned v2 wrong datatype", "POST", "/v2/models/mlp/versions/1/infer", {"json": {"inputs": [{**v2_json(ONE_ROW)["inputs"][0], "datatype": "INT64"}]}}, 400, "expects FP32"),
    ("v2 binary header too long", "POST", "/v2/models/mlp/infer", {"data": b"{}", "headers": {"Inference-Header-Content-Length": "99"}}, 400, "body has 2 bytes"),
    ("v2 unused binary bytes", "POST", "/v2/models/mlp/infer", binary(v2_json(ONE_ROW), bytes(4)), 400, "4 bytes of binary data"),
    ("v1 unknown model", "POST", "/v1/models/vgg:predict", {"json": {"instances": ONE_ROW.tolist()}}, 404, "unknown model 'vgg'"),
    ("v2 unknown model", "POST", "/v2/models/vgg/infer", {"json": {}}, 404, "unknown model 'vgg'"),
    ("v2 unknown model metadata", "GET", "/v2/models/vgg", {}, 404, "served: mlp, resnet, transformer"),
    ("v2 unknown version", "POST", "/v2/models/mlp/versions/9/infer", {"json": v2_json(ONE_ROW)}, 404, "no version '9'"),
    ("v2 version not a number", "GET", "/v2/models/mlp/versions/x", {}, 400, "'x' is not a version number"),
    ("v2 version with a leading zero", "GET", "/v2/models/mlp/versions/01/ready", {}, 400, "without leading zeros"),
    ("v2 version in Unicode digits", "GET", "/v2/models/mlp/versions/%C2%B2/ready", {}, 400, "'²' is not a version number"),
    ("v2 version of 5,000 digits", "POST", "/v2/models/mlp/versions/" + "9" * 5000 + "/infer", {"json": v2_json(ONE_ROW)}, 400, "is not a version number"),
    ("unsupported encoding", "POST", "/v1/models/mlp:predict", {"data": b"{}", "headers": {"Content-Encoding": "br"}}, 415, "'br'"),
    ("corrupt gzip", "POST", "/v1/models/mlp:predict", {"data": b"not gzip", "headers": {"Content-Encoding": "gzip"}}, 400, "not valid gzip"),
]
# fmt: on


@pytest.mark.parametrize(
    ("case", "method", "path", "kwargs", "status", "says"),
    BAD_REQUESTS,
    ids=[c[0] for c in BAD_REQUESTS],
)
def test_a_bad_request_gets_a_4xx_json_error_and_the_server_keeps_serving(
    service, case, method, path, kwargs, status, says
):
    response = requests.request(method, service.url + path, timeout=30, **kwargs)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert says in response.json()["error"], response.json()
    assert service.get("/v2/health/ready").status_code == 200
    ok = service.post("/v1/models/mlp:predict", json={"instances": rows("mlp", 2).tolist()})
    assert ok.status_code == 200 and len(ok.json()["predictions"]) == 2


def test_gzip_request_bodies_are_accepted(service, exported):
    x = rows("transformer", 3)
    body = gzip.compress(json.dumps({"instances": x.tolist()}).encode())
    r = service.post(
        "/v1/models/transformer:predict", data=body, headers={"Content-Encoding": "gzip"}
    )
    got = np.array([p["probabilities"] for p in r.json()["predictions"]], dtype=np.float32)
    np.testing.assert_allclose(got, direct(exported, "transformer", x), atol=1e-5, rtol=0)


def test_a_body_over_the_limit_gets_413(service):
    big = b"[" + b"0," * (3 * 1024 * 1024) + b"0]"  # 6 MiB, over the 4 MiB default
    response = service.post("/v1/models/mlp:predict", data=big)
    assert response.status_code == 413 and "4194304-byte limit" in response.json()["error"]
    chunked = service.post("/v1/models/mlp:predict", data=iter([big[:2_000_000], big[2_000_000:]]))
    assert chunked.status_code == 413  # no Content-Length: counted as it streams
    assert service.get("/v2/health/ready").status_code == 200
    index = service.post("/v2/repository/index", data=iter([b" " * 65536, b"{}"]))
    assert index.status_code == 413  # streamed: refused at its 64 KiB bound, never buffered
    assert "65536-byte limit (the repository index's)" in index.json()["error"]


def test_a_client_that_leaves_halfway_through_its_body_is_counted_499_without_a_traceback(
    service,
):
    before = service.metric("tensorgate_requests_total", model="mlp", code="499")
    logged = service.log.read_text().count("Traceback")
    with socket.create_connection(("127.0.0.1", int(service.url.rsplit(":", 1)[1]))) as sock:
        sock.sendall(
            b"POST /v1/models/mlp:predict HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n" + b"[" * 1000
        )
        time.sleep(0.2)  # the server reads what came, then the client leaves
    deadline = time.monotonic() + 10
    while service.metric("tensorgate_requests_total", model="mlp", code="499") == before:
        assert time.monotonic() < deadline, "the request left no count"
        time.sleep(0.1)
    assert service.metric("tensorgate_requests_total", model="mlp", code="499") == before + 1
    assert service.log.read_text().count("Traceback") == logged
    assert service.get("/v2/health/ready").status_code == 200


def test_n_requests_add_exactly_n_to_requests_total(service):
    before = {
        code: service.metric("tensorgate_requests_total", model="transformer", code=code)
        for code in ("200", "400")
    }
    x = rows("transformer", 2)
    for i in range(12):
        protocol = ("v1", "v2")[i % 2]
        body = {"instances": x.tolist()} if protocol == "v1" else v2_json(x)
        path = (
            "/v1/models/transformer:predict" if protocol == "v1" else "/v2/models/transformer/infer"
        )
        assert service.post(path, json=body).status_code == 200
    for _ in range(5):
        bad = service.post("/v2/models/transformer/infer", json={"inputs": []})
        assert bad.status_code == 400
    after = {
        code: service.metric("tensorgate_requests_total", model="transformer", code=code)
        for code in ("200", "400")
    }
    assert after["200"] - before["200"] == 12 and after["400"] - before["400"] == 5


def test_metrics_are_all_there(service):
    text = service.get("/metrics").text
    for name in (
        "tensorgate_requests_total",
        "tensorgate_request_duration_seconds_bucket",
        "tensorgate_queue_duration_seconds_bucket",
        "tensorgate_batch_compute_duration_seconds_bucket",
        "tensorgate_batch_size_bucket",
        "tensorgate_instances_total",
        "tensorgate_inflight_requests",
        "tensorgate_model_load_seconds",
        "tensorgate_model_info",
        "tensorgate_rejections_total",
    ):
        assert f"\n{name}{{" in text, name
    for name in NAMES:
        assert (
            service.metric("tensorgate_model_info", model=name, backend="onnxruntime", device="cpu")
            == 1
        )
        assert service.metric("tensorgate_model_load_seconds", model=name) > 0


def test_docs_and_openapi_name_the_request_and_response_models(service):
    assert service.get("/docs").status_code == 200
    spec = service.get("/openapi.json").json()
    v1 = spec["paths"]["/v1/models/mlp:predict"]["post"]
    instances = v1["requestBody"]["content"]["application/json"]["schema"]["properties"][
        "instances"
    ]
    assert (instances["minItems"], instances["maxItems"]) == (1, 1024)  # as strict as the service
    assert (instances["items"]["minItems"], instances["items"]["maxItems"]) == (30, 30)
    assert v1["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/V1Response"
    )
    assert v1["responses"]["400"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/Error"
    )
    v2 = spec["paths"]["/v2/models/resnet/versions/{version}/infer"]["post"]
    assert set(v2["requestBody"]["content"]) == {"application/json", "application/octet-stream"}
    tensor = v2["requestBody"]["content"]["application/json"]["schema"]["properties"]["inputs"]
    assert tensor["maxItems"] == 1
    dims = tensor["items"]["properties"]["shape"]["prefixItems"]
    assert dims[1:] == [{"const": 1}, {"const": 8}, {"const": 8}]  # resnet's [N, 1, 8, 8]
    assert {"V2InferResponse", "V2Tensor", "V2ModelMetadata"} <= set(spec["components"]["schemas"])
    assert "mlp v1" in spec["info"]["description"]
    ready = spec["paths"]["/v2/models/mlp/ready"]["get"]
    assert set(ready["responses"]) == {"200", "404", "503"} and ready["parameters"] == []
    assert ready["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/ModelReady"
    )
    assert {"200", "400", "401", "404", "413", "415", "500", "503", "504"} == set(v2["responses"])
    assert [p["name"] for p in v2["parameters"]] == ["version"]


def test_the_versioned_and_unversioned_infer_routes_answer_alike(service):
    """Both take the fast path (fastpath.py) for the served version; any other version goes
    through FastAPI. Same answers, same errors, same gzip."""
    ok, bad = v2_json(rows("resnet", 40)), {"inputs": []}
    headers = {"Accept-Encoding": "gzip"}
    answers = [
        [service.post(path, json=b, headers=headers) for b in (ok, bad)]
        for path in ("/v2/models/resnet/infer", "/v2/models/resnet/versions/1/infer")
    ]
    for unversioned, versioned in zip(*answers, strict=True):
        assert unversioned.status_code == versioned.status_code
        assert unversioned.headers["content-type"] == versioned.headers["content-type"]
        assert unversioned.json() == versioned.json()
    assert answers[0][0].headers["content-encoding"] == answers[1][0].headers["content-encoding"]
    assert answers[0][1].status_code == 400
    other = service.post("/v2/models/resnet/versions/2/infer", json=ok)  # FastAPI's route
    assert other.status_code == 404 and other.json() == {
        "error": "model 'resnet' has no version '2'; served: 1"
    }


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("GET", "/v2/models/mlp/infer", "POST"),
        ("DELETE", "/v2/models/mlp/versions/1/infer", "POST"),
        ("GET", "/v1/models/mlp:predict", "POST"),
        ("POST", "/v2/models/mlp", "GET"),
        ("PUT", "/v2/models/mlp/ready", "GET"),
    ],
)
def test_a_method_a_route_does_not_take_is_a_405_naming_those_it_does(service, method, path, allow):
    response = requests.request(method, service.url + path, timeout=30)
    assert response.status_code == 405, response.text
    assert response.headers["allow"] == allow and "method not allowed" in response.json()["error"]
    unknown = requests.request(method, service.url + path.replace("mlp", "vgg"), timeout=30)
    assert unknown.status_code == 404 and "unknown model 'vgg'" in unknown.json()["error"]


def test_model_readiness_answers_its_name_in_json(service):
    for path in ("/v2/models/mlp/ready", "/v2/models/mlp/versions/1/ready"):
        assert service.get(path).json() == {"name": "mlp", "ready": True}
    assert service.get("/v1/models/mlp").json() == {"name": "mlp", "ready": True}


def test_the_docs_pages_load_nothing_from_outside_the_service(service):
    for page in ("/docs", "/redoc"):
        html = service.get(page).text
        assert re.findall(r"https?://", html) == [], page  # no CDN, no fonts
        for asset in re.findall(r'(?:src|href)="([^"]+)"', html):
            assert service.get(asset).status_code == 200, asset


@pytest.mark.tools("chromium")
def test_the_docs_render_every_operation_in_a_real_browser(service):
    """Headless Chromium runs Swagger UI from the service's own assets (this machine has no
    route beyond loopback in CI either)."""
    command = [tool("chromium"), "--headless", "--no-sandbox", "--disable-gpu"]
    command += ["--virtual-time-budget=20000", "--dump-dom", service.url + "/docs"]
    dom = subprocess.run(command, capture_output=True, text=True, timeout=120).stdout
    listed = set(re.findall(r'class="opblock-summary-path" data-path="([^"]+)"', dom))
    documented = set(service.get("/openapi.json").json()["paths"])
    assert documented and listed == documented, documented ^ listed
