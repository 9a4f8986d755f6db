"""Services started with other settings: limits, the API key, the TorchScript backend, CUDA,
and start-ups that must be refused."""

import concurrent.futures as cf
import re
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import tritonclient.http as httpclient
from helpers import NAMES, artifact, direct, rows, tensors, uncertain_mlp_rows, v2_json

from export.pipeline import export_model
from load_tests.servers import free_port, running_service
from training import train_and_save
from training.checkpoint import CHECKPOINT_NAME


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
        for path in ("/v2", "/v2/models/mlp", "/v1/models/mlp"):
            assert s.get(path).status_code == 401, path
        for path in ("/v2/health/live", "/v2/health/ready", "/v2/models/mlp/ready", "/metrics"):
            assert s.get(path).status_code == 200, path
        client = httpclient.InferenceServerClient(s.url.removeprefix("http://"))
        input_name, output_name = tensors(exported, "mlp")
        tensor = httpclient.InferInput(input_name, [1, 30], "FP32")
        tensor.set_data_from_numpy(rows("mlp", 1))
        result = client.infer("mlp", [tensor], headers={"Authorization": "Bearer s3cret"})
        np.testing.assert_allclose(
            result.as_numpy(output_name), direct(exported, "mlp", rows("mlp", 1)), atol=1e-5
        )


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


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_cuda_asked_for_without_a_gpu_stops_start_up(exported):
    result = start_refused(exported, "--device", "cuda")
    assert result.returncode == 1 and "the CUDA driver sees no GPU" in result.stderr


def start_refused(repository, *args) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        "-m",
        "service",
        "--repository",
        str(repository),
        "--port",
        str(free_port()),
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_a_tampered_artifact_stops_start_up_naming_the_file(exported, tmp_path):
    repository = tmp_path / "repo"
    shutil.copytree(exported, repository)
    onnx = artifact(repository, "resnet")
    data = bytearray(onnx.read_bytes())
    data[-100] ^= 0xFF
    onnx.write_bytes(bytes(data))
    done = start_refused(repository)
    assert done.returncode == 1
    assert f"refusing to start: {onnx}: sha256" in done.stderr and "does not match" in done.stderr


def test_a_broken_or_missing_manifest_stops_start_up(exported, tmp_path):
    repository = tmp_path / "repo"
    shutil.copytree(exported, repository)
    (repository / "mlp" / "1" / "manifest.json").write_text("{")
    done = start_refused(repository, "--models", "mlp")
    assert done.returncode == 1 and "manifest.json: invalid manifest" in done.stderr
    done = start_refused(repository, "--models", "resnet:4")
    assert done.returncode == 1 and "model 'resnet' version 4 is not in" in done.stderr
    done = start_refused(tmp_path / "nowhere")
    assert done.returncode == 1 and "does not exist" in done.stderr


def test_bad_settings_exit_2_and_help_lists_the_flags():
    done = subprocess.run(
        [sys.executable, "-m", "service", "--help"], capture_output=True, text=True
    )
    assert done.returncode == 0
    for flag in (
        "--port",
        "--repository",
        "--backend",
        "--device",
        "--max-batch-size",
        "--batch-timeout",
        "--request-timeout",
        "--max-body-bytes",
        "--api-key",
    ):
        assert flag in done.stdout
    options = re.split(r"\n  (?=-)", done.stdout.split("options:", 1)[1])
    for option in options[2:]:  # after -h
        assert option.count("(default") == 1, option
    done = subprocess.run(
        [sys.executable, "-m", "service", "--device", "gpu"], capture_output=True, text=True
    )
    assert done.returncode == 2 and "invalid settings" in done.stderr
    done = subprocess.run(
        [sys.executable, "-m", "service", "--host", "10.0.0.1"], capture_output=True, text=True
    )
    assert done.returncode == 2 and "not one LitServe binds" in done.stderr


def test_a_version_policy_serves_versions_side_by_side(exported, tmp_path):
    """mlp version 1 as exported, version 2 trained with another seed: latest:2 serves both,
    each with its own answers; the unversioned and V1 routes take the highest."""
    repository = tmp_path / "repository"
    shutil.copytree(exported / "mlp", repository / "mlp")
    train_and_save("mlp", tmp_path / "runs", device="cpu", seed=1, progress=False)
    export_model(tmp_path / "runs" / "mlp" / CHECKPOINT_NAME, repository, progress=False)
    x = uncertain_mlp_rows()
    expected = {v: direct(repository, "mlp", x, version=v) for v in (1, 2)}
    assert np.abs(expected[1] - expected[2]).max() > 1e-3  # the two versions differ
    with running_service(repository, tmp_path, version_policy="mlp:latest:2") as s:
        for v in (1, 2):
            answer = s.post(f"/v2/models/mlp/versions/{v}/infer", json=v2_json(x)).json()
            assert answer["model_version"] == str(v)
            got = np.array(answer["outputs"][0]["data"], np.float32).reshape(6, 2)
            np.testing.assert_allclose(got, expected[v], atol=1e-5, rtol=0)
            assert s.get(f"/v2/models/mlp/versions/{v}/ready").status_code == 200
            assert s.metric("tensorgate_model_info", model="mlp", version=str(v)) == 1
        latest = s.post("/v2/models/mlp/infer", json=v2_json(x)).json()
        assert latest["model_version"] == "2"
        v1 = s.post("/v1/models/mlp:predict", json={"instances": x.tolist()}).json()
        got = np.array([p["probabilities"] for p in v1["predictions"]], np.float32)
        np.testing.assert_allclose(got, expected[2], atol=1e-5, rtol=0)
        assert s.get("/v2/models/mlp").json()["versions"] == ["1", "2"]
        assert s.get("/v2/models/mlp/versions/3/ready").status_code == 404
        config = s.get("/v2/models/mlp/config").json()
        assert config["version_policy"] == {"latest": {"num_versions": 2}}
        stats = s.get("/v2/models/mlp/stats").json()["model_stats"]
        assert [(e["version"], e["inference_stats"]["success"]["count"]) for e in stats] == [
            ("1", 1),
            ("2", 3),  # its versioned route, the unversioned one and V1
        ]
        export_model(tmp_path / "runs" / "mlp" / CHECKPOINT_NAME, repository, progress=False)
        time.sleep(1.5)  # three supervisor rounds: with model control none nothing changes
        index = s.post("/v2/repository/index").json()
        assert [(e["name"], e["version"], e["state"]) for e in index] == [
            ("mlp", "1", "READY"),
            ("mlp", "2", "READY"),
            ("mlp", "3", "UNAVAILABLE"),  # exported after start: no hot loading yet
        ]
        assert "restart" in index[2]["reason"]
        for v, count in (("1", 1), ("2", 3)):
            assert (
                s.metric("tensorgate_requests_total", model="mlp", version=v, code="200") == count
            )


def test_explicit_model_control_unloads_and_loads_a_model_the_others_untouched(exported, tmp_path):
    settings = {"model_control": "explicit", "api_key": "s3cret"}
    with running_service(exported, tmp_path, **settings) as s:
        key = {"Authorization": "Bearer s3cret"}
        client = httpclient.InferenceServerClient(s.url.removeprefix("http://"))
        assert s.post("/v2/repository/models/resnet/unload").status_code == 401  # the key
        client.unload_model("resnet", headers=key)
        body = v2_json(rows("resnet", 2))
        refused = s.post("/v2/models/resnet/infer", json=body, headers=key)
        assert refused.status_code == 503 and "unloaded" in refused.json()["error"]
        assert s.post("/v1/models/mlp:predict", json={"instances": rows("mlp", 1).tolist()},
                      headers=key).status_code == 200  # fmt: skip
        assert s.get("/v2/health/ready").status_code == 200  # the loaded models are ready
        assert s.get("/v2/models/resnet/ready").status_code == 503
        deadline = time.monotonic() + 15
        while "model 'resnet' version 1: unloaded" not in s.log.read_text():
            assert time.monotonic() < deadline, s.log.read_text()
            time.sleep(0.1)
        index = {e["name"]: e for e in client.get_model_repository_index(headers=key)}
        assert (index["resnet"]["state"], index["resnet"]["reason"]) == ("UNAVAILABLE", "unloaded")
        assert index["mlp"]["state"] == "READY"
        client.load_model("resnet", headers=key)  # returns once it is ready again
        assert client.is_model_ready("resnet", headers=key)
        again = s.post("/v2/models/resnet/infer", json=body, headers=key)
        assert again.status_code == 200, again.text
        unknown = s.post("/v2/repository/models/vgg/load", headers=key)
        assert (
            unknown.status_code == 400
            and "only the models served since start" in unknown.json()["error"]
        )


def test_without_explicit_model_control_load_and_unload_are_refused(service):
    refused = service.post("/v2/repository/models/mlp/unload")
    assert (
        refused.status_code == 400
        and "TENSORGATE_MODEL_CONTROL=explicit" in refused.json()["error"]
    )
    assert service.post("/v1/models/mlp:predict", json={"instances": rows("mlp", 1).tolist()}).ok
