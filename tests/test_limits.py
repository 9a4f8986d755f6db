"""Services started with limits set: the queue bound (503), the request timeout (504) and
the API key, over real HTTP."""

import concurrent.futures as cf

import numpy as np
import tritonclient.http as httpclient
from helpers import direct, rows, tensors

from load_tests.servers import running_service


def test_a_full_queue_answers_503_with_retry_after(exported, tmp_path):
    with running_service(exported, tmp_path, models="resnet", max_queue=1, batch_timeout=0) as s:
        x = rows("resnet", 1024)  # ~tens of ms of compute each, so requests overlap
        with cf.ThreadPoolExecutor(max_workers=16) as pool:
            answers = list(
                pool.map(
                    lambda _: s.post("/v1/models/resnet:predict", json={"instances": x.tolist()}),
                    range(16),
                )
            )
        codes = sorted(r.status_code for r in answers)
        assert set(codes) == {200, 503} and codes.count(200) >= 1, codes
        refused = next(r for r in answers if r.status_code == 503)
        assert refused.headers["Retry-After"] == "1"
        assert "TENSORGATE_MAX_QUEUE" in refused.json()["error"]
        assert s.metric(
            "tensorgate_rejections_total", model="resnet", reason="overloaded"
        ) == codes.count(503)
        assert s.get("/v2/health/ready").status_code == 200


def test_a_request_past_its_timeout_answers_504(exported, tmp_path):
    with running_service(
        exported, tmp_path, models="resnet", request_timeout=0.001, batch_timeout=0
    ) as s:
        r = s.post("/v1/models/resnet:predict", json={"instances": rows("resnet", 1024).tolist()})
        assert r.status_code == 504 and "TENSORGATE_REQUEST_TIMEOUT" in r.json()["error"]
        assert s.get("/v2/health/ready").status_code == 200


def test_the_api_key_guards_inference_and_metadata_but_not_health_or_metrics(exported, tmp_path):
    with running_service(exported, tmp_path, models="mlp", api_key="s3cret") as s:
        body = {"instances": rows("mlp", 1).tolist()}
        missing = s.post("/v1/models/mlp:predict", json=body)
        assert missing.status_code == 401 and "needs an API key" in missing.json()["error"]
        assert missing.headers["WWW-Authenticate"] == "Bearer"
        wrong = s.post("/v1/models/mlp:predict", json=body, headers={"X-API-Key": "guess"})
        assert wrong.status_code == 401 and wrong.json()["error"] == "the API key is wrong"
        for headers in ({"Authorization": "Bearer s3cret"}, {"X-API-Key": "s3cret"}):
            assert s.post("/v1/models/mlp:predict", json=body, headers=headers).status_code == 200
            assert s.get("/v2/models/mlp", headers=headers).status_code == 200
        for path in ("/v2", "/v2/models/mlp", "/v1/models"):
            assert s.get(path).status_code == 401, path
        for path in ("/v2/health/live", "/v2/health/ready", "/v2/models/mlp/ready", "/metrics"):
            assert s.get(path).status_code == 200, path
        assert s.get("/v1/models/mlp").json() == {"name": "mlp", "ready": True}  # readiness
        # nothing names the served models to a caller without the key
        assert s.get("/openapi.json").status_code == 401
        assert s.get("/openapi.json", headers={"X-API-Key": "s3cret"}).json()["paths"]
        assert s.post("/v2/models/vgg/infer", json={}).status_code == 401
        assert s.get("/v2/models/vgg/config").status_code == 401
        unknown = s.get("/v2/models/vgg/ready")
        assert unknown.status_code == 404 and unknown.json() == {"error": "unknown model 'vgg'"}
        named = s.get("/v2/models/vgg", headers={"X-API-Key": "s3cret"}).json()["error"]
        assert named == "unknown model 'vgg'; served: mlp"
        client = httpclient.InferenceServerClient(s.url.removeprefix("http://"))
        input_name, output_name = tensors(exported, "mlp")
        tensor = httpclient.InferInput(input_name, [1, 30], "FP32")
        tensor.set_data_from_numpy(rows("mlp", 1))
        result = client.infer("mlp", [tensor], headers={"Authorization": "Bearer s3cret"})
        np.testing.assert_allclose(
            result.as_numpy(output_name), direct(exported, "mlp", rows("mlp", 1)), atol=1e-5
        )
